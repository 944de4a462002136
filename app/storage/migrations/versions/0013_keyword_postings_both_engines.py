"""Both engines keep the same per-user keyword postings, read best first.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Before, SQLite ranked keywords with FTS5, whose BM25 statistics (the number of rows, each
term's document frequency, the mean length) are those of the whole table, every user's rows
together: one tenant's documents moved another's scores, and the two engines agreed only when
one user had documents. Both engines now hold what app/storage/index/keywords.py describes:

- `chunk_terms` (new on SQLite, where `chunk_fts` is dropped): a chunk's terms and their count;
- `chunk_postings`, `keyword_stats` (new on SQLite) and `keyword_df` (new on both): derived
  from `chunk_terms` by triggers; the postings gain their `impact` and an index that reads a
  term's postings best first.

A chunk's length is now its number of terms on both engines (PostgreSQL's counted FTS5's
`owner` token too). SQLite's terms are made again from the chunks and their documents' titles
(nothing is re-embedded); PostgreSQL derives everything from the `chunk_terms` it has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

from app.storage.index import postgres_keywords
from app.storage.index.keywords import IMPACT_SQL
from app.storage.index.sqlite_keywords import DERIVE, IMPACT_INDEX, TABLES, TRIGGERS
from app.storage.index.words import terms

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: Chunks read, and written back, per statement.
_BATCH = 2000

#: The postings, totals and document frequencies of the rows in `added` (a transition table).
#: The totals' row first, then the document frequencies in key order, as `_REMOVE` takes them:
#: two writers of one user never wait on each other's rows crosswise (and one user's writers
#: are serialized anyway, app/storage/database.py).
_ADD = f"""
CREATE OR REPLACE FUNCTION keyword_postings_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length, impact)
        SELECT user_id, term, chunk_id, tf, length, {IMPACT_SQL.replace("'", "''")} FROM (
            SELECT a.user_id, e.term, a.chunk_id, count(*) AS tf, a.length
            FROM added AS a CROSS JOIN LATERAL unnest(a.terms) AS e(term)
            GROUP BY a.user_id, e.term, a.chunk_id, a.length) AS x';
    EXECUTE 'INSERT INTO keyword_stats AS s (user_id, chunks, words)
        SELECT user_id, count(*), sum(length) FROM added GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE
        SET chunks = s.chunks + excluded.chunks, words = s.words + excluded.words';
    EXECUTE 'INSERT INTO keyword_df AS k (user_id, term, df)
        SELECT a.user_id, e.term, count(*)
        FROM added AS a CROSS JOIN LATERAL (SELECT DISTINCT unnest(a.terms)) AS e(term)
        GROUP BY a.user_id, e.term ORDER BY a.user_id, e.term
        ON CONFLICT (user_id, term) DO UPDATE SET df = k.df + excluded.df';
    RETURN NULL;
END
$$
"""

#: As revision 0011's, with the document frequencies.
_REMOVE = """
CREATE OR REPLACE FUNCTION keyword_postings_remove() RETURNS trigger LANGUAGE plpgsql AS $$
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
        EXECUTE 'DELETE FROM keyword_df WHERE user_id = ANY($1)' USING emptied;
        EXECUTE 'DELETE FROM keyword_stats WHERE user_id = ANY($1)' USING emptied;
    END IF;
    EXECUTE 'DELETE FROM chunk_postings AS p
        USING removed AS r CROSS JOIN LATERAL unnest(r.terms) AS e(term)
        WHERE p.user_id = r.user_id AND p.term = e.term AND p.chunk_id = r.chunk_id
        AND r.user_id <> ALL($1)' USING emptied;
    EXECUTE 'UPDATE keyword_df AS k SET df = k.df - d.n FROM (
            SELECT r.user_id, e.term, count(*) AS n
            FROM removed AS r CROSS JOIN LATERAL (SELECT DISTINCT unnest(r.terms)) AS e(term)
            WHERE r.user_id <> ALL($1)
            GROUP BY r.user_id, e.term ORDER BY r.user_id, e.term) AS d
        WHERE k.user_id = d.user_id AND k.term = d.term' USING emptied;
    EXECUTE 'DELETE FROM keyword_df AS k USING (
            SELECT DISTINCT r.user_id, e.term
            FROM removed AS r CROSS JOIN LATERAL unnest(r.terms) AS e(term)) AS d
        WHERE k.user_id = d.user_id AND k.term = d.term AND k.df <= 0';
    RETURN NULL;
