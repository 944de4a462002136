"""Writing through today's services into a SQLite file at an older revision.

Some upgrade tests fill a file at an old revision with the current services (there is no older
build to run), then upgrade it. The services write what later revisions added, so for the
setup the file gets those objects (the changes feed's, revision 0007; the key restrictions,
0008; the plans table, 0009; the personas' knowledge filter, 0010; the keyword tables, 0013) and loses them again
before the upgrade, which then adds them as it would to a real old file. Only what the services
write is added: no index, no backfill.
"""

from __future__ import annotations

from sqlalchemy import text

from app.storage import plan_rows
from app.storage.database import Database
from app.storage.index import sqlite_keywords

#: Revision 0008's columns of api_keys.
_KEY_COLUMNS = (
    "scopes TEXT",
    "persona_ids TEXT",
    "allowed_origins TEXT",
    "expires_at VARCHAR(24)",
    "rate_limit INTEGER",
    "signing_secret VARCHAR(64)",
)
_ADD = (
    "ALTER TABLE knowledge_docs ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0",
    "CREATE TABLE knowledge_tombstones (user_id INTEGER NOT NULL, external_id VARCHAR NOT NULL,"
    " seq BIGINT NOT NULL, deleted_at VARCHAR(24) NOT NULL, PRIMARY KEY (user_id, external_id))",
    "CREATE TABLE knowledge_feeds (user_id INTEGER NOT NULL PRIMARY KEY,"
    " last_seq BIGINT NOT NULL, purged_seq BIGINT NOT NULL)",
    *(f"ALTER TABLE api_keys ADD COLUMN {column}" for column in _KEY_COLUMNS),
    "CREATE TABLE plans (id VARCHAR(64) NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
    " limits TEXT NOT NULL, updated_at VARCHAR(24) NOT NULL)",
    "ALTER TABLE personas ADD COLUMN knowledge_filter JSON",
)
_DROP = (
    "DROP TABLE knowledge_tombstones",
    "DROP TABLE knowledge_feeds",
    "ALTER TABLE knowledge_docs DROP COLUMN change_seq",
    *(f"ALTER TABLE api_keys DROP COLUMN {column.split()[0]}" for column in _KEY_COLUMNS),
    "ALTER TABLE personas DROP COLUMN knowledge_filter",
    "DROP TABLE plans",
)
#: Revision 0013's keyword tables, as it makes them (their triggers and index too, so that
#: searches at the old revision answer as they will after the upgrade).
_KEYWORD_TABLES = (*sqlite_keywords.TABLES, sqlite_keywords.IMPACT_INDEX, *sqlite_keywords.TRIGGERS)
_KEYWORD_DROP = tuple(f"DROP TABLE {t.split()[2]}" for t in sqlite_keywords.TABLES)


async def _run(database: Database, statements: tuple[str, ...]) -> None:
    async with database.writer.connect() as conn:
        for statement in statements:
            await conn.execute(text(statement))
        await conn.commit()


async def add_newer_objects(database: Database) -> None:
    """Give an old-revision SQLite file what today's services write beyond it (and read: the
    plans, seeded as an upgrade would)."""
    await _run(database, _ADD)
    await add_keyword_tables(database)
    async with database.writer.connect() as conn:
        await conn.run_sync(plan_rows.seed_if_empty, database.settings.all_plans)
        await conn.commit()


async def drop_newer_objects(database: Database) -> None:
    """Take them away again, so the file is as the old revision made it."""
    await _run(database, _DROP)
    await drop_keyword_tables(database)


async def add_keyword_tables(database: Database) -> None:
    """Give a SQLite file older than revision 0013 the keyword tables the services write."""
    await _run(database, _KEYWORD_TABLES)


async def drop_keyword_tables(database: Database) -> None:
    await _run(database, _KEYWORD_DROP)
