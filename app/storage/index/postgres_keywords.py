"""PostgreSQL's keyword ranking: BM25 as SQLite's FTS5 computes it, read from per-user postings.

The score is FTS5's formula and constants (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) /
(n + 0.5)), 1e-6 where that is not positive, tf the term's count in the chunk, a chunk's length
its number of terms plus the one token of FTS5's `owner` column, which FTS5 counts too), over
the same terms (`words.terms`, revision 0011), with N, n and the mean length taken over the
user's own chunks: the fused hybrid ranking then means the same on
both engines, and one tenant's statistics never leak into another's scores (a scope restricts
the matches, not the statistics). PostgreSQL's own `ts_rank` has no inverse document frequency.

What is read (tables of revision 0003, kept in step with `chunk_terms` by triggers):

- the query's terms (`words.query_terms`), each once;
- `keyword_stats`: N and the total length, one row per user;
- `chunk_postings`: per (user, term) the chunks holding the term with tf and the chunk's length,
  all in the primary key, so each lexeme's postings are one index-only range scan; n is its
  length.

Only the best `:n` chunks are joined to `chunks` for their documents (the caller collapses them
to documents and asks again, deeper, while they hold too few). Measured at 100,000 chunks of one
user, three words each in 3-17% of the chunks (~25,000 postings): ~2 s when this was an
`unnest` of every matching chunk's tsvector behind a GIN match, ~20 ms reading postings.

A scope (`scope_docs`, rendered in front by the caller) is applied one of two ways, chosen
inside the statement once the sizes are known, because the planner cannot know them (a lexeme
has one posting or 25,000; a scope is 3 chunks or a quarter of the account): a small scope's
chunks are looked up one by one under each lexeme's key, a large scope is hash-joined with all
of the lexemes' postings. Measured at 100,000 chunks, three frequent words: a persona of 3
documents ~1 ms of lookups (the hash join: ~30 ms), a quarter of the documents ~30 ms hashed
(the lookups: ~330 ms), besides finding the scope's chunks.
"""

from __future__ import annotations

#: BM25 constants, as FTS5's.
K1 = 1.2
B = 0.75
#: What FTS5 counts in a row's length besides its terms: the `owner` column's one token
#: (app/storage/index/sqlite_keywords.py). Counted here too, so the lengths are equal.
OWNER_TOKENS = 1
#: The first pass of a keyword search reads this many best chunks per wanted document.
CHUNKS_PER_DOC = 4
#: A scope's chunks are looked up lexeme by lexeme while there are at most 1/PROBE_COST as
#: many lookups as postings to read otherwise (a probe costs ~3 us, a posting read and hashed
#: ~0.7 us, measured at 100,000 chunks).
PROBE_COST = 4

# The mean length is a division of doubles, as FTS5's. MATERIALIZED keeps
# each lexeme's count to one run (inlined, the planner may repeat it per scope chunk).
_HEAD = (
    "WITH lexemes AS ("
    "  SELECT lexeme FROM unnest(CAST(:terms AS text[])) AS t(lexeme)"
    "), stats AS ("
    "  SELECT chunks::float8 AS n, words::float8 / chunks AS mean"
    "  FROM keyword_stats WHERE user_id = :u AND chunks > 0"
    "), weights AS MATERIALIZED ("
    "  SELECT l.lexeme, f.n AS df, CASE WHEN ln((s.n - f.n + 0.5) / (f.n + 0.5)) > 0"
    "    THEN ln((s.n - f.n + 0.5) / (f.n + 0.5)) ELSE 1e-6 END AS idf"
    "  FROM lexemes AS l CROSS JOIN stats AS s CROSS JOIN LATERAL ("
    "    SELECT count(*)::float8 AS n FROM chunk_postings AS p"
    "    WHERE p.user_id = :u AND p.term = l.lexeme) AS f"
    ")"
)

_EVERY_MATCH = (
    "SELECT p.chunk_id, w.idf, p.tf, p.length FROM weights AS w"
    " JOIN chunk_postings AS p ON p.user_id = :u AND p.term = w.lexeme"
)

# The two ways are the two arms of a UNION ALL, each behind a one-time filter, so only one
# runs. The probing arm's LIMIT 1 (a key is unique anyway) keeps the lookup a lookup: the
# planner would otherwise flatten it into a join it may well choose to hash.
_SCOPED_MATCHES = (
    ", scope_chunks AS MATERIALIZED ("
    "  SELECT s.id FROM chunks AS s WHERE s.doc_id IN (SELECT id FROM scope_docs)"
    "), probing AS MATERIALIZED ("
    "  SELECT (SELECT count(*) FROM scope_chunks) * (SELECT count(*) FROM weights) * :probe_cost"
    "    <= (SELECT coalesce(sum(df), 0) FROM weights) AS yes"
    f"), every_match AS MATERIALIZED ({_EVERY_MATCH}"
    "), matches AS ("
    "  SELECT sc.id AS chunk_id, w.idf, p.tf, p.length"
    "  FROM weights AS w CROSS JOIN scope_chunks AS sc CROSS JOIN LATERAL ("
    "    SELECT p.tf, p.length FROM chunk_postings AS p"
    "    WHERE p.user_id = :u AND p.term = w.lexeme AND p.chunk_id = sc.id LIMIT 1) AS p"
    "  WHERE (SELECT yes FROM probing)"
    "  UNION ALL"
    "  SELECT m.chunk_id, m.idf, m.tf, m.length"
    "  FROM every_match AS m JOIN scope_chunks AS sc ON sc.id = m.chunk_id"
    "  WHERE NOT (SELECT yes FROM probing)"
    ")"
)

# The constants are cast: a bare parameter takes its type from the column beside it, and
# asyncpg then sends 2.2 as the smallint 2 and 0.75 as the integer 0 (no length normalization).
_TAIL = (
    ", best AS ("
    "  SELECT m.chunk_id, sum(m.idf * (m.tf * CAST(:k1p1 AS float8))"
    "    / (m.tf + CAST(:k1 AS float8)"
    "      * (1 - CAST(:b AS float8) + CAST(:b AS float8) * m.length / s.mean))) AS score"
    "  FROM matches AS m CROSS JOIN stats AS s"
    "  GROUP BY m.chunk_id ORDER BY score DESC, m.chunk_id LIMIT :n"
    ")"
    " SELECT c.doc_id, b.chunk_id, b.score,"
    "  (SELECT version FROM vector_versions WHERE user_id = :u) AS version"
    " FROM best AS b JOIN chunks AS c ON c.id = b.chunk_id"
)

#: The user's `:n` best chunks for `:terms`: (doc_id, chunk_id, score, version) rows; `version`
#: is the user's `vector_versions` row (postgres_vectors.py), read here so that a hybrid search
#: needs no round trip of its own for it.
UNSCOPED = f"{_HEAD}, matches AS ({_EVERY_MATCH}){_TAIL}"
#: The same within the documents of `scope_docs`.
SCOPED = f"{_HEAD}{_SCOPED_MATCHES}{_TAIL}"


def length(terms: int) -> int:
    """A chunk's length for BM25, as FTS5 counts it, from its number of terms."""
    return terms + OWNER_TOKENS


def parameters(terms: list[str], user_id: int) -> dict[str, object]:
    return {
        "terms": terms,
        "u": user_id,
        "k1": K1,
        "k1p1": K1 + 1,
        "b": B,
        "probe_cost": PROBE_COST,
    }
