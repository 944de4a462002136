"""SQLite: user and key ids are never reused (AUTOINCREMENT), so an id names one account forever.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

`users.id` was an INTEGER PRIMARY KEY without AUTOINCREMENT: SQLite hands out max(rowid) + 1,
so deleting the newest user and creating another gave the new user the deleted one's id. The
id keys everything a user has, including what lives outside the database: rate-limit windows
(in memory or Redis), the usage counts not yet flushed, the search's per-user caches, and any
request of the deleted user still in flight. Measured on 0.1: a batch that was embedding while
its user was deleted and another created was stored in the new user's account, counted against
its quota, and the new user started with the old one's used rate window. `api_keys.id` likewise.

The tables are rebuilt with AUTOINCREMENT; rows keep their ids. Other tables refer to `users`
with ON DELETE CASCADE, so the rebuild runs with foreign keys off (the caller switches them off
and checks them before the commit: app/storage/database.py, app/storage/migrations). Ids of users
deleted before this revision above the largest one left may be handed out once more; nothing of
theirs is left in the database, and no process that knew them survives the upgrade's restart.
PostgreSQL's ids come from sequences, which never go back: a no-op there.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in ("users", "api_keys"):
        # recreate="always": the only change is a table option, which batch mode cannot ALTER.
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
