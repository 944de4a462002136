"""Private files: a data directory the server creates is 0700, the database and SQLite's
-wal/-shm files 0600, whatever the umask; what exists already is left as the operator made it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services import accounts
from tests.conftest import AppFactory

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common 022, under which files are world-readable unless made otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_data_dir_and_database_are_private(
    make_app: AppFactory, tmp_path: Path, usual_umask: None
) -> None:
    data = tmp_path / "parent" / "data"
    app = await make_app(data_dir=data)
    await accounts.create_user(
        runtime=app.state.runtime, email="a@example.com", password="pw123456"
    )
    db = data / "personaizer.db"
    files = [db, db.with_name("personaizer.db-wal"), db.with_name("personaizer.db-shm")]
    assert all(f.exists() for f in files)  # a write happened: WAL and shared memory exist
    assert mode(data) == 0o700
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    # Nothing else in the directory is readable by others either.
    assert all(mode(f) & 0o077 == 0 for f in data.iterdir())


async def test_an_existing_data_dir_keeps_its_mode(
    make_app: AppFactory, tmp_path: Path, usual_umask: None
) -> None:
    data = tmp_path / "mine"
    data.mkdir(mode=0o750)
    os.chmod(data, 0o750)
    await make_app(data_dir=data)
    assert mode(data) == 0o750
    assert mode(data / "personaizer.db") == 0o600
    # An existing database file is the operator's too.
    os.chmod(data / "personaizer.db", 0o640)
    await make_app(data_dir=data)
    assert mode(data / "personaizer.db") == 0o640
