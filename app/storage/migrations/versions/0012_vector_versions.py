"""PostgreSQL: a version per user that changes whenever the user's chunks do.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A server process keeps small users' vectors in memory (app/storage/index/postgres_vectors.py),
as it does on SQLite, and needs to know in a search's own snapshot whether what it keeps is still
that user's set of chunks, wherever the change was made (another process, another machine).
`vector_versions` holds, per user, the id of the last transaction that inserted, deleted or
updated any of the user's chunks (`pg_current_xact_id()`, never handed out twice in a cluster),
set by statement-level triggers on `chunks`, so that every path counts: the index's own
writes, a cascade from `knowledge_docs` or `users`, an operator's SQL. A search reads one row.

No foreign key to `users`: the triggers also fire for the cascade that deletes a user, when the
user's row is already gone. A deleted user's row stays behind (a few bytes; user ids are never
reused). SQLite needs none of this: it checks its kept matrix against the bit vectors it reads.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_BUMP = """
CREATE FUNCTION vector_versions_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'INSERT INTO vector_versions AS v (user_id, version)
        SELECT DISTINCT user_id, pg_current_xact_id()::text::bigint FROM changed
        ON CONFLICT (user_id) DO UPDATE SET version = excluded.version';
    RETURN NULL;
END
$$
"""

#: TRUNCATE has no transition table: every user's version changes.
_BUMP_ALL = """
CREATE FUNCTION vector_versions_bump_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE vector_versions SET version = pg_current_xact_id()::text::bigint;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE TABLE vector_versions (user_id INTEGER PRIMARY KEY, version BIGINT NOT NULL)"
    )
    op.execute(_BUMP)
    op.execute(_BUMP_ALL)
    # An update is counted by its new rows (a chunk's user never changes).
    for name, event, table in (
        ("vector_versions_insert", "INSERT", "NEW TABLE AS changed"),
        ("vector_versions_delete", "DELETE", "OLD TABLE AS changed"),
        ("vector_versions_update", "UPDATE", "NEW TABLE AS changed"),
    ):
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON chunks REFERENCING {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION vector_versions_bump()"
        )
    op.execute(
        "CREATE TRIGGER vector_versions_truncate AFTER TRUNCATE ON chunks"
        " FOR EACH STATEMENT EXECUTE FUNCTION vector_versions_bump_all()"
    )
    # Users with chunks now: a version of this transaction's.
    op.execute(
        "INSERT INTO vector_versions (user_id, version)"
        " SELECT DISTINCT user_id, pg_current_xact_id()::text::bigint FROM chunks"
    )


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
