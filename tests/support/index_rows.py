"""What the tests read below the API: row counts of the documents and of each index that must
stay in step with them, on either engine."""

from __future__ import annotations

from sqlalchemy import text
from starlette.applications import Starlette

#: Per engine: the tables behind each name (SQLite keeps vectors in a virtual table of its own,
#: PostgreSQL in the chunk rows; both keep keywords in chunk_terms).
_TABLES = {
    "sqlite": {"vectors": "chunk_vectors", "keywords": "chunk_terms"},
    "postgresql": {"vectors": "chunks WHERE embedding IS NOT NULL", "keywords": "chunk_terms"},
}


async def index_counts(app: Starlette) -> dict[str, int]:
    """Rows of `knowledge_docs`, `chunks`, `vectors` and `keywords`."""
    db = app.state.runtime.db
    tables = {"knowledge_docs": "knowledge_docs", "chunks": "chunks", **_TABLES[db.dialect]}
    async with db.read() as session:
        return {
            name: (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for name, table in tables.items()
        }
