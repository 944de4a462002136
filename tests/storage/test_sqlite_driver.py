"""The embedded engine's driver adapter (app/storage/sqlite_driver.py): one aiosqlite thread hop per statement,
with results, rowcount, lastrowid and error mapping as SQLAlchemy's own adapter gives them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlean
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from app.errors import Unavailable
from app.models import User, utcnow
from app.settings import Settings
from app.storage.database import Database
from app.storage.sqlite_driver import run_on_connection

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
        await session.execute(text("SELECT 1"))  # BEGIN sent in this statement's hop
        assert hops.take() == ["_run_statement"]
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
    # Ending the session rolls back once (the pool's reset finds no transaction left to end),
    # and no cursor is left to close.
    assert hops.take() == ["rollback"]
    # A session that ran nothing costs no hop: its BEGIN was never sent.
    async with database.read():
        pass
    async with database.write():
        pass
    assert hops.take() == []


async def test_a_last_read_ends_its_transaction_in_its_own_hop(
    database: Database, hops: Hops
) -> None:
    """`run_on_connection(..., last_read=True)` (a search's plan): BEGIN, the function and the
    ROLLBACK in one hop, and the session's end costs none; the connection goes back to the pool
    with no transaction open, so the next session sees later writes."""

    def count(conn: sqlean.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM scratch").fetchone()[0])

    hops.take()
    async with database.read() as session:
        assert await run_on_connection(session, count, last_read=True) == 0
        assert hops.take() == ["run"]
    assert hops.take() == []
    async with database.write() as writing:
        await writing.execute(text("INSERT INTO scratch (name) VALUES ('x')"))
    async with database.read() as session:
        assert await run_on_connection(session, count, last_read=True) == 1
    # Without it, the session's own rollback is a hop of its own.
    hops.take()
    async with database.read() as session:
        assert await run_on_connection(session, count) == 1
    assert hops.take() == ["run", "rollback"]


async def test_a_held_back_begin_still_holds_one_snapshot(database: Database, hops: Hops) -> None:
    """The BEGIN sent with the first statement opens a real transaction, whichever way the
    session's first read goes (a statement, `run_on_connection`, a stream): a write committed
    after it is not seen by the session's later reads."""

    def count(conn: sqlean.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM scratch").fetchone()[0])

    async def add(name: str) -> None:
        async with database.write() as writing:
            await writing.execute(text("INSERT INTO scratch (name) VALUES (:n)"), {"n": name})

    statement = text("SELECT count(*) FROM scratch")
    firsts = {
        "statement": lambda s: s.scalar(statement),
        "function": lambda s: run_on_connection(s, count),
        "stream": lambda s: _streamed_count(s),
    }
    for n, (how, first) in enumerate(firsts.items()):
        async with database.read() as session:
            before = await first(session)
            assert before == n, how
            await add(f"{how}-after")
            assert await session.scalar(statement) == before, how
            assert await run_on_connection(session, count) == before, how
        async with database.read() as session:
            assert await session.scalar(statement) == before + 1, how


async def _streamed_count(session: Any) -> int:
    result = await session.stream(text("SELECT count(*) FROM scratch"))
    (row,) = [row async for row in result]
    return int(row[0])


async def test_a_write_takes_its_lock_with_its_first_statement(
    database: Database, tmp_path: Path
) -> None:
    """BEGIN IMMEDIATE goes out with the write's first statement: another process's writer
    holding the lock makes that statement wait, then fail with the busy 503, as before."""
    other = sqlean.connect(str(tmp_path / "personaizer.db"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        impatient = Database(Settings.for_tests(tmp_path, busy_timeout_s=0.2))
        try:
            with pytest.raises(Unavailable):
                async with impatient.write() as session:
                    await session.execute(text("INSERT INTO scratch (name) VALUES ('w')"))
        finally:
            await impatient.dispose()
        other.execute("ROLLBACK")
    finally:
        other.close()
    async with database.write() as session:
        await session.execute(text("INSERT INTO scratch (name) VALUES ('w')"))
    async with database.read() as session:
        assert await session.scalar(text("SELECT count(*) FROM scratch")) == 1


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


# --- run_on_connection: a whole function in one hop ----------------------------------------


async def test_a_function_that_raises_leaves_the_connection_working(database: Database) -> None:
    async with database.write() as session:
        await session.execute(text("INSERT INTO scratch (name) VALUES ('a'), ('b'), ('c')"))

    def half_read_then_fail(conn: sqlean.Connection) -> None:
        cursor = conn.execute("SELECT name FROM scratch ORDER BY id")
        assert cursor.fetchone() == ("a",)  # a statement left part way through
        raise RuntimeError("a bug in the function")

    for _ in range(2):  # the pool's connections, one after the other
        async with database.read() as session:
            await session.execute(text("SELECT 1"))
            with pytest.raises(RuntimeError, match="a bug in the function"):
                await run_on_connection(session, half_read_then_fail)
            # The same connection, in the same transaction, goes on.
            names = await run_on_connection(
                session, lambda conn: conn.execute("SELECT name FROM scratch").fetchall()
            )
            assert sorted(names) == [("a",), ("b",), ("c",)]
            assert (await session.execute(text("SELECT count(*) FROM scratch"))).scalar_one() == 3
    # No statement was left holding a snapshot: a write commits, and a checkpoint from outside
    # can truncate the whole WAL (it cannot while any reader still holds a snapshot).
    async with database.write() as session:
        await session.execute(text("INSERT INTO scratch (name) VALUES ('d')"))
    assert database.path is not None
    outside = sqlean.connect(str(database.path), timeout=0.2)
    try:
        assert outside.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        outside.close()


async def test_a_function_meeting_a_locked_database_is_a_503(engine: str, tmp_path: Path) -> None:
    """SQLITE_BUSY inside the function (it writes while another connection holds the write
    lock past the busy timeout) leaves as SQLAlchemy's OperationalError, which a read answers
    with 503 `server.unavailable`, as a statement meeting the lock would."""
    database = Database(Settings.for_tests(tmp_path, busy_timeout_s=0.2))
    await database.migrate()
    try:
        async with database.write() as session:
            await session.execute(text("CREATE TABLE scratch (id INTEGER PRIMARY KEY)"))
        assert database.path is not None
        holder = sqlean.connect(str(database.path), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:

            def write(conn: sqlean.Connection) -> None:
                conn.execute("INSERT INTO scratch DEFAULT VALUES")

            with pytest.raises(Unavailable) as info:
                async with database.read() as session:
                    await session.execute(text("SELECT 1"))
                    await run_on_connection(session, write)
            assert (info.value.code, info.value.headers) == (
                "server.unavailable",
                {"Retry-After": "1"},
            )
            cause = info.value.__cause__
            assert isinstance(cause, OperationalError)
            assert isinstance(cause.orig, sqlean.OperationalError)
            assert "locked" in str(cause.orig)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        async with database.read() as session:
            assert await run_on_connection(session, lambda c: c.execute("SELECT 1").fetchone())
    finally:
        await database.dispose()


async def test_a_function_on_a_closed_connection_is_a_503_and_the_pool_heals(
    database: Database,
) -> None:
    """A connection whose aiosqlite thread has gone: a statement on it answers 503 (SQLAlchemy
    maps aiosqlite's ValueError and drops the connection from the pool); a function run on it
    must too, not a 500, and the next read gets a working connection."""
    for run in (
        lambda session: session.execute(text("SELECT 1")),
        lambda session: run_on_connection(session, lambda c: c.execute("SELECT 1").fetchone()),
    ):
        with pytest.raises(Unavailable) as info:
            async with database.read() as session:
                raw = await (await session.connection()).get_raw_connection()
                await raw.driver_connection.close()
                await run(session)
        assert isinstance(info.value.__cause__, OperationalError)
        for _ in range(8):  # every connection the pool holds works
            async with database.read() as session:
                found = await run_on_connection(session, lambda c: c.execute("SELECT 2").fetchone())
                assert found == (2,)
