"""PostgreSQL's answers to the reads of `keywords.rank`: the tables of `keywords`, kept by
statement-level triggers on `chunk_terms` (revisions 0003, 0011, 0013).

A search's first read is one statement: the user's statistics, the query terms' document
frequencies, each term's best postings (a LATERAL range of the impact index per term) and the
user's `vector_versions` row, which a hybrid search's semantic half then needs no round trip
for. The chunks' documents are a second; a cut list's lookups (`keywords.Lookup`) a third.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.index import keywords as kw
from app.storage.index.keywords import IMPACT_SQL

#: The impact index (revision 0013): a term's postings best first, their counts included.
IMPACT_INDEX = (
    "CREATE INDEX ix_chunk_postings_impact"
    " ON chunk_postings (user_id, term, impact DESC, chunk_id) INCLUDE (tf, length)"
)

#: What keeps the derived tables in step row by row, off for a bulk load (the writer alone),
#: and the derived tables refilled from `chunk_terms` after it, in key order, the impact index
#: built once over them, the triggers on again.
DERIVATIONS = (
    "ALTER TABLE chunk_terms DISABLE TRIGGER USER",
    "DROP INDEX IF EXISTS ix_chunk_postings_impact",
)
DERIVE = (
    "TRUNCATE chunk_postings, keyword_df, keyword_stats",
    "INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length, impact)"
    f" SELECT user_id, term, chunk_id, tf, length, {IMPACT_SQL} FROM ("
    "  SELECT t.user_id, e.term, t.chunk_id, count(*) AS tf, t.length"
    "  FROM chunk_terms AS t CROSS JOIN LATERAL unnest(t.terms) AS e(term)"
    "  GROUP BY t.user_id, e.term, t.chunk_id, t.length) AS x"
    " ORDER BY user_id, term, chunk_id",
    "INSERT INTO keyword_df (user_id, term, df)"
    " SELECT user_id, term, count(*) FROM chunk_postings GROUP BY user_id, term",
    "INSERT INTO keyword_stats (user_id, chunks, words)"
    " SELECT user_id, count(*), sum(length) FROM chunk_terms GROUP BY user_id",
    IMPACT_INDEX,
    "ALTER TABLE chunk_terms ENABLE TRIGGER USER",
    "ANALYZE chunk_postings",
    "ANALYZE keyword_df",
)

#: The best `:limit` postings of the term `t.term` (impact descending, then chunk id).
_BEST_OF_TERM = (
    "SELECT chunk_id, tf, length FROM chunk_postings"
    " WHERE user_id = :u AND term = t.term ORDER BY impact DESC, chunk_id LIMIT :limit"
)

# Rows of three kinds (the first column): 0 the statistics and version, 1 a term's document
# frequency, 2 a posting. `:limit` 0 reads no postings.
_START = text(
    "WITH t AS (SELECT unnest(CAST(:terms AS text[])) AS term)"
    " SELECT 0 AS kind, NULL AS term,"
    "  coalesce((SELECT chunks FROM keyword_stats WHERE user_id = :u), 0) AS a,"
    "  coalesce((SELECT words FROM keyword_stats WHERE user_id = :u), 0) AS b,"
    "  (SELECT version FROM vector_versions WHERE user_id = :u) AS c"
    " UNION ALL"
    " SELECT 1, d.term, d.df, NULL, NULL FROM keyword_df AS d"
    "  WHERE d.user_id = :u AND d.term IN (SELECT term FROM t)"
    " UNION ALL"
    f" SELECT 2, t.term, p.chunk_id, p.tf, p.length FROM t CROSS JOIN LATERAL ({_BEST_OF_TERM}) AS p"
)

_BEST = text(
    "SELECT t.term, p.chunk_id, p.tf, p.length"
    f" FROM unnest(CAST(:terms AS text[])) AS t(term) CROSS JOIN LATERAL ({_BEST_OF_TERM}) AS p"
)

_LOOKUP = text(
    "SELECT term, chunk_id, tf, length FROM chunk_postings"
    " WHERE user_id = :u AND term = ANY(CAST(:terms AS text[]))"
    " AND chunk_id = ANY(CAST(:ids AS bigint[]))"
)

_DOCS = text("SELECT id, doc_id FROM chunks WHERE id = ANY(CAST(:ids AS bigint[]))")


async def start(
    session: AsyncSession, user_id: int, step: kw.Start
) -> tuple[kw.Statistics, list[kw.Posting], int | None]:
    """The answer to `step` and the user's vector version."""
    rows = (
        await session.execute(_START, {"terms": step.terms, "u": user_id, "limit": step.limit or 0})
    ).all()
    df: dict[str, int] = {}
    postings: list[kw.Posting] = []
    chunks = words = 0
    version: int | None = None
    for kind, term, a, b, c in rows:
        if kind == 0:
            chunks, words, version = int(a), int(b), c
        elif kind == 1:
            df[term] = int(a)
        else:
            postings.append((term, int(a), int(b), int(c)))
    return kw.Statistics(chunks, words, df), postings, version


async def answer(session: AsyncSession, user_id: int, step: kw.Step) -> Any:
    """The answer to a read other than `Start`."""
    if isinstance(step, kw.Best):
        rows = await session.execute(
            _BEST, {"terms": step.terms, "u": user_id, "limit": step.limit}
        )
    elif isinstance(step, kw.Lookup):
        rows = await session.execute(
            _LOOKUP, {"terms": step.terms, "ids": step.chunk_ids, "u": user_id}
        )
    else:
        assert isinstance(step, kw.Docs)
        found: dict[int, str] = {
            int(c): str(d) for c, d in await session.execute(_DOCS, {"ids": step.chunk_ids})
        }
        return [found.get(i) for i in step.chunk_ids]
    return [(str(t), int(c), int(f), int(n)) for t, c, f, n in rows]
