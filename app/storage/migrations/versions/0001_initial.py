"""The first schema (release 0.1): accounts, knowledge, personas, usage, and the indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Frozen: later changes are new revisions. On SQLite it makes exactly what release 0.1 made (its
files carry `PRAGMA user_version = 1` and no alembic_version table; `app.storage.migrations` stamps them
at this revision). The indexes differ by engine:

- SQLite: a sqlite-vec `vec0` table of sign-bit vectors partitioned by user, and an FTS5 table
  whose `owner` column confines a MATCH to one user's rows (app/storage/index/sqlite_*.py).
- PostgreSQL: the float vectors in a pgvector `vector(384)` column with an HNSW index (cosine),
  and a `chunk_terms` table holding each chunk's tsvector (GIN index) and token count for BM25.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.types import UserDefinedType

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DIMS = 384


class _Vector(UserDefinedType[object]):
    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return f"vector({DIMS})"


def _time(name: str, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(24), nullable=nullable)


def _user_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=True),
        sa.Column("plan_id", sa.String(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        _time("created_at"),
        _time("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        _user_fk(),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_table(
        "knowledge_docs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("title", sa.String(), nullable=True),
        sa.Column("content", sa.String(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("content_sha256", sa.String(), nullable=False),
        sa.Column("char_count", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "external_id"),
        _user_fk(),
    )
    op.create_index("ix_knowledge_docs_user_updated", "knowledge_docs", ["user_id", "updated_at"])
    op.create_table(
        "personas",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("instructions", sa.String(), nullable=False),
        sa.Column("greeting", sa.String(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id"),
        _user_fk(),
    )
    op.create_index("ix_personas_user_id", "personas", ["user_id", "id"])
    op.create_table(
        "usage_counters",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(), nullable=False),
        sa.Column("embedded_chunks", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "period"),
        _user_fk(),
    )
    op.create_table(
        "chunks",
        # SQLite: INTEGER PRIMARY KEY is the rowid, which the vec0 and FTS5 rows share.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("doc_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("embed_sha256", sa.String(), nullable=False),
        sa.Column(
            "embedding", sa.LargeBinary().with_variant(_Vector(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["doc_id"], ["knowledge_docs.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_chunks_doc_id", "chunks", ["doc_id"])
    op.create_table(
        "persona_knowledge",
        sa.Column("persona_id", sa.String(), nullable=False),
        sa.Column("doc_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("persona_id", "doc_id"),
        sa.ForeignKeyConstraint(["persona_id"], ["personas.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["doc_id"], ["knowledge_docs.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_persona_knowledge_doc_id", "persona_knowledge", ["doc_id"])
    if postgres:
        _postgres_indexes()
    else:
        _sqlite_indexes()


def _sqlite_indexes() -> None:
    # vec0 reserves `chunk_size` vectors per partition up front: 1024 bit vectors are 48 KB per
    # user, and the search reads a partition block by block, fewer larger blocks being faster.
    # The keyword index's `owner` column holds `u<user id>` so that a MATCH ANDed with it
    # touches only that user's rows; bm25 gives the column weight 0.
    op.execute(
        f"""CREATE VIRTUAL TABLE chunk_vectors USING vec0(
        chunk_id integer primary key,
        user_id integer partition key,
        embedding bit[{DIMS}],
        chunk_size=1024
    )"""
    )
    op.execute(
        "CREATE VIRTUAL TABLE chunk_fts USING fts5(owner, title, text, tokenize='porter unicode61')"
    )
    op.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _postgres_indexes() -> None:
    # A user's exact scans (small tenants, scoped searches) read that user's rows only.
    op.create_index("ix_chunks_user_id", "chunks", ["user_id"])
    op.execute(
        "CREATE INDEX ix_chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)"
    )
    op.execute(
        """CREATE TABLE chunk_terms (
        chunk_id BIGINT PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        terms TSVECTOR NOT NULL,
        length INTEGER NOT NULL
    )"""
    )
    op.execute("CREATE INDEX ix_chunk_terms_terms ON chunk_terms USING gin (terms)")
    op.execute("CREATE INDEX ix_chunk_terms_user_id ON chunk_terms (user_id)")


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
