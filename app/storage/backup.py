"""Backing up and restoring the SQLite file, and the lock that tells a restore a server is running.

- `backup`: SQLite's online backup API copies the database as of one read transaction, while
  writers go on (WAL: they do not wait for it). The copy is written beside its destination under a
  temporary name, 0600 from its creation, checked with `PRAGMA integrity_check`, then renamed into
  place: a failed backup leaves no half-written file under the name asked for.
- `restore`: checks the copy the same way, then puts it in place of the database. The replaced
  database is kept as `<file>.<UTC time>.bak` (a consistent copy, its WAL included).
- `server_lock`: every `personaizer serve` holds a shared `flock` on `<file>.lock` for as long as it
  runs (several workers or servers on one file each hold one); a restore takes it exclusively and
  refuses when it cannot. The kernel drops the lock when the process ends, kill -9 included, so a
  crashed server leaves nothing stale behind.

PostgreSQL has its own tools (pg_dump, pg_restore); these are for the embedded engine only.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlean

from app.files import private_dir


class BackupError(Exception):
    """A backup or restore that cannot be done; the message is one line for the operator."""


def lock_path(database: Path) -> Path:
    return database.with_name(f"{database.name}.lock")


def _open_lock(database: Path) -> int:
    return os.open(lock_path(database), os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def server_lock(database: Path) -> Iterator[None]:
    """Held (shared) by a server for as long as it serves `database`."""
    fd = _open_lock(database)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def no_server(database: Path) -> Iterator[None]:
    """Exclusive use of `database`: refuses (BackupError) while a server holds `server_lock`,
    and keeps a server from starting until the block ends."""
    fd = _open_lock(database)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BackupError(
                f"a server is using {database} (it holds {lock_path(database)}); stop it first"
            ) from exc
        yield
    finally:
        os.close(fd)


def _copy(source: Path, target: Path) -> None:
    """A consistent copy of `source` as `target` (0600, replaced atomically), checked."""
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    # Created 0600 before SQLite opens it: the copy holds every tenant's data and key hashes.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        src = sqlean.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlean.connect(str(partial))
        try:
            # One step (pages=-1): the whole copy comes from one read transaction, so it is one
            # moment of the database, whatever writers commit meanwhile.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            check(dst, partial)
        finally:
            dst.close()
            src.close()
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def check(conn: sqlean.Connection, path: Path) -> None:
    """`PRAGMA integrity_check` passes and the file holds a personaizer database."""
    result = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
    if result != ["ok"]:
        raise BackupError(f"{path} fails the integrity check: {'; '.join(result[:3])}")
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'"
    ).fetchone()
    if found is None:
        raise BackupError(f"{path} holds no personaizer database")


def backup(database: Path, destination: Path) -> Path:
    """Copy the live `database` to `destination` (a new file, or a folder to put it in);
    returns the file written."""
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    if destination.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        destination = destination / f"{database.stem}-{stamp}.db"
    if destination.exists():
        raise BackupError(f"{destination} exists already; name a new file")
    if not destination.parent.is_dir():
        # Checked here, or the copy fails naming its temporary `.x.db.partial` file.
        raise BackupError(
            f"{destination.parent} does not exist: create the folder first, or name another"
        )
    if destination.resolve() == database.resolve():
        raise BackupError("the destination is the database itself")
    _copy(database, destination)
    return destination


def restore(source: Path, database: Path) -> Path | None:
    """Put the copy `source` in place of `database` (no server may be running); returns where
    the replaced database was kept, or None when there was none."""
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    try:
        conn = sqlean.connect(f"file:{source}?mode=ro", uri=True)
        try:
            check(conn, source)
        finally:
            conn.close()
    except sqlean.DatabaseError as exc:
        raise BackupError(f"{source} is not a usable SQLite database: {exc}") from exc
    private_dir(database.parent)
    with no_server(database):
        kept: Path | None = None
        if database.exists():
            # Fold the WAL into the file (closing the last connection removes it): what the old
            # WAL held is then in the .bak, and no old WAL is left to replay into the new file.
            try:
                conn = sqlean.connect(str(database))
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()
            except sqlean.DatabaseError as exc:
                raise BackupError(
                    f"cannot read the database being replaced, {database} ({exc}): move it "
                    "aside yourself, then restore"
                ) from exc
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            kept = database.with_name(f"{database.name}.{stamp}.bak")
            _copy(database, kept)
        for suffix in ("-wal", "-shm"):
            database.with_name(database.name + suffix).unlink(missing_ok=True)
        _copy(source, database)
        return kept
