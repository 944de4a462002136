"""The database: engines, sessions and schema upgrades, on SQLite (embedded) or PostgreSQL.

The services see one interface whatever the engine: `read()` (one consistent snapshot),
`write(user_id=...)` (one transaction, committed when the block ends), `ping()`, `migrate()`.
What differs lives here, in app/storage/sqlite_driver.py and app/storage/postgres_driver.py, and in the index modules
(app/index):

- SQLite: one writer at a time for the whole file (an asyncio lock and `BEGIN IMMEDIATE`).
- PostgreSQL (asyncpg): writers run side by side; a write for a user takes that user's
  transaction-scoped advisory lock first, so one user's writes serialize (quotas and plans read
  inside the transaction stay true until it commits) while other users' writes go on.

A lost or refused connection (PostgreSQL restarting, a locked SQLite file) answers 503
`server.unavailable` with Retry-After, never 500; the pool drops dead connections and the next
request reconnects by itself. A full or read-only disk under SQLite answers the same 503, and
the next write after the operator mends it succeeds (the writer opens a fresh connection each time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import make_url, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.selectable import TextualSelect
from sqlmodel import SQLModel

from app.errors import Unauthorized, Unavailable
from app.files import prepare_sqlite_file
from app.settings import Settings
from app.storage import migrations, plan_rows, postgres_driver, sqlite_driver
from app.storage.index import SearchIndex, for_dialect
from app.storage.migrations import SchemaError

log = logging.getLogger(__name__)

__all__ = ["Database", "DatabaseUnreachable", "Dialect", "SchemaError", "async_url"]

EMBEDDING_DIMS = 384
Dialect = Literal["sqlite", "postgresql"]
#: Seconds a client is asked to wait while the SQLite disk is full or read-only.
UNWRITABLE_RETRY_AFTER_S = 5


class DatabaseUnreachable(SchemaError):
    """The database server cannot be reached (yet): refused, gone, starting up or full. A
    server waits for it (`transient`, for callers that only see this error as a cause); a
    database that answers but cannot be used stays a plain `SchemaError`, fatal at once."""

    transient = True


def async_url(url: str) -> URL:
    """Map the URLs users write to the async drivers: `sqlite:///x.db` to the sqlean driver
    that can load sqlite-vec, `postgresql://...` to asyncpg."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise SchemaError(f"the database URL {url!r} does not parse: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise SchemaError("the database must be a file (sqlite:///path/to/file.db)")
        return parsed.set(drivername="sqlite+aiosqlean")
    if backend in ("postgresql", "postgres"):
        if parsed.get_driver_name() not in ("", "asyncpg", "psycopg2", "psycopg", "postgresql"):
            raise SchemaError(
                f"unsupported PostgreSQL driver {parsed.get_driver_name()!r}: personaizer "
                "connects with asyncpg (postgresql://user:password@host:5432/database)"
            )
        return parsed.set(drivername="postgresql+asyncpg")
    raise SchemaError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: use "
        "sqlite:///path/to/file.db (the default) or postgresql://user:password@host:5432/db"
    )


