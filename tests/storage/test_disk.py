"""A full or read-only disk under SQLite: writes answer 503 `server.unavailable` with Retry-After
(never 500) and change nothing; reads go on where SQLite can; once the disk is writable again the
server writes by itself, without a restart.

The faults are real: the data dir is a small tmpfs of its own (mounting needs root; the test is
skipped without it), filled up with a file, or remounted read-only."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlean

from tests.conftest import AppFactory, assert_problem, client_for, new_key

# Each test names its disk before `make_app`: the app shuts down (flushing usage) before the
# disk is unmounted.

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]

DOC = "/api/knowledge/docs/by-external-id/"


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def _mount(*args: str) -> None:
    _run("mount", *args)


@pytest.fixture
def small_disk(tmp_path: Path, engine: str) -> Iterator[Path]:
    """A 16 MB tmpfs as the data dir, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    try:
        _mount("-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(where))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the disk to the last byte with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with filler.open("wb") as f:
        while True:
            try:
                f.write(block)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    # Byte by byte for what a block did not fit: nothing is left for the WAL to grow into.
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _truncate_wal(database: Path) -> None:
    """Checkpoint and truncate the WAL (a shrink, which needs no space), so the next write has
    to grow it instead of reusing pages it already holds."""
    conn = sqlean.connect(str(database))
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


async def _assert_unwritable(api: httpx.AsyncClient) -> None:
    for r in (
        await api.put(DOC + "new", json={"content": "Written while the disk is full."}),
        await api.put(
            "/api/knowledge/docs", json={"items": [{"external_id": "b", "content": "x"}]}
        ),
        await api.post("/api/personas", json={"name": "Nobody"}),
    ):
        body = assert_problem(r, 503, "server.unavailable")
        assert int(r.headers["Retry-After"]) >= 1, body


async def test_a_full_disk_answers_503_and_recovers(small_disk: Path, make_app: AppFactory) -> None:
    app = await make_app(data_dir=small_disk)
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.put(DOC + "kept", json={"content": "Stored before the disk filled up."})
        assert r.status_code == 201, r.text

        _truncate_wal(small_disk / "personaizer.db")
        filler = _fill(small_disk)
        await _assert_unwritable(api)
        # Reads need no space.
        r = await api.get(DOC + "kept")
        assert r.status_code == 200 and r.json()["content"] == "Stored before the disk filled up."

        filler.unlink()
        r = await api.put(DOC + "new", json={"content": "Written once there is space again."})
        assert r.status_code == 201, r.text
        listed = (await api.get("/api/knowledge/docs")).json()
        assert sorted(d["external_id"] for d in listed["items"]) == ["kept", "new"]
        assert (await api.get("/api/personas")).json()["items"] == []


async def test_a_read_only_disk_answers_503_and_recovers(
    small_disk: Path, make_app: AppFactory
) -> None:
    app = await make_app(data_dir=small_disk)
    key = await new_key(app, plan="unlimited")
    db = app.state.runtime.db
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.put(DOC + "kept", json={"content": "Stored before the remount."})
        assert r.status_code == 201, r.text

        # A mount goes read-only only once nothing holds a file open for writing: the idle
        # readers are closed (the writer holds none between writes).
        await db.reader.dispose()
        _mount("-o", "remount,ro", str(small_disk))
        try:
            await _assert_unwritable(api)
        finally:
            _mount("-o", "remount,rw", str(small_disk))

        r = await api.put(DOC + "new", json={"content": "Written once the disk is writable."})
        assert r.status_code == 201, r.text
        listed = (await api.get("/api/knowledge/docs")).json()
        assert sorted(d["external_id"] for d in listed["items"]) == ["kept", "new"]


@pytest.fixture
def ext4_disk(tmp_path: Path, engine: str) -> Iterator[Path]:
    """A loop-mounted 32 MB ext4 as the data dir (ext4 has the immutable flag; tmpfs has not)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    image, where = tmp_path / "ext4.img", tmp_path / "ext4"
    where.mkdir()
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        _mount("-o", "loop", str(image), str(where))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a loop filesystem here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["chattr", "-R", "-i", str(where)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_read_only_database_file_answers_503_and_recovers(
    ext4_disk: Path, make_app: AppFactory
) -> None:
    """The file alone read-only (root ignores file modes, so the immutable flag stands in for a
    `chmod 400` under another user): SQLite opens it read-only and every write fails with
    SQLITE_READONLY, while reads go on."""
    app = await make_app(data_dir=ext4_disk)
    key = await new_key(app, plan="unlimited")
    database = ext4_disk / "personaizer.db"
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.put(DOC + "kept", json={"content": "Stored before the file froze."})
        assert r.status_code == 201, r.text

        files = [str(database), f"{database}-wal", f"{database}-shm"]
        _run("chattr", "+i", *files)
        try:
            await _assert_unwritable(api)
            r = await api.get(DOC + "kept")
            assert r.status_code == 200 and r.json()["content"] == "Stored before the file froze."
        finally:
            _run("chattr", "-i", *files)

        r = await api.put(DOC + "new", json={"content": "Written once the file thawed."})
        assert r.status_code == 201, r.text
        listed = (await api.get("/api/knowledge/docs")).json()
        assert sorted(d["external_id"] for d in listed["items"]) == ["kept", "new"]
