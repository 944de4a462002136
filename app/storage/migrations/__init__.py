"""Schema migrations with Alembic, for both engines, run by the server at start and by
`personaizer db upgrade`.

`upgrade` runs on a connection the caller holds inside one transaction (SQLite: `BEGIN
IMMEDIATE`; PostgreSQL: a transaction holding an advisory lock, so that several servers starting
at once upgrade one after the other), so the steps and the version stamp commit together and a
failed upgrade leaves the database as it was. A database stamped with a revision this build does
not know was made by a newer version: it is refused, untouched.

Files of release 0.1 predate Alembic: they carry `PRAGMA user_version = 1` and no
alembic_version table. Revision 0001 makes exactly their schema, so such a file is stamped at
0001 and upgraded from there. Once Alembic manages a file its user_version is set to
`SQLITE_USER_VERSION`, which 0.1 reads as "newer than me" and refuses, untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from app import models  # noqa: F401  (registers the tables on SQLModel.metadata)

log = logging.getLogger(__name__)
# Alembic narrates each step at INFO; the server logs the upgrades that happen itself.
logging.getLogger("alembic").setLevel(logging.WARNING)

#: PRAGMA user_version of an Alembic-managed SQLite file (release 0.1 wrote 1).
SQLITE_USER_VERSION = 2
#: The revision whose schema equals release 0.1's.
LEGACY_REVISION = "0001"


class SchemaError(RuntimeError):
    """The database cannot be used by this version of the server (the message says why)."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


@dataclass(frozen=True, slots=True)
class State:
    """Where a database stands: its revision (None: empty), and whether it is a 0.1 file."""

    revision: str | None
    legacy: bool

    @property
    def current(self) -> bool:
        return self.revision == head()


def state(conn: Connection, where: str) -> State:
    """Read the database's revision; refuse what this build cannot upgrade."""
    revision = MigrationContext.configure(conn).get_current_revision()
    legacy = False
    if conn.dialect.name == "sqlite":
        version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
        if revision is None and version == 1:
            legacy, revision = True, LEGACY_REVISION
        elif revision is None and version > 1:
            raise SchemaError(
                f"{where} has schema version {version} but no revision stamp: it was made by a "
                "newer or different build; upgrade personaizer (the file was not changed)"
            )
        elif version > SQLITE_USER_VERSION:
            raise SchemaError(
                f"{where} has schema version {version}, newer than this server's "
                f"{SQLITE_USER_VERSION}; upgrade personaizer (the file was not changed)"
            )
    if revision is not None:
        try:
            ScriptDirectory.from_config(_config()).get_revision(revision)
        except CommandError as exc:
            raise SchemaError(
                f"{where} is at schema revision {revision}, which this version of personaizer "
                f"does not know (newest known: {head()}): it was made by a newer version; "
                "upgrade personaizer (the database was not changed)"
            ) from exc
    elif _has_tables(conn):
        raise SchemaError(
            f"{where} already holds tables but is not a personaizer database (no schema "
            "version); refusing to touch it"
        )
    return State(revision=revision, legacy=legacy)


def _has_tables(conn: Connection) -> bool:
    return bool(inspect(conn).get_table_names())


def upgrade(conn: Connection, where: str) -> State:
    """Bring the database to this build's head revision, inside the caller's transaction.
    Returns the state it was found in."""
    found = state(conn, where)
    if found.legacy:
        command.stamp(_config(conn), LEGACY_REVISION)
    if not found.current:
        command.upgrade(_config(conn), "head")
        if found.revision is not None:
            log.warning("upgraded %s from schema revision %s to %s", where, found.revision, head())
    if conn.dialect.name == "sqlite":
        # The caller runs migrations with foreign keys off (a table rebuild would cascade);
        # what they did must still satisfy every foreign key before it commits.
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise SchemaError(
                f"upgrading {where} would leave {len(broken)} rows whose foreign key refers to "
                f"nothing (first: {tuple(broken[0])}); the database was not changed"
            )
        conn.exec_driver_sql(f"PRAGMA user_version = {SQLITE_USER_VERSION}")
    check_layout(conn, where)
    return found


def check_layout(conn: Connection, where: str) -> None:
    """Refuse a database whose tables lack columns this build expects at its revision (a
    pre-release build's file, or one edited by hand), rather than fail on its first query."""
    inspector = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = sorted(c.name for c in table.columns if c.name not in have)
        if missing:
            raise SchemaError(
                f"{where} is at revision {head()} but its table {table.name} lacks "
                f"{', '.join(missing)}: it was made by a different build; it was not changed "
                "(export your data with the API of that build and start a new database)"
            )
