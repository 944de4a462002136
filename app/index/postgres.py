"""The PostgreSQL search index: pgvector (HNSW, cosine) and full-text search with BM25.

Vectors: `chunks.embedding` is a `vector(384)` with an HNSW index (`vector_cosine_ops`). A
search asks for the user's (and the scope's) nearest chunks in one statement; the planner scans
a small user or scope exactly (through `ix_chunks_user_id` and a sort) and walks the HNSW graph
for a large one, with pgvector's iterative scan so that the user and scope conditions are applied
inside the index scan rather than to a global top-k. Chunks are collapsed to documents by their
nearest chunk, as on SQLite, deepening while too few documents come back.

Keywords: `chunk_terms` holds each chunk's `tsvector` (title and text, the `english`
configuration) under a GIN index, and its length in words. PostgreSQL's own `ts_rank` has no
inverse document frequency, so the score is BM25 computed in SQL, the formula and constants of
SQLite's FTS5 (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) / (n + 0.5)), at least 1e-6), with N,
n and the mean length taken over the user's own chunks: the fused hybrid ranking then means the
same on both engines, and one tenant's statistics never leak into another's scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, bindparam, cast, column, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.index import IndexedChunk, Ranked, Restriction, TitledChunks, collapse
from app.index.scope import Scope
from app.index.words import MAX_QUERY_TERMS, query_words, word_count
from app.models import KnowledgeDoc

#: Nearest chunks fetched per wanted document (documents of many chunks crowd the list), at
#: least `CANDIDATES_MIN`; deepened four-fold while too few documents come back.
CANDIDATES_PER_DOC = 8
CANDIDATES_MIN = 400
#: pgvector caps `hnsw.ef_search` at 1000; iterative scans go on past it when filters drop rows.
_EF_SEARCH_MAX = 1000
#: BM25 constants, as FTS5's.
K1 = 1.2
B = 0.75
#: Text search configuration (stemming and stopwords) of the keyword index.
TS_CONFIG = "english"


def metadata_condition(i: int, key: str, value: Any) -> ColumnElement[bool]:
    """`metadata -> key = value` as jsonb: numbers compare by value, `true` is not `1`, and a
    missing key is not null. Objects compare as jsonb does (key order does not matter)."""
    document = cast(col(KnowledgeDoc.metadata_), JSONB)
    return document[bindparam(f"mk{i}", key)] == cast(bindparam(f"mv{i}", json.dumps(value)), JSONB)


@dataclass(frozen=True, slots=True)
class ScopeSql:
    """A scope as a subquery of document ids, used inside the index's statements."""

    scope: Scope

    @property
    def empty(self) -> bool:
        return self.scope.nothing


