"""PostgreSQL: external ids and persona ids are compared and ordered byte by byte (COLLATE "C").

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Documents are listed by external_id and paged with keyset cursors (`external_id > :after`);
personas by id. On PostgreSQL those comparisons followed the database's default collation, so
the same documents could be listed in another order (en_US puts `a` before `B`, C puts `B`
first) than on SQLite, whose BINARY collation compares bytes, and a cursor made on one server
could skip or repeat documents on a database created with another locale. The columns now say
`COLLATE "C"`: byte order, which for UTF-8 is code point order, the order of SQLite and of
Python's `sorted()`. Their indexes are rebuilt; the rows are not rewritten. SQLite: a no-op.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (
    ("knowledge_docs", "external_id"),
    ("personas", "id"),
    ("persona_knowledge", "persona_id"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar COLLATE "C"')


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
