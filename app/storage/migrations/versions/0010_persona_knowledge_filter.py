"""Personas carry a knowledge filter: documents that belong to them by rule.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

One nullable JSON column; NULL means "no rule", so every persona that exists keeps exactly the
knowledge it had (its attached set). No index: a persona's filter is read with the persona, and
the documents it matches are found with the same conditions the search's metadata filter uses.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both engines (nullable, no default): SQLite does it in place.
    op.add_column("personas", sa.Column("knowledge_filter", sa.JSON(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
