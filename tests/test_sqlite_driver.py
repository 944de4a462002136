"""The embedded engine's driver adapter (app/sqlite.py): one aiosqlite thread hop per statement,
with results, rowcount, lastrowid and error mapping as SQLAlchemy's own adapter gives them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlean
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.models import User, utcnow
from app.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]


class Hops:
    """Every call aiosqlite runs on its worker thread, by function name, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Hops:
    counter = Hops()
    original: Any = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counter.names.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return counter


@pytest.fixture
async def database(engine: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(Settings.for_tests(tmp_path))
    await database.migrate()
    async with database.write() as session:
        await session.execute(
            text("CREATE TABLE scratch (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
        )
    try:
        yield database
    finally:
        await database.dispose()


async def test_a_read_is_one_hop_per_statement(database: Database, hops: Hops) -> None:
    async with database.write() as session:
        await session.execute(text("INSERT INTO scratch (name) VALUES ('a'), ('b'), ('c')"))
    hops.take()
    async with database.read() as session:
        await session.execute(text("SELECT 1"))  # BEGIN and this statement
        assert len(hops.take()) == 2
        result = await session.execute(text("SELECT id, name FROM scratch ORDER BY id"))
        assert len(hops.take()) == 1
        assert list(result.keys()) == ["id", "name"]
        assert [tuple(row) for row in result] == [(1, "a"), (2, "b"), (3, "c")]
        # A statement with no rows, and fetching in pieces from the buffered rows.
        assert (await session.execute(text("SELECT name FROM scratch WHERE id > 9"))).all() == []
        result = await session.execute(text("SELECT name FROM scratch ORDER BY id"))
        assert result.fetchmany(2) == [("a",), ("b",)]
        assert result.fetchone() == ("c",)
        assert result.fetchone() is None
        assert len(hops.take()) == 2
    # Ending the session rolls back: no cursor is left to close.
    assert "_run_statement" not in hops.take()


async def test_writes_keep_lastrowid_and_rowcount_in_one_hop(
    database: Database, hops: Hops
) -> None:
    async with database.write() as session:
        await session.execute(text("SELECT 1"))  # connect, pragmas, BEGIN IMMEDIATE
        hops.take()
        inserted = await session.execute(text("INSERT INTO scratch (name) VALUES ('x')"))
        assert inserted.lastrowid == 1  # type: ignore[attr-defined]
        inserted = await session.execute(text("INSERT INTO scratch (name) VALUES ('y')"))
        assert inserted.lastrowid == 2  # type: ignore[attr-defined]
        updated = await session.execute(text("UPDATE scratch SET name = name || '!'"))
        assert updated.rowcount == 2  # type: ignore[attr-defined]
        none = await session.execute(text("UPDATE scratch SET name = 'z' WHERE id = 42"))
        assert none.rowcount == 0  # type: ignore[attr-defined]
        # Many parameter sets: one executemany, one hop.
        many = await session.execute(
            text("INSERT INTO scratch (name) VALUES (:name)"), [{"name": "p"}, {"name": "q"}]
        )
        assert many.rowcount == 2  # type: ignore[attr-defined]
        # RETURNING: rows and the count of rows it changed, both from the one hop.
        returned = await session.execute(
            text("UPDATE scratch SET name = upper(name) WHERE id <= 2 RETURNING id, name")
        )
        assert sorted(returned.all()) == [(1, "X!"), (2, "Y!")]
        assert hops.take() == ["_run_statement"] * 6
        # The ORM's insert (RETURNING) gets its primary key.
        user = User(email="one@x.example", plan_id="free", created_at=utcnow())
        session.add(user)
        await session.flush()
        assert user.id is not None
        assert hops.take() == ["_run_statement"]
    assert hops.take()[0] == "commit"
    async with database.read() as session:
        names = (await session.execute(text("SELECT name FROM scratch ORDER BY id"))).all()
    assert names == [("X!",), ("Y!",), ("p",), ("q",)]


async def test_constraint_violations_are_sqlalchemy_integrity_errors(
    database: Database, hops: Hops
) -> None:
    async with database.write() as session:
        await session.execute(text("INSERT INTO scratch (name) VALUES ('taken')"))
    with pytest.raises(IntegrityError) as info:
        async with database.write() as session:
            await session.execute(text("INSERT INTO scratch (name) VALUES ('kept')"))
            await session.execute(text("INSERT INTO scratch (name) VALUES ('taken')"))
    assert isinstance(info.value.orig, sqlean.IntegrityError)
    assert "UNIQUE constraint failed: scratch.name" in str(info.value.orig)
    with pytest.raises(IntegrityError):
        async with database.write() as session:
            await session.execute(
                text("INSERT INTO scratch (name) VALUES (:name)"),
                [{"name": "fresh"}, {"name": "taken"}],
            )
    # The failed transactions were rolled back, and the connection works on.
    async with database.read() as session:
        names = (await session.execute(text("SELECT name FROM scratch"))).scalars().all()
    assert names == ["taken"]
