"""Plans live in the database: one `plans` table every server reads.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-15

Before, each server took its plans from its own configuration (`PERSONAIZER_PLANS`,
`PERSONAIZER_PLANS_FILE`), so two servers configured differently served the same user different
limits. The table is created empty here; `Database.migrate` fills it from the configuration
when it is empty (at this upgrade, and at any start that finds it empty), so the plans a
deployment had before keep working without a step of the operator's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("limits", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.String(24), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