END
$$
"""

_EMPTY = """
CREATE OR REPLACE FUNCTION keyword_postings_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE chunk_postings, keyword_df, keyword_stats;
    RETURN NULL;
END
$$
"""


def _chunks(conn: sa.Connection) -> Iterator[list[tuple[int, int, list[str]]]]:
    """Every chunk as (id, user id, its terms: its document's title's, then its text's), a
    batch at a time, in id order."""
    after = -1
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT c.id, c.user_id, d.title, c.text FROM chunks AS c"
                " JOIN knowledge_docs AS d ON d.id = c.doc_id"
                " WHERE c.id > :after ORDER BY c.id LIMIT :n"
            ),
            {"after": after, "n": _BATCH},
        ).all()
        if not rows:
            return
        yield [(cid, uid, terms(title or "") + terms(body)) for cid, uid, title, body in rows]
        after = rows[-1][0]


def _sqlite(conn: sa.Connection) -> None:
    op.execute("DROP TABLE chunk_fts")
    for statement in TABLES:
        op.execute(statement)
    # Filled before the triggers and the second index exist, then derived in bulk: a row at a
    # time through the triggers takes several times longer.
    for batch in _chunks(conn):
        conn.execute(
            sa.text(
                "INSERT INTO chunk_terms (chunk_id, user_id, terms, length) VALUES (:c, :u, :t, :n)"
            ),
            [{"c": c, "u": u, "t": json.dumps(found), "n": len(found)} for c, u, found in batch],
        )
    for statement in DERIVE:
        op.execute(statement)
    op.execute(IMPACT_INDEX)
    for statement in TRIGGERS:
        op.execute(statement)


def _postgres() -> None:
    op.execute(
        "CREATE TABLE keyword_df ("
        " user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,"
        " term TEXT NOT NULL, df INTEGER NOT NULL, PRIMARY KEY (user_id, term))"
    )
    op.execute(_ADD)
    op.execute(_REMOVE)
    op.execute(_EMPTY)
    # As revision 0011: the derived tables emptied, refilled without the triggers, their keys
    # built once over the rows.
    op.execute("ALTER TABLE chunk_terms DISABLE TRIGGER USER")
    op.execute("TRUNCATE chunk_postings, keyword_stats")
    op.execute("UPDATE chunk_terms SET length = cardinality(terms)")
    op.execute("ALTER TABLE chunk_postings DROP CONSTRAINT chunk_postings_pkey")
    op.execute("ALTER TABLE chunk_postings ADD COLUMN impact DOUBLE PRECISION NOT NULL")
    op.execute(
        "INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length, impact)"
        f" SELECT user_id, term, chunk_id, tf, length, {IMPACT_SQL} FROM ("
        "  SELECT t.user_id, e.term, t.chunk_id, count(*) AS tf, t.length"
        "  FROM chunk_terms AS t CROSS JOIN LATERAL unnest(t.terms) AS e(term)"
        "  GROUP BY t.user_id, e.term, t.chunk_id, t.length) AS x"
    )
    op.execute(
        "ALTER TABLE chunk_postings ADD CONSTRAINT chunk_postings_pkey"
        " PRIMARY KEY (user_id, term, chunk_id) INCLUDE (tf, length)"
    )
    op.execute(postgres_keywords.IMPACT_INDEX)
    op.execute(
        "INSERT INTO keyword_df (user_id, term, df)"
        " SELECT user_id, term, count(*) FROM chunk_postings GROUP BY user_id, term"
    )
    op.execute(
        "INSERT INTO keyword_stats (user_id, chunks, words)"
        " SELECT user_id, count(*), sum(length) FROM chunk_terms GROUP BY user_id"
    )
    op.execute("ALTER TABLE chunk_terms ENABLE TRIGGER USER")
    op.execute("ANALYZE chunk_terms")
    op.execute("ANALYZE chunk_postings")
    op.execute("ANALYZE keyword_df")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        _postgres()
    else:
        _sqlite(conn)


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
