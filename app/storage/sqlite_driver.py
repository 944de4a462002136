"""The embedded engine: SQLite through sqlean, with sqlite-vec loaded into every connection.

`sqlean` is a drop-in `sqlite3` that can load extensions (the stock module on many Pythons
cannot), run under aiosqlite. SQLAlchemy's aiosqlite dialect wraps only the stdlib `sqlite3`
exception classes, so `SqleanAiosqliteDialect` hands it sqlean's DB-API module: integrity and
locking errors then surface as SQLAlchemy's own exceptions.

Writes go through one writer connection guarded by an asyncio lock and opened with
`BEGIN IMMEDIATE`, so a write transaction never has to upgrade a read lock (which SQLite answers
with SQLITE_BUSY at once, whatever the busy timeout); other processes (the CLI beside a server,
or other workers) wait up to the busy timeout for that lock.

One thread hop per statement (`OneHopCursor`): aiosqlite runs the sqlite3 connection on its own
thread, and every call to it is a hop (a queue put, a thread wake-up, a `call_soon_threadsafe`
back). SQLAlchemy's generic adapter makes four per statement (create the cursor, execute, fetch
all, close), and a search runs ~9 statements, authentication 3. `OneHopCursor` runs one function
on aiosqlite's thread that creates the sqlite3 cursor, executes, fetches the rows and closes it:
one hop per statement. Measured (p50, 2-core development machine, a read session of BEGIN, two
`SELECT 1` and ROLLBACK): one statement 0.47 -> 0.19 ms and the session 1.6 -> 0.85 ms with the
machine otherwise idle; 0.22 -> 0.12 ms and 0.79 -> 0.52 ms while other work kept its cores
awake (thread wake-ups are quicker then). SQLAlchemy's exception mapping and the connection's
execute mutex are kept; server-side cursors (streamed exports) stay SQLAlchemy's. It uses
aiosqlite's private `Connection._execute(fn, *args)` and `Connection._conn`, the same in 0.21
and 0.22, hence the pinned range in pyproject.toml.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiosqlite
import sqlean
import sqlite_vec
from sqlalchemy import event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.util import EMPTY_DICT

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import _DBAPICursorDescription

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


#: The statements the engines' `begin` event sends (app/storage/database.py), which `OneHopCursor` holds back.
BEGINS = frozenset({"BEGIN", "BEGIN IMMEDIATE"})

#: What one statement leaves behind: description, rows, rowcount, lastrowid.
_Outcome = tuple[Any, list[Any], int, int | None]


def _run_statement(
    connection: aiosqlite.Connection,
    operation: Any,
    parameters: Any,
    *,
    many: bool,
    begin: str | None = None,
) -> _Outcome:
    """One statement from start to end, on aiosqlite's worker thread: the sqlite3 cursor is
    made, executed, drained and closed there, so the event loop waits for one hop only. A
    `begin` held back by `OneHopCursor` opens the transaction first, in the same hop."""
    if begin is not None:
        connection._conn.execute(begin)
    cursor = connection._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        # As SQLAlchemy's adapter: rows are buffered for a single statement only.
        rows = cursor.fetchall() if description is not None and not many else []
        # Read after the rows: a DML ... RETURNING statement counts its rows as they are fetched.
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's buffered aiosqlite cursor with one thread hop per statement instead of four
    (see the module docstring). It holds no aiosqlite cursor: each statement's outcome is kept
    here, so `close()` needs no hop either."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # Not the base __init__: that creates an aiosqlite cursor, a hop of its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: _DBAPICursorDescription | None = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> _DBAPICursorDescription | None:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]  # None before an INSERT, as sqlite3

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        """Nothing to release: the sqlite3 cursor closed on the worker, the rows stay here."""

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._run(operation, parameters, many=False)
        return self

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._run(operation, seq_of_parameters, many=True)
        return self

    async def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        # Errors propagate to the base execute()/executemany(), which map them through
        # _handle_exception (IntegrityError, OperationalError, a closed connection).
        adapted: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        if not many and not parameters and operation in BEGINS:
            # Held back: it runs in the next statement's hop (`OneHopConnection`).
            adapted._begin = operation
            self._description, self._rowcount, self._lastrowid = None, -1, None
            self._rows = collections.deque()
            return
        async with adapted._execute_mutex:
            connection: Any = self._connection
            begin, adapted._begin = adapted._begin, None
            outcome: _Outcome = await connection._execute(
                _run_statement, connection, operation, parameters, many=many, begin=begin
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)


class BeginFirstCursor(AsyncAdapt_aiosqlite_ss_cursor):
    """SQLAlchemy's server-side (streaming) cursor, which opens a held-back transaction before
    its statement (a hop of its own: streams are rare and long)."""

    __slots__ = ()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._adapt_connection.open_held_transaction()  # type: ignore[attr-defined]
        return await super()._execute_async(operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._adapt_connection.open_held_transaction()  # type: ignore[attr-defined]
        return await super()._executemany_async(operation, seq_of_parameters)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection whose (non-streaming) cursors are `OneHopCursor`s, and
    which saves the hops a transaction's ends cost when they do nothing:

    - BEGIN (the engines' `begin` event, `install_pragmas`) is held back and sent in the hop of
      the transaction's first statement (or `run_on_connection`'s function, or a stream's first
      statement): the transaction begins at the same point of the same connection's work (a
      deferred SQLite transaction takes its snapshot at that statement anyway); BEGIN IMMEDIATE
      takes the write lock then, and a busy lock is that statement's OperationalError, as a
      refused BEGIN was (SQLAlchemy sends the begin lazily, right before it, already).
    - ROLLBACK and COMMIT with no transaction open skip their hop: a held-back BEGIN that no
      statement followed is dropped, and a connection not in a transaction (SQLite's own
      autocommit flag, read directly: nothing else runs on the connection meanwhile) has
      nothing to end. The pool's reset on return is such a rollback after a session's own.
    A read session of one statement went from four hops (BEGIN, statement, ROLLBACK, ROLLBACK)
    to two."""

    __slots__ = ("_begin",)

    # The base's unannotated `_cursor_cls = <class>` reads to mypy as a type alias.
    _cursor_cls = OneHopCursor  # type: ignore[assignment]
    _ss_cursor_cls = BeginFirstCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        #: A BEGIN statement not sent yet.
        self._begin: str | None = None

    def take_held_begin(self) -> str | None:
        begin, self._begin = self._begin, None
        return begin

    async def open_held_transaction(self) -> None:
        begin = self.take_held_begin()
        if begin is not None:
            connection: Any = self._connection
            async with self._execute_mutex:
                await connection._execute(_execute_only, connection, begin)

    def rollback(self) -> None:
        if not self._ends_nothing():
            super().rollback()

    def commit(self) -> None:
        if not self._ends_nothing():
            super().commit()

    def _ends_nothing(self) -> bool:
        if self.take_held_begin() is not None:
            return True  # nothing ran since BEGIN: no transaction was opened
        driver: Any = self._connection
        conn = driver._connection
        return conn is not None and not conn.in_transaction


