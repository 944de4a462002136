"""PostgreSQL keyword search reads postings, not every matching chunk's tsvector.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

BM25 in SQL over `chunk_terms` (a GIN match, then `unnest` of every matching row's tsvector to
find the query's terms and their counts, and a count over all of the user's rows for N and the
mean length) took ~2 s for a query of frequent words at 100,000 chunks of one user: ~25,000
rows fetched from the heap and 1.4 million lexemes unnested. This revision adds what FTS5 keeps
for the same job:

- `chunk_postings`: a row per (user, term, chunk) with the term's count in the chunk and the
  chunk's length; its primary key carries both, so a query reads the postings of its own terms
  with an index-only scan and never touches a tsvector;
- `keyword_stats`: per user, the number of indexed chunks and their total length in words (BM25's
  N and mean length) in one row instead of a count over the user's chunks.

Both are derived from `chunk_terms` by statement-level triggers (inserts, deletes, updates), so
every path that changes `chunk_terms` keeps them in step, a cascaded delete included; existing
rows are back-filled here. `chunk_terms` stays the record (the index's write path is unchanged
and a chunk's terms are what its postings are deleted by); its GIN index had no other reader and
goes. SQLite is untouched (FTS5 keeps its own postings).

The trigger bodies run their statements through EXECUTE: planned for each call with the
transition table's real size (a one-document delete and a whole account's are different plans),
never a plan cached from an earlier call of another size.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Postings of the rows in `added` (a transition table) and their totals per user.
_ADD = """
CREATE FUNCTION keyword_postings_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length)
        SELECT a.user_id, e.lexeme, a.chunk_id, cardinality(e.positions), a.length
        FROM added AS a CROSS JOIN LATERAL unnest(a.terms) AS e';
    EXECUTE 'INSERT INTO keyword_stats AS s (user_id, chunks, words)
        SELECT user_id, count(*), sum(length) FROM added GROUP BY user_id
        ON CONFLICT (user_id) DO UPDATE
        SET chunks = s.chunks + excluded.chunks, words = s.words + excluded.words';
    RETURN NULL;
END
$$
"""
#: The postings of the rows in `removed`, and their totals per user. A user left without chunks
#: (an account deleted, its only document replaced) loses all of its postings as one range of
#: the key, much faster than looking each one up by its term; other users' postings are found
#: by their chunks' terms through the key.
_REMOVE = """
CREATE FUNCTION keyword_postings_remove() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    emptied integer[];
BEGIN
    EXECUTE 'WITH d AS (
            SELECT user_id, count(*) AS chunks, sum(length) AS words FROM removed GROUP BY user_id
        ), s AS (
            UPDATE keyword_stats AS s SET chunks = s.chunks - d.chunks, words = s.words - d.words
            FROM d WHERE s.user_id = d.user_id RETURNING s.user_id, s.chunks
        )
        SELECT coalesce(array_agg(user_id) FILTER (WHERE chunks <= 0), ''{}'') FROM s'
        INTO emptied;
    IF cardinality(emptied) > 0 THEN
        EXECUTE 'DELETE FROM chunk_postings WHERE user_id = ANY($1)' USING emptied;
        EXECUTE 'DELETE FROM keyword_stats WHERE user_id = ANY($1)' USING emptied;
    END IF;
    EXECUTE 'DELETE FROM chunk_postings AS p
        USING removed AS r CROSS JOIN LATERAL unnest(r.terms) AS e
        WHERE p.user_id = r.user_id AND p.term = e.lexeme AND p.chunk_id = r.chunk_id
        AND r.user_id <> ALL($1)' USING emptied;
    RETURN NULL;
END
$$
"""
#: TRUNCATE fires no delete trigger: what is derived from chunk_terms goes with it.
_EMPTY = """
CREATE FUNCTION keyword_postings_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE chunk_postings, keyword_stats;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Column order packs the heap row (8-byte id first, the text last).
    op.execute(
        """CREATE TABLE chunk_postings (
        chunk_id BIGINT NOT NULL,
        user_id INTEGER NOT NULL,
        length INTEGER NOT NULL,
        tf SMALLINT NOT NULL,
        term TEXT NOT NULL
    )"""
    )
    op.execute(
        """CREATE TABLE keyword_stats (
        user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        chunks BIGINT NOT NULL,
        words BIGINT NOT NULL
    )"""
    )
    op.execute(_ADD)
    op.execute(_REMOVE)
    op.execute(_EMPTY)
    # Created before the back-fill: their lock on chunk_terms holds off writers (of servers not
    # yet upgraded) until this commits, so no row is missed or counted twice. An update is a
    # removal then an addition: triggers fire in name order.
    for name, event, table, function in (
        ("keyword_postings_1_insert", "INSERT", "NEW TABLE AS added", "add"),
        ("keyword_postings_1_delete", "DELETE", "OLD TABLE AS removed", "remove"),
        ("keyword_postings_1_update", "UPDATE", "OLD TABLE AS removed", "remove"),
        ("keyword_postings_2_update", "UPDATE", "NEW TABLE AS added", "add"),
    ):
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON chunk_terms REFERENCING {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION keyword_postings_{function}()"
        )
    op.execute(
        "CREATE TRIGGER keyword_postings_1_truncate AFTER TRUNCATE ON chunk_terms"
        " FOR EACH STATEMENT EXECUTE FUNCTION keyword_postings_empty()"
    )
    op.execute(
        "INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length)"
        " SELECT t.user_id, e.lexeme, t.chunk_id, cardinality(e.positions), t.length"
        " FROM chunk_terms AS t CROSS JOIN LATERAL unnest(t.terms) AS e"
    )
    # The key is built once over the back-filled rows (faster than row by row). It carries the
    # counts so that a query's postings are read from the index alone.
    op.execute(
        "ALTER TABLE chunk_postings ADD CONSTRAINT chunk_postings_pkey"
        " PRIMARY KEY (user_id, term, chunk_id) INCLUDE (tf, length)"
    )
    op.execute(
        "INSERT INTO keyword_stats (user_id, chunks, words)"
        " SELECT user_id, count(*), sum(length) FROM chunk_terms GROUP BY user_id"
    )
    op.execute("DROP INDEX ix_chunk_terms_terms")
    op.execute("ANALYZE chunk_postings")


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
