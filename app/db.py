"""The database: engines, sessions, SQLite pragmas, sqlite-vec loading, schema versions.

SQLite runs through `sqlean` (a drop-in `sqlite3` that can load extensions; the stock module on
many Pythons cannot) under aiosqlite. SQLAlchemy's aiosqlite dialect wraps only the stdlib
`sqlite3` exception classes, so `SqleanAiosqliteDialect` hands it sqlean's DB-API module:
integrity and locking errors then surface as SQLAlchemy's own exceptions.

Writes go through one writer connection guarded by an asyncio lock and opened with
`BEGIN IMMEDIATE`, so a write transaction never has to upgrade a read lock (which SQLite answers
with SQLITE_BUSY at once, whatever the busy timeout); other processes (the CLI beside a server)
wait up to the busy timeout for that lock.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import sqlean
import sqlite_vec
from sqlalchemy import event, make_url, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from app import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from app.errors import Unavailable
from app.files import prepare_sqlite_file
from app.settings import Settings

log = logging.getLogger(__name__)

#: Bump with a new entry in `_MIGRATIONS`; the server upgrades older files in place.
SCHEMA_VERSION = 1  # == max(_MIGRATIONS); tests check it
EMBEDDING_DIMS = 384


class SchemaError(RuntimeError):
    """The database file cannot be used by this version of the server."""


# --- the sqlean-backed aiosqlite dialect -------------------------------------------------


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


def async_url(url: str) -> str:
    """Map the URLs users write (`sqlite:///x.db`) to the driver that can load sqlite-vec."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise SchemaError(
            f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: this "
            "version stores data in SQLite (sqlite:///path/to/file.db)"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise SchemaError("the database must be a file (sqlite:///path/to/file.db)")
    return parsed.set(drivername="sqlite+aiosqlean").render_as_string(hide_password=False)


# --- engines and sessions ----------------------------------------------------------------


class Database:
    """One SQLite file: a pool of readers and a single serialized writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = async_url(settings.effective_database_url)
        path = make_url(url).database
        assert path is not None
        self.path = Path(path)
        prepare_sqlite_file(self.path)  # 0700 directory, 0600 file, when created
        busy_ms = int(settings.busy_timeout_s * 1000)
        self.reader = create_async_engine(url, pool_size=4, max_overflow=4)
        # The writer holds no idle connection between writes so that other processes can
        # checkpoint; writes are rare next to the embedding work around them.
        self.writer = create_async_engine(url, poolclass=NullPool)
        for engine, begin in ((self.reader, "BEGIN"), (self.writer, "BEGIN IMMEDIATE")):
            _install_pragmas(engine, busy_ms=busy_ms, begin=begin)
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.reader, expire_on_commit=False) as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        async with self._write_lock, AsyncSession(self.writer, expire_on_commit=False) as session:
            try:
                async with session.begin():
                    yield session
            except OperationalError as exc:
                if _is_locked(exc):
                    raise Unavailable(
                        "The database is busy; retry shortly.", headers={"Retry-After": "1"}
                    ) from exc
                raise

    async def ping(self) -> None:
        async with self.read() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.reader.dispose()
        await self.writer.dispose()

    async def migrate(self) -> None:
        """Create, upgrade in place, or refuse the database file; never recreate it."""
        try:
            async with self.read() as session:
                version = (await session.execute(text("PRAGMA user_version"))).scalar_one()
        except DBAPIError as exc:
            raise SchemaError(f"{self.path} cannot be opened as a database: {exc.orig}") from exc
        if 0 < version < SCHEMA_VERSION:
            backup = self.path.with_name(f"{self.path.name}.v{version}.bak")
            log.warning("backing up %s to %s before upgrading its schema", self.path, backup)
            await asyncio.to_thread(_vacuum_into, self.path, backup)
        async with self._write_lock, self.writer.connect() as conn:
            await conn.run_sync(_migrate_sync, self.path)
            await conn.commit()


def _is_locked(exc: OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


def _install_pragmas(engine: AsyncEngine, *, busy_ms: int, begin: str) -> None:
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


# --- schema versions ---------------------------------------------------------------------

# The vector index holds sign bits (see app/vectors.py; the float vectors are `chunks.embedding`).
# vec0 reserves `chunk_size` vectors per partition up front: 1024 bit vectors are 48 KB per user,
# and the search reads a partition block by block, fewer larger blocks being faster to read.
# The keyword index's `owner` column holds `u<user id>` so that a MATCH ANDed with it touches
# only that user's rows (app/fts.py); bm25 gives the column weight 0.
_VIRTUAL_TABLES = (
    f"""CREATE VIRTUAL TABLE chunk_vectors USING vec0(
        chunk_id integer primary key,
        user_id integer partition key,
        embedding bit[{EMBEDDING_DIMS}],
        chunk_size=1024
    )""",
    "CREATE VIRTUAL TABLE chunk_fts USING fts5(owner, title, text, tokenize='porter unicode61')",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def _create_v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)
    for ddl in _VIRTUAL_TABLES:
        conn.exec_driver_sql(ddl)


#: version -> the step that brings a file from version-1 to version. Version 1 creates.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _create_v1}


def _vacuum_into(path: Path, backup: Path) -> None:
    backup.unlink(missing_ok=True)
    conn = sqlean.connect(str(path))
    try:
        conn.execute("VACUUM INTO ?", (str(backup),))
    finally:
        conn.close()


def _check_layout(conn: Connection, path: Path, version: int) -> None:
    """Refuse a file whose tables lack columns this build expects at the same version (a
    pre-release build's file, or one edited by hand), rather than fail on its first query."""
    for table in SQLModel.metadata.sorted_tables:
        have = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table.name})")}
        missing = sorted(c.name for c in table.columns if c.name not in have)
        if missing:
            raise SchemaError(
                f"{path} says schema version {version} but its table {table.name} lacks "
                f"{', '.join(missing)}: it was made by a different build; the file was not "
                "changed (export your data with the API of that build and start a new file)"
            )


def _migrate_sync(conn: Connection, path: Path) -> None:
    # Runs inside one BEGIN IMMEDIATE transaction: the steps and the version bump commit
    # together, so a failed upgrade leaves the old file as it was.
    version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    target = SCHEMA_VERSION
    if version > target:
        raise SchemaError(
            f"{path} has schema version {version}, newer than this server's {target}; "
            "upgrade personaizer (the file was not changed)"
        )
    if version == target:
        _check_layout(conn, path, version)
        return
    if version == 0:
        tables = conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar_one()
        if tables:
            raise SchemaError(
                f"{path} is a SQLite file but not a personaizer database (no schema version); "
                "refusing to touch it"
            )
    for step in range(version + 1, target + 1):
        _MIGRATIONS[step](conn)
    conn.exec_driver_sql(f"PRAGMA user_version = {target}")
    if version:
        log.warning("upgraded %s from schema %d to %d", path, version, target)
