"""The operator's use cases, for `personaizer` (API.md section 9): opening the database a command
runs against, the data-dir safety check, schema upgrades, copying a deployment to another
database, and backing up and restoring the SQLite file.

Failures are `OperationError`, whose message is the one line the CLI prints; `reported()` turns
the storage layer's own failures into it, so the CLI needs to know nothing of storage.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from app.embedding.embedder import Embedder
from app.files import FILE_MODE, private_dir
from app.services.runtime import Runtime
from app.settings import Settings
from app.storage import backup as backups
from app.storage import location, migrations
from app.storage.database import Database
from app.storage.migrations import SchemaError
from app.storage.transfer import TransferError, copy_database

#: What backup and restore say on a database that is not a SQLite file.
PG_BACKUP = "on PostgreSQL use pg_dump to back up and pg_restore to restore (see docs/scaling.md)"


class OperationError(Exception):
    """An operation that cannot be done; the message is one line for the operator."""


@contextmanager
def reported() -> Iterator[None]:
    """The storage layer's failures (a database this build cannot use, a driver error, a refused
    backup or copy) as `OperationError`, with the message the operator should read."""
    try:
        yield
    except (SchemaError, backups.BackupError, TransferError) as exc:
        raise OperationError(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise OperationError(
            f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}"
        ) from exc


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file the settings point at, or None for a server database (PostgreSQL)."""
    with reported():
        return location.sqlite_file(settings.effective_database_url)


def where(settings: Settings) -> str:
    """Where the data is, for people (the file, or the server and database, no password)."""
    with reported():
        return location.where(settings.effective_database_url)


def check_database(settings: Settings, *, create: bool) -> None:
    """Data-dir safety: a command run with the wrong --data-dir (or from another folder) must
    not make a new empty database and report success there. Only `serve` and `init` create."""
    path = sqlite_file(settings)
    if path is None:
        return
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OperationError(f"{folder} is a file, not a data folder (check --data-dir)")
            break
    if path.is_dir():
        raise OperationError(f"{path} is a folder, not a database file")
    if not path.exists() and not create:
        where = f"--data-dir {path.parent}" if not settings.database_url else "--database-url"
        raise OperationError(
            f"no database at {path.resolve()}: run `personaizer init {where}` to make one, "
            "or point --data-dir at an existing one"
        )


@asynccontextmanager
async def command_runtime(settings: Settings, *, create: bool = False) -> AsyncIterator[Runtime]:
    """A Runtime for one command: the database opened (created only with `create=True`, as
    `serve` and `init` do; upgraded if older), closed again when the block ends. The embedder is
    never started: the operator's commands embed nothing."""
    db = Database(settings)
    try:
        await db.migrate(create=create)
        yield Runtime(settings=settings, db=db, embedder=Embedder())
    finally:
        await db.dispose()


def serving_lock(settings: Settings) -> AbstractContextManager[None]:
    """What a server holds for as long as it runs: on SQLite a shared lock beside the file, so
    that `restore` refuses while any server uses it (PostgreSQL: nothing)."""
    database = sqlite_file(settings)
    if database is None:
        return nullcontext()
    private_dir(database.parent)
    return backups.server_lock(database)


#: In the data dir: the dashboard's session secret when none is configured.
SESSION_SECRET_FILE = "session-secret"
#: Characters a kept secret has at least (what Settings asks of a configured one outside local use).
SESSION_SECRET_MIN = 32


def session_secret(settings: Settings) -> str:
    """The secret that signs dashboard session cookies: the configured one, else the one kept
    in the data dir (made on first use, 0600). Every worker of `serve --workers N` must sign
    with the same secret, or a cookie set by one is refused by the others; kept in the data dir
    it also survives restarts, as the sessions themselves do (they are rows in the database)."""
    if settings.session_secret:
        return settings.session_secret
    path = settings.data_dir / SESSION_SECRET_FILE
    try:
        kept: str | None = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = None
    if kept is not None and len(kept) >= SESSION_SECRET_MIN:
        return kept
    private_dir(settings.data_dir)
    fresh = secrets.token_urlsafe(32)
    # Written whole under another name, then linked into place: two servers starting at once
    # both end up with whichever secret was linked first, never a half-written one.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(fresh + "\n")
        if kept is not None:  # empty or too short to be one we made: replace it
            tmp.replace(path)
            return fresh
        try:
            os.link(tmp, path)
        except FileExistsError:
            return session_secret(settings)
        return fresh
    finally:
        tmp.unlink(missing_ok=True)


def check_encoder(settings: Settings) -> None:
    """Refuse at once an encoder whose packages are missing (rather than a server that never
    becomes ready)."""
    if settings.encoder != "onnx":
        return
    from app.embedding.onnx_encoder import EncoderUnavailable, check_available

    try:
        check_available()
    except EncoderUnavailable as exc:
        raise OperationError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Upgrade:
    where: str
    #: The revision found (None: the database was empty).
    before: str | None
    head: str
    #: Whether it was at `head` already.
    current: bool


async def upgrade(settings: Settings) -> Upgrade:
    """Bring the database's schema to this version's (`personaizer db upgrade`). A SQLite file
    must exist already; a server database's schema may not."""
    check_database(settings, create=False)
    db = Database(settings)
    try:
        with reported():
            found = await db.migrate()
    finally:
        await db.dispose()
    return Upgrade(
        where=db.where, before=found.revision, head=migrations.head(), current=found.current
    )


@dataclass(frozen=True, slots=True)
class Copy:
    source: str
    target: str
    rows: int
    users_checked: int
    #: The moment of the source that the target holds.
    as_of: datetime | None


async def copy(
    source_settings: Settings,
    target_settings: Settings,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> Copy:
    """Copy a deployment into an empty database and check the copy (`personaizer migrate`).

    A copy made while a server writes would miss the writes acknowledged after its moment. A
    SQLite source is refused while a server holds it (as `restore` is), and no server can start
    on it until the copy ends; on PostgreSQL, where no lock tells, the copy is one snapshot and
    is refused, leaving the target empty, if the source changed while it was copied."""
    check_database(source_settings, create=False)
    database = sqlite_file(source_settings)
    with reported(), backups.no_server(database) if database is not None else nullcontext():
        source, target = Database(source_settings), Database(target_settings)
        if source.where == target.where:
            raise OperationError("the target is the source; name another database with --to")
        try:
            await source.migrate(create=False)
            await target.migrate()
            report = await copy_database(source, target, progress=progress)
        finally:
            await source.dispose()
            await target.dispose()
    return Copy(
        source=source.where,
        target=target.where,
        rows=sum(report.rows.values()),
        users_checked=report.users_checked,
        as_of=report.as_of,
    )


@dataclass(frozen=True, slots=True)
class Backup:
    database: Path
    written: Path


def backup(settings: Settings, *, dest: Path) -> Backup:
    """Copy the SQLite database to `dest` (a file, or a folder to put it in) while servers run."""
    database = sqlite_file(settings)
    if database is None:
        raise OperationError(PG_BACKUP)
    check_database(settings, create=False)
    with reported():
        return Backup(database=database, written=backups.backup(database, dest))


@dataclass(frozen=True, slots=True)
class Restore:
    database: Path
    #: Where the replaced database is kept (None: there was none).
    kept: Path | None


def restore(settings: Settings, *, src: Path) -> Restore:
    """Put the backup `src` in place of the SQLite database (no server may be running)."""
    database = sqlite_file(settings)
    if database is None:
        raise OperationError(PG_BACKUP)
    with reported():
        return Restore(database=database, kept=backups.restore(src, database))
