"""The changes feed: a per-user change sequence on documents, tombstones of deletes, counters.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

`knowledge_docs.change_seq` is the user's change sequence number of the write that made the
document's current version; `knowledge_tombstones` holds deleted documents (user, external_id,
seq, deleted_at); `knowledge_feeds` holds per user the last seq handed out and the highest seq
of a purged tombstone (a feed token below it is 410 `knowledge.changes_expired`). Seqs are
assigned inside the write transaction, which holds the user's write lock (docs/decisions.md).

Backfill: each user's existing documents get seqs 1..n in `updated_at` order (external_id
breaking ties), and the user's counter starts at n. Nothing was deleted under a feed before,
so there are no tombstones and nothing purged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _user_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    external_id = sa.String(collation="C") if postgres else sa.String()
    op.add_column(
        "knowledge_docs",
        sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "knowledge_tombstones",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("external_id", external_id, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.String(24), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "external_id"),
        _user_fk(),
    )
    op.create_index("ix_knowledge_tombstones_user_seq", "knowledge_tombstones", ["user_id", "seq"])
    op.create_table(
        "knowledge_feeds",
        sa.Column("user_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("purged_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
        _user_fk(),
    )
    # Window functions: SQLite 3.25+ and every supported PostgreSQL.
    op.execute(
        """
        UPDATE knowledge_docs SET change_seq = (
            SELECT ranked.n FROM (
                SELECT id, row_number() OVER (
                    PARTITION BY user_id ORDER BY updated_at, external_id
                ) AS n
                FROM knowledge_docs
            ) AS ranked
            WHERE ranked.id = knowledge_docs.id
        )
        """
    )
    op.execute(
        """
        INSERT INTO knowledge_feeds (user_id, last_seq, purged_seq)
        SELECT user_id, max(change_seq), 0 FROM knowledge_docs GROUP BY user_id
        """
    )
    # After the backfill: building it first would update every entry once more.
    op.create_index(
        "ix_knowledge_docs_user_change_seq", "knowledge_docs", ["user_id", "change_seq"]
    )


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