class Database:
    """One database: a pool of readers and writers, and the engine's write discipline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = async_url(settings.effective_database_url)
        self.dialect: Dialect = (
            "sqlite" if self.url.get_backend_name() == "sqlite" else "postgresql"
        )
        #: Where the data is, for people: the file, or the server and database (no password).
        self.where = self.url.render_as_string(hide_password=True)
        self.path: Path | None = None
        self._write_lock: asyncio.Lock | None = None
        if self.dialect == "sqlite":
            assert self.url.database is not None
            self.path = Path(self.url.database)
            self.where = str(self.path)
            prepare_sqlite_file(self.path)  # 0700 directory, 0600 file, when created
            busy_ms = int(settings.busy_timeout_s * 1000)
            self.reader = create_async_engine(self.url, pool_size=4, max_overflow=4)
            # The writer holds no idle connection between writes so that other processes can
            # checkpoint; writes are rare next to the embedding work around them.
            self.writer = create_async_engine(self.url, poolclass=NullPool)
            sqlite_driver.install_pragmas(self.reader, busy_ms=busy_ms, begin="BEGIN")
            sqlite_driver.install_pragmas(self.writer, busy_ms=busy_ms, begin="BEGIN IMMEDIATE")
            self._write_lock = asyncio.Lock()
        else:
            engine = postgres_driver.create_engine(self.url, settings)
            # Reads see one snapshot across their statements (a search runs several).
            self.reader = engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            self.writer = engine
        self._engines: tuple[AsyncEngine, ...] = (
            (self.reader, self.writer) if self.dialect == "sqlite" else (self.writer,)
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        try:
            async with AsyncSession(self.reader, expire_on_commit=False) as session:
                yield session
        except (DBAPIError, OSError) as exc:
            if (mapped := self._translate(exc, writing=False)) is None:
                raise
            raise mapped from exc

    async def read_row(
        self, statement: TextualSelect, params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The first row of one typed text statement (`text(...).columns(...)`) as a dict, or
        None: a read of one statement, such as the key lookup of every request. On SQLite one
        thread hop (`sqlite_driver.first_row`). On PostgreSQL one round trip: one statement is
        one snapshot anyway, so it runs outside a transaction (autocommit), without the BEGIN
        and ROLLBACK that cost two more round trips (~0.2 ms each on an idle machine, a few
        milliseconds each when the server's processes wait for a busy CPU)."""
        if self.dialect == "sqlite":
            async with self.read() as session:
                return await sqlite_driver.first_row(session, statement, params)
        try:
            async with self.reader.connect() as conn:
                single = await conn.execution_options(isolation_level="AUTOCOMMIT")
                row = (await single.execute(statement, params)).first()
        except (DBAPIError, OSError) as exc:
            if (mapped := self._translate(exc, writing=False)) is None:
                raise
            raise mapped from exc
        return None if row is None else dict(row._mapping)

    @asynccontextmanager
    async def write(self, *, user_id: int | None = None) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if it raises.
        `user_id`: the user whose data it changes, whose other writes wait for it (PostgreSQL;
        on SQLite every write waits for the one before). The user must still exist, and is held
        until the block ends (`Unauthorized` otherwise): see `_hold_user`."""
        try:
            if self._write_lock is not None:
                async with self._write_lock, self._transaction() as session:
                    if user_id is not None:
                        await self._hold_user(session, user_id)
                    yield session
            else:
                async with self._transaction() as session:
                    if user_id is not None:
                        await postgres_driver.lock_user(session, user_id)
                        await self._hold_user(session, user_id)
                    yield session
        except (DBAPIError, OSError) as exc:
            if (mapped := self._translate(exc, writing=True)) is None:
                raise
            raise mapped from exc

    async def serialize_with_user(self, session: AsyncSession, user_id: int) -> None:
        """Make this write transaction wait for the user's other writes, and theirs for it
        (PostgreSQL's per-user lock, as `write(user_id=...)` takes; on SQLite every write
        already waits for the one before): for a write that learns the user only inside it."""
        if self.dialect == "postgresql":
            await postgres_driver.lock_user(session, user_id)

    async def _hold_user(self, session: AsyncSession, user_id: int) -> None:
        """Refuse a write for a user deleted since the request authenticated, and keep the user
        from being deleted until this write commits.

        A request authenticates, then embeds for as long as its batch takes, then writes: the
        operator may delete the user in between. Without this check the write failed on the
        foreign key (a 500), or, where an id was reused, landed in another user's account. The
        user's row is read inside the write transaction: on SQLite that transaction holds the
        only write lock, so no delete can come between the check and the commit; on PostgreSQL
        `FOR KEY SHARE` makes a concurrent `users delete` wait for this write (whose rows it then
        deletes with the rest), or makes this check wait for the delete and see no user."""
        statement = "SELECT 1 FROM users WHERE id = :u"
        if self.dialect == "postgresql":
            statement += " FOR KEY SHARE"
        if (await session.execute(text(statement), {"u": user_id})).first() is None:
            raise Unauthorized()

    def _translate(self, exc: DBAPIError | OSError, *, writing: bool) -> Unavailable | None:
        """The 503 a database error means to a client (the database away, busy or unable to
        take writes), or None: a real error, raised as it is."""
        if writing and self.dialect == "sqlite" and isinstance(exc, OperationalError):
            # A full or read-only disk is the operator's to mend: 503 until then, not 500.
            if sqlite_driver.is_unwritable(exc):
                return self._unwritable(exc)
            if not sqlite_driver.is_locked(exc):
                return None
        if isinstance(exc, OperationalError | InterfaceError | OSError):
            return self._unavailable(exc)
        if exc.connection_invalidated or postgres_driver.is_disconnect(exc):
            return self._unavailable(exc)
        return None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.writer, expire_on_commit=False) as session, session.begin():
            yield session

    def _unavailable(self, exc: BaseException) -> Unavailable:
        log.warning("database unavailable: %s", getattr(exc, "orig", None) or exc)
        busy = self.dialect == "sqlite"
        return Unavailable(
            "The database is busy; retry shortly."
            if busy
            else "The database cannot be reached; retry shortly.",
            headers={"Retry-After": "1" if busy else "2"},
        )

    def _unwritable(self, exc: OperationalError) -> Unavailable:
        log.error(
            "the database cannot be written: %s (free disk space or make it writable)", exc.orig
        )
        return Unavailable(
            "The database cannot be written at the moment; retry later.",
            headers={"Retry-After": str(UNWRITABLE_RETRY_AFTER_S)},
        )

    async def ping(self) -> None:
        async with self.read() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        for engine in self._engines:
            await engine.dispose()

    async def migrate(self, *, create: bool = True) -> migrations.State:
        """Create, upgrade in place, or refuse the database; never recreate it. A SQLite file
        is copied to `<file>.<revision>.bak` before it is upgraded. `create=False`: refuse a
        database that has no schema yet (an operator's command pointed at the wrong place)."""
        try:
            if not create:
                async with self.reader.connect() as conn:
                    found = await conn.run_sync(migrations.state, self.where)
                if found.revision is None:
                    raise SchemaError(
                        f"{self.where} holds no personaizer database yet: run `personaizer init` "
                        "(or `serve`) with the same --data-dir / --database-url to make one"
                    )
            if self.dialect == "sqlite":
                return await self._migrate_sqlite()
            return await self._migrate_postgres()
        except (OperationalError, InterfaceError, OSError) as exc:
            # A PostgreSQL server may be down for a while; a SQLite file that cannot be opened
            # (permissions, a folder in its place) will not mend itself.
            error = DatabaseUnreachable if self.dialect == "postgresql" else SchemaError
            raise error(f"cannot open the database {self.where}: {_reason(exc)}") from exc
        except DBAPIError as exc:
            if self.dialect == "postgresql" and postgres_driver.is_disconnect(exc):
                raise DatabaseUnreachable(
                    f"cannot open the database {self.where}: {_reason(exc)}"
                ) from exc
            raise SchemaError(f"{self.where} cannot be used as a database: {_reason(exc)}") from exc

    async def _migrate_sqlite(self) -> migrations.State:
        assert self.path is not None and self._write_lock is not None
        async with self.reader.connect() as conn:
            found = await conn.run_sync(migrations.state, self.where)
        if found.revision is not None and not found.current:
            name = "v1" if found.legacy else found.revision
            backup = self.path.with_name(f"{self.path.name}.{name}.bak")
            log.warning("backing up %s to %s before upgrading its schema", self.path, backup)
            await asyncio.to_thread(sqlite_driver.vacuum_into, self.path, backup)
        async with self._write_lock, self.writer.connect() as conn:
            # A migration that rebuilds a table (SQLite cannot alter most things in place) drops
            # the old one, and with foreign keys on, dropping `users` would cascade-delete every
            # row that refers to it. SQLite's own procedure for such changes: foreign keys off,
            # outside the transaction, checked by `migrations.upgrade` before it commits.
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute("PRAGMA foreign_keys = OFF")
            try:
                found = await conn.run_sync(migrations.upgrade, self.where)
                await conn.run_sync(self._seed_plans)
                await conn.commit()
            finally:
                await raw.execute("PRAGMA foreign_keys = ON")
        return found

    async def _migrate_postgres(self) -> migrations.State:
        async with self.writer.connect() as conn:
            await postgres_driver.lock_migrations(conn)
            await postgres_driver.check_vector_extension(conn, self.where)
            found = await conn.run_sync(migrations.upgrade, self.where)
            await conn.run_sync(self._seed_plans)
            await conn.commit()
        # Connections opened before the vector type existed lack its codec.
        await self.writer.dispose()
        return found

    def _seed_plans(self, conn: Connection) -> None:
        # In the upgrade's own transaction: several servers starting at once seed it once.
        written = plan_rows.seed_if_empty(conn, self.settings.all_plans)
        if written:
            log.info("plans table was empty: wrote the %d configured plans into it", written)

    async def is_empty(self) -> bool:
        """Whether the database holds no users (nor anything that belongs to one)."""
        async with self.read() as session:
            return not (await session.execute(text("SELECT 1 FROM users LIMIT 1"))).first()


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else orig.__class__.__name__


async def add_counts(
    session: AsyncSession, table: type[SQLModel], keys: dict[str, Any], **add: int
) -> None:
    """Add `add` to a counter row, creating it if missing: one INSERT ... ON CONFLICT DO UPDATE,
    safe when several processes count into the same row at once. The statement is the session's
    engine's own, so a caller never names the engine."""
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    columns = table.__table__.c  # type: ignore[attr-defined]
    zeros = {c.name: 0 for c in columns if c.name not in keys and c.name not in add}
    statement = insert(table).values(**keys, **zeros, **add)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: columns[name] + statement.excluded[name] for name in add},
        )
    )


async def add_count_returning(
    session: AsyncSession, table: type[SQLModel], keys: dict[str, Any], column: str, add: int
) -> int:
    """`add_counts` for one counter, answering its new value (`RETURNING`): a sequence kept
    in a row, handed out inside the caller's transaction."""
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    columns = table.__table__.c  # type: ignore[attr-defined]
    zeros = {c.name: 0 for c in columns if c.name not in keys and c.name != column}
    statement = insert(table).values(**keys, **zeros, **{column: add})
    upsert = statement.on_conflict_do_update(
        index_elements=list(keys), set_={column: columns[column] + statement.excluded[column]}
    ).returning(columns[column])
    return int((await session.execute(upsert)).scalar_one())


def search_index(
    db: Database,
    *,
    vector_cache_bytes: int = 0,
    partition_bytes: int = 0,
    partition_min_chunks: int = 50_000,
) -> SearchIndex:
    """The search index of `db`'s engine (`app.storage.index.for_dialect`), so the services
    that keep one never name the engine."""
    return for_dialect(
        db.dialect,
        vector_cache_bytes=vector_cache_bytes,
        partition_bytes=partition_bytes,
        partition_min_chunks=partition_min_chunks,
    )
