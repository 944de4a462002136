"""The database itself: `init`, `db upgrade`, `migrate --to`, `backup` and `restore` (the use
cases are in app/services/operations.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import DatabaseUrl, DataDir, load_settings, out, run, run_with_runtime
from app.services import operations
from app.text import plural

db_cli = typer.Typer(help="The database: schema upgrades.", no_args_is_help=True)


def init(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Create a new, empty database (besides `serve`, the only command that creates one)."""
    settings = load_settings(data_dir, database_url)
    path = operations.sqlite_file(settings)
    existed = path is not None and path.exists()
    run_with_runtime(settings, lambda runtime: asyncio.sleep(0), create=True)
    where = path.resolve() if path is not None else "the configured database"
    out.print(f"database ready at {where}" + (" (it existed already)" if existed else ""))


@db_cli.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Bring the database's schema to this version's (the server does the same at start)."""
    done = run(operations.upgrade(load_settings(data_dir, database_url)))
    if done.current:
        out.print(f"{done.where}: schema already at revision {done.head}")
    elif done.before is None:
        out.print(f"{done.where}: schema created at revision {done.head}")
    else:
        out.print(f"{done.where}: schema upgraded from {done.before} to {done.head}")


def migrate(
    to: Annotated[
        str, typer.Option("--to", help="URL of the empty target, e.g. postgresql://u:p@host/db")
    ],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Copy this deployment (users, keys, personas, documents, chunks with their vectors,
    usage) into an empty database, without re-embedding anything; then check the copy.
    Stop the servers first: a SQLite source in use is refused, and a copy whose source changed
    while it was copied is refused too (the target is left empty)."""
    source = load_settings(data_dir, database_url)
    target = load_settings(data_dir, to)
    done = run(operations.copy(source, target, progress=lambda line: out.print(line)))
    moment = f" as of {done.as_of.isoformat(timespec='seconds')}" if done.as_of else ""
    out.print(
        f"copied {plural(done.rows, 'row')} from {done.source}{moment} to {done.target}; "
        f"counts match, searches agree for {plural(done.users_checked, 'user')}"
    )


def backup(
    dest: Annotated[Path, typer.Argument(help="The new file (or a folder to put it in).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Copy the SQLite database to DEST while the server runs: one consistent moment of it,
    checked, readable by its owner only."""
    done = operations.backup(load_settings(data_dir, database_url), dest=dest)
    out.print(f"backed up {done.database} to {done.written}")


def restore(
    src: Annotated[Path, typer.Argument(help="A file made by `personaizer backup`.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Put the backup SRC in place of the SQLite database (stop the server first; the replaced
    database is kept as a .bak beside it)."""
    done = operations.restore(load_settings(data_dir, database_url), src=src)
    where = f"; the replaced database is kept as {done.kept}" if done.kept else ""
    out.print(f"restored {done.database} from {src}{where}")
