"""API keys carry restrictions: scopes, personas, origins, expiry, a rate limit, a signing secret.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

Every new column is nullable and NULL means "no restriction", so the keys that exist keep the
full access they had: all scopes, every persona, any origin, no expiry, the plan's limits. A
key gets a signing secret (for tenant tokens) only when it is made with the `search` scope;
older keys have none and cannot sign tokens (make a new key for that).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both engines (nullable, no default): SQLite does it in place, so the
    # table is not rebuilt and keeps its AUTOINCREMENT (revision 0005).
    for column in (
        sa.Column("scopes", sa.Text(), nullable=True),
        sa.Column("persona_ids", sa.Text(), nullable=True),
        sa.Column("allowed_origins", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.String(24), nullable=True),
        sa.Column("rate_limit", sa.Integer(), nullable=True),
        sa.Column("signing_secret", sa.String(64), nullable=True),
    ):
        op.add_column("api_keys", column)


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
