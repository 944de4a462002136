"""The embedded engine: SQLite through sqlean, with sqlite-vec loaded into every connection.

`sqlean` is a drop-in `sqlite3` that can load extensions (the stock module on many Pythons
cannot), run under aiosqlite. SQLAlchemy's aiosqlite dialect wraps only the stdlib `sqlite3`
exception classes, so `SqleanAiosqliteDialect` hands it sqlean's DB-API module: integrity and
locking errors then surface as SQLAlchemy's own exceptions.

Writes go through one writer connection guarded by an asyncio lock and opened with
`BEGIN IMMEDIATE`, so a write transaction never has to upgrade a read lock (which SQLite answers
with SQLITE_BUSY at once, whatever the busy timeout); other processes (the CLI beside a server,
or other workers) wait up to the busy timeout for that lock.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import sqlean
import sqlite_vec
from sqlalchemy import event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

T = TypeVar("T")


def _connect_sqlean(database: str, **kwargs: Any) -> sqlean.Connection:
    # Runs on aiosqlite's worker thread: the connection is made and used on that thread only.
    conn = sqlean.connect(database, isolation_level=None, check_same_thread=False, **kwargs)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


def _aiosqlean_connect(database: str, **kwargs: Any) -> aiosqlite.Connection:
    kwargs.pop("check_same_thread", None)
    kwargs.pop("isolation_level", None)
    return aiosqlite.Connection(partial(_connect_sqlean, database, **kwargs), 64)


_AIOSQLEAN = types.SimpleNamespace(
    connect=_aiosqlean_connect,
    Connection=aiosqlite.Connection,
    __version__=getattr(aiosqlite, "__version__", "0"),
    DatabaseError=sqlean.DatabaseError,
    Error=sqlean.Error,
    IntegrityError=sqlean.IntegrityError,
    NotSupportedError=sqlean.NotSupportedError,
    OperationalError=sqlean.OperationalError,
    ProgrammingError=sqlean.ProgrammingError,
    InterfaceError=sqlean.InterfaceError,
    sqlite_version=sqlean.sqlite_version,
    sqlite_version_info=sqlean.sqlite_version_info,
)


class SqleanAiosqliteDialect(SQLiteDialect_aiosqlite):
    driver = "aiosqlean"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> AsyncAdapt_aiosqlite_dbapi:
        return AsyncAdapt_aiosqlite_dbapi(_AIOSQLEAN, sqlean)  # type: ignore[arg-type]


registry.register("sqlite.aiosqlean", __name__, "SqleanAiosqliteDialect")


def install_pragmas(engine: AsyncEngine, *, busy_ms: int, begin: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA journal_mode = WAL")
        # FULL: a write is durable when the response is sent, power loss included.
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        # Memory-mapped reads (address space, not memory): a search reads a user's bit-vector
        # blocks and a few hundred scattered chunk rows, ~30% faster without a copy per page.
        cur.execute("PRAGMA mmap_size = 1073741824")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


def is_locked(exc: OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


def is_unwritable(exc: OperationalError) -> bool:
    """SQLITE_FULL or SQLITE_READONLY: the disk is full, or the file or its folder cannot be
    written (a read-only mount, permissions). Both pass once the operator frees space or makes
    the disk writable again, and the transaction was rolled back, so they are retried, not bugs."""
    message = str(exc.orig)
    return "disk is full" in message or "readonly database" in message


def vacuum_into(path: Path, backup: Path) -> None:
    """A consistent copy of the file (readers and writers may go on meanwhile)."""
    backup.unlink(missing_ok=True)
    conn = sqlean.connect(str(path))
    try:
        conn.execute("VACUUM INTO ?", (str(backup),))
    finally:
        conn.close()


async def run_on_connection(session: AsyncSession, fn: Callable[[sqlean.Connection], T]) -> T:
    """Run `fn` with the session's own sqlite3 connection, on the thread that owns it, inside the
    session's transaction (begun first, so `fn` reads the same snapshot as the session's other
    statements): a whole read, its numpy work included, in one thread hop, where the async
    driver takes one hop or more per statement. A DB-API error leaves as SQLAlchemy's (an
    `OperationalError` for a locked or vanished file), as any statement's would.

    aiosqlite runs functions on its thread through `Connection._execute` (private; pinned in
    pyproject.toml)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: aiosqlite.Connection = raw.driver_connection  # type: ignore[assignment]
    try:
        return await driver._execute(fn, driver._conn)  # type: ignore[no-untyped-call,no-any-return]
    except sqlean.Error as exc:
        raise DBAPIError.instance(None, None, exc, sqlean.Error) from exc
