"""Where a database URL points, worked out without opening anything: the operator's commands
check the data dir before any engine could create a file in the wrong place."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from app.storage.database import async_url
from app.storage.migrations import SchemaError


def sqlite_file(database_url: str) -> Path | None:
    """The SQLite file `database_url` names, or None for a server database (PostgreSQL):
    there the server says whether the database exists, and no file can be made by mistake."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise SchemaError(f"invalid database URL: {exc}") from exc
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def where(database_url: str) -> str:
    """Where the data is, for people, as `Database.where` says it: the file, or the server and
    database without the password."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        return str(Path(url.database))
    return url.render_as_string(hide_password=True)