def _execute_only(connection: aiosqlite.Connection, statement: str) -> None:
    connection._conn.execute(statement)


class _SqleanAiosqliteDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        # SQLAlchemy's connect (creator function, daemon thread), re-wrapped in our adapter.
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


class SqleanAiosqliteDialect(SQLiteDialect_aiosqlite):
    driver = "aiosqlean"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> AsyncAdapt_aiosqlite_dbapi:
        return _SqleanAiosqliteDBAPI(_AIOSQLEAN, sqlean)  # type: ignore[arg-type]


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


async def run_on_connection(
    session: AsyncSession, fn: Callable[[sqlean.Connection], T], *, last_read: bool = False
) -> T:
    """Run `fn` with the session's own sqlite3 connection, on the thread that owns it, inside the
    session's transaction (begun first, so `fn` reads the same snapshot as the session's other
    statements): a whole read, its numpy work included, in one thread hop, where the async
    driver takes one hop or more per statement. `last_read`: the session is a read that does
    nothing after `fn`, so its transaction is rolled back in the same hop (and the session's
    own rollback at its end has nothing left to end: no hop); never for a write.

    A DB-API error leaves as SQLAlchemy's (an `OperationalError` for a locked or vanished file),
    as any statement's would; so does a connection whose aiosqlite thread has gone (aiosqlite
    says so with a ValueError, which SQLAlchemy's adapter maps for a statement), and such a
    connection leaves the pool, as it does after a statement: a 503 for this request, not a 500,
    and none for the next ones.

    aiosqlite runs functions on its thread through `Connection._execute` (private; pinned in
    pyproject.toml)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: aiosqlite.Connection = raw.driver_connection  # type: ignore[assignment]
    adapted: OneHopConnection = raw.dbapi_connection  # type: ignore[assignment]
    try:
        # Checked here, not by catching ValueError: `fn` may raise one of its own (a bug).
        if not driver._running or driver._connection is None:
            raise sqlean.OperationalError("no active connection")
        begin = adapted.take_held_begin()

        def run(conn: sqlean.Connection) -> T:
            if begin is not None:
                conn.execute(begin)
            try:
                return fn(conn)
            finally:
                if last_read and conn.in_transaction:
                    conn.rollback()

        async with adapted._execute_mutex:
            return await driver._execute(run, driver._connection)  # type: ignore[no-untyped-call,no-any-return]
    except sqlean.Error as exc:
        gone = connection.dialect.is_disconnect(exc, raw, None)
        if gone:
            await connection.invalidate(exc)
        raise DBAPIError.instance(
            None, None, exc, sqlean.Error, connection_invalidated=gone
        ) from exc


async def first_row(
    session: AsyncSession, statement: TextualSelect, params: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The first row of a typed text statement (`text(...).columns(...)`, named parameters),
    its values read back as its column types say, or None; in one thread hop with the session's
    transaction, begun and ended (`run_on_connection` with `last_read`): the session must do
    nothing else. Through the ORM a one-statement read took two hops and ~0.5 ms in all."""
    sql = cast(TextClause, statement.element).text
    row = await run_on_connection(
        session, lambda conn: conn.execute(sql, params).fetchone(), last_read=True
    )
    if row is None:
        return None
    dialect = session.get_bind().dialect
    values: dict[str, Any] = {}
    for column, value in zip(statement.selected_columns, row, strict=True):
        process = column.type._cached_result_processor(dialect, None)
        values[column.name] = value if process is None else process(value)
    return values
