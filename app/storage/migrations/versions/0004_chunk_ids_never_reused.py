"""SQLite: chunk ids are never reused (AUTOINCREMENT), so a chunk id names one vector forever.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

`chunks.id` was an INTEGER PRIMARY KEY without AUTOINCREMENT: SQLite hands out max(rowid) + 1,
so deleting the document holding the largest ids and uploading another gave the new chunks the
deleted ones' ids. The search's float vector cache (app/storage/index/vector_cache.py) keys vectors by
chunk id and is exact only if an id never comes back with another vector, so the table is
rebuilt with AUTOINCREMENT: SQLite then records the largest id ever handed out in
`sqlite_sequence` and never goes below it.

The rebuild copies every row with its id (the vec0 and FTS5 rows use it as their rowid and are
not touched), keeps the columns, the foreign key to knowledge_docs with ON DELETE CASCADE and
the doc_id index; inserting the copied rows sets `sqlite_sequence` to the largest id present.
Ids of chunks deleted before this revision above that maximum may be handed out once more:
harmless, as no cache outlives the upgrade (it is in memory, and servers of earlier revisions
have none). PostgreSQL's ids come from a sequence, which never goes back: a no-op there.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # recreate="always": the only change is a table option, which batch mode cannot ALTER.
    with op.batch_alter_table(
        "chunks", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