class PostgresIndex:
    async def put(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        title: str | None,
        chunks: Sequence[IndexedChunk],
    ) -> None:
        # The vectors are the chunk rows' own column, which the HNSW index follows.
        if not chunks:
            return
        title_words = word_count(title or "")
        await session.execute(
            text(
                "INSERT INTO chunk_terms (chunk_id, user_id, terms, length) VALUES"
                f" (:c, :u, to_tsvector('{TS_CONFIG}', :title || ' ' || :t), :n)"
            ),
            [
                {
                    "c": c.id,
                    "u": user_id,
                    "title": title or "",
                    "t": c.text,
                    "n": title_words + word_count(c.text),
                }
                for c in chunks
            ],
        )

    async def put_many(
        self, session: AsyncSession, *, user_id: int, docs: Sequence[TitledChunks]
    ) -> None:
        for title, chunks in docs:
            await self.put(session, user_id=user_id, title=title, chunks=chunks)

    async def retitle(
        self, session: AsyncSession, *, title: str | None, chunk_ids: Sequence[int]
    ) -> None:
        if not chunk_ids:
            return
        rows = (
            await session.execute(
                text("SELECT id, text FROM chunks WHERE id = ANY(:ids)"),
                {"ids": list(chunk_ids)},
            )
        ).all()
        title_words = word_count(title or "")
        await session.execute(
            text(
                f"UPDATE chunk_terms SET terms = to_tsvector('{TS_CONFIG}', :title || ' ' || :t),"
                " length = :n WHERE chunk_id = :c"
            ),
            [
                {"c": cid, "title": title or "", "t": body, "n": title_words + word_count(body)}
                for cid, body in rows
            ],
        )

    async def delete(self, session: AsyncSession, chunk_ids: Sequence[int]) -> None:
        pass  # chunk_terms rows go with their chunks (ON DELETE CASCADE), vectors are columns

    async def restrict(self, session: AsyncSession, scope: Scope) -> ScopeSql | None:
        return None if scope.everything else ScopeSql(scope)

    async def semantic(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        vector: np.ndarray,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        scope = _scope(within)
        n = max(CANDIDATES_MIN, CANDIDATES_PER_DOC * depth)
        while True:
            await session.execute(
                text(
                    "SELECT set_config('hnsw.ef_search', :ef, true),"
                    " set_config('hnsw.iterative_scan', 'relaxed_order', true)"
                ),
                {"ef": str(min(n, _EF_SEARCH_MAX))},
            )
            rows = (
                await session.execute(
                    _scoped(
                        "SELECT c.id, c.doc_id, c.embedding <=> :q AS d FROM chunks AS c"
                        " WHERE c.user_id = :u {scope} ORDER BY c.embedding <=> :q LIMIT :n",
                        scope,
                        "c.doc_id",
                        ("id", "doc_id", "d"),
                    ),
                    {"q": np.asarray(vector, dtype=np.float32), "u": user_id, "n": n},
                )
            ).all()
            ranked = collapse([(int(c), str(doc), float(d)) for c, doc, d in rows], depth)
            if len(ranked) >= depth or len(rows) < n:
                return ranked
            n *= 4

    async def keyword(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        query: str,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        words = query_words(query)[:MAX_QUERY_TERMS]
        if not words:
            return []
        scope = _scope(within)
        rows = await session.execute(
            _scoped(
                # The query's lexemes (stemmed, stopwords gone), each with its BM25 weight over
                # the user's chunks; then every matching chunk of the user scored, the best
                # chunk of each document kept.
                "WITH lexemes AS ("
                f"  SELECT DISTINCT lexeme FROM unnest(to_tsvector('{TS_CONFIG}', :words))"
                "), stats AS ("
                "  SELECT count(*)::float8 AS n, coalesce(avg(length), 1)::float8 AS mean"
                "  FROM chunk_terms WHERE user_id = :u"
                "), weights AS ("
                "  SELECT l.lexeme, greatest(ln((s.n - f.n + 0.5) / (f.n + 0.5)), 1e-6) AS idf"
                "  FROM lexemes AS l CROSS JOIN stats AS s CROSS JOIN LATERAL ("
                "    SELECT count(*)::float8 AS n FROM chunk_terms AS t"
                "    WHERE t.user_id = :u AND t.terms @@ quote_literal(l.lexeme)::tsquery) AS f"
                "), matched AS ("
                "  SELECT t.chunk_id, t.terms, t.length, c.doc_id"
                "  FROM chunk_terms AS t JOIN chunks AS c ON c.id = t.chunk_id"
                "  WHERE t.user_id = :u AND t.terms @@ ("
                "    SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery FROM lexemes)"
                "  {scope}"
                "), scored AS ("
                "  SELECT m.doc_id, m.chunk_id, sum(w.idf * (cardinality(e.positions) * :k1p1)"
                "    / (cardinality(e.positions) + :k1 * (1 - :b + :b * m.length / s.mean)))"
                "    AS score"
                "  FROM matched AS m CROSS JOIN stats AS s"
                "  CROSS JOIN LATERAL unnest(m.terms) AS e"
                "  JOIN weights AS w ON w.lexeme = e.lexeme"
                "  GROUP BY m.doc_id, m.chunk_id"
                "), best AS ("
                "  SELECT DISTINCT ON (doc_id) doc_id, chunk_id, score FROM scored"
                "  ORDER BY doc_id, score DESC, chunk_id"
                ")"
                " SELECT doc_id, chunk_id, score FROM best"
                " ORDER BY score DESC, chunk_id LIMIT :n",
                scope,
                "c.doc_id",
                ("doc_id", "chunk_id", "score"),
            ),
            {"words": " ".join(words), "u": user_id, "n": depth, "k1": K1, "k1p1": K1 + 1, "b": B},
        )
        # Sorted here: a scoped statement is wrapped in a SELECT that need not keep the order.
        ranked = sorted(
            ((float(s), int(c), str(d)) for d, c, s in rows), key=lambda r: (-r[0], r[1])
        )
        return [Ranked(doc, cid, score) for score, cid, doc in ranked]

    async def count(self, session: AsyncSession, *, user_id: int) -> int:
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM chunks WHERE user_id = :u"), {"u": user_id}
                )
            ).scalar_one()
        )


def _scope(within: Restriction | None) -> Scope | None:
    if within is None:
        return None
    assert isinstance(within, ScopeSql)
    return within.scope


def _scoped(sql: str, scope: Scope | None, doc_column: str, columns: Sequence[str]) -> Any:
    """`sql` with `{scope}` replaced by a condition that `doc_column` is one of the scope's
    documents; the scope's query renders as a CTE named `scope_docs` in front."""
    if scope is None:
        return text(sql.replace("{scope}", ""))
    statement = text(sql.replace("{scope}", f"AND {doc_column} IN (SELECT id FROM scope_docs)"))
    docs = select(col(KnowledgeDoc.id)).where(*scope.conditions(metadata_condition))
    inner = statement.columns(*(column(c) for c in columns)).subquery("r")
    return select(*(inner.c[c] for c in columns)).add_cte(docs.cte("scope_docs"))
