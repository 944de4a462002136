"""Both engines' keyword indexes hold the same terms, made in Python (`words.terms`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Before, SQLite's FTS5 tokenized and stemmed with `porter unicode61` and PostgreSQL with its
`english` configuration (another stemmer, stopwords dropped, other word boundaries), so the same
data ranked differently on the two engines. Now the index terms come from one definition in
Python (app/storage/index/words.py) and both engines store them:

- SQLite: `chunk_fts` is made anew with the `ascii` tokenizer, which keeps each of those terms
  whole (they are written space-separated), and filled from the chunks and their documents'
  titles;
- PostgreSQL: `chunk_terms.terms` becomes a `text[]` of the terms (a tsvector has room for at
  most 256 positions of a term and would stem again), its length counts them as FTS5 does (plus
  the `owner` column's token), the postings triggers count a term's repeats in the array, and
  the postings and statistics are derived anew.

Nothing is re-embedded: only text is read. The terms are made with this release's definition.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

from app.storage.index.words import terms

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: What FTS5 counted in a row's length besides its terms, the `owner` column's one token:
#: PostgreSQL's lengths counted it too at this revision (revision 0013 drops it with FTS5).
_OWNER_TOKENS = 1

#: Chunks read, and written back, per statement.
_BATCH = 2000

#: Postings of the rows in `added` (a transition table) and their totals per user.
_ADD = """
CREATE OR REPLACE FUNCTION keyword_postings_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length)
        SELECT a.user_id, e.term, a.chunk_id, count(*), a.length
        FROM added AS a CROSS JOIN LATERAL unnest(a.terms) AS e(term)
        GROUP BY a.user_id, e.term, a.chunk_id, a.length';
    EXECUTE 'INSERT INTO keyword_stats AS s (user_id, chunks, words)
        SELECT user_id, count(*), sum(length) FROM added GROUP BY user_id
        ON CONFLICT (user_id) DO UPDATE
        SET chunks = s.chunks + excluded.chunks, words = s.words + excluded.words';
    RETURN NULL;
END
$$
"""
#: As revision 0003's, the terms read from the array (a term's repeats match the same posting).
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
        EXECUTE 'DELETE FROM keyword_stats WHERE user_id = ANY($1)' USING emptied;
    END IF;
    EXECUTE 'DELETE FROM chunk_postings AS p
        USING removed AS r CROSS JOIN LATERAL unnest(r.terms) AS e(term)
        WHERE p.user_id = r.user_id AND p.term = e.term AND p.chunk_id = r.chunk_id
        AND r.user_id <> ALL($1)' USING emptied;
    RETURN NULL;
END
$$
"""


def _chunks(conn: sa.Connection) -> Iterator[list[tuple[int, int, list[str], list[str]]]]:
    """Every chunk as (id, user id, terms of its document's title, terms of its text), a batch
    at a time, in id order."""
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
        yield [(cid, uid, terms(title or ""), terms(body)) for cid, uid, title, body in rows]
        after = rows[-1][0]


def _sqlite(conn: sa.Connection) -> None:
    op.execute("DROP TABLE chunk_fts")
    op.execute("CREATE VIRTUAL TABLE chunk_fts USING fts5(owner, title, text, tokenize='ascii')")
    for batch in _chunks(conn):
        conn.execute(
            sa.text("INSERT INTO chunk_fts(rowid, owner, title, text) VALUES (:c, :o, :ti, :t)"),
            [
                {"c": cid, "o": f"u{uid}", "ti": " ".join(title), "t": " ".join(body)}
                for cid, uid, title, body in batch
            ],
        )


def _postgres(conn: sa.Connection) -> None:
    op.execute(_ADD)
    op.execute(_REMOVE)
    # Emptied, then refilled without the triggers, the postings derived once at the end with
    # their key built over them (as revision 0003 did: faster than row by row).
    op.execute("ALTER TABLE chunk_terms DISABLE TRIGGER USER")
    op.execute("TRUNCATE chunk_terms, chunk_postings, keyword_stats")
    op.execute("ALTER TABLE chunk_terms ALTER COLUMN terms TYPE text[] USING '{}'::text[]")
    for batch in _chunks(conn):
        conn.execute(
            sa.text(
                "INSERT INTO chunk_terms (chunk_id, user_id, terms, length)"
                " SELECT x.c, x.u, string_to_array(x.t, ' '), x.n"
                " FROM unnest(CAST(:c AS bigint[]), CAST(:u AS integer[]), CAST(:t AS text[]),"
                " CAST(:n AS integer[])) AS x(c, u, t, n)"
            ),
            {
                "c": [cid for cid, *_ in batch],
                "u": [uid for _, uid, *_ in batch],
                "t": [" ".join(title + body) for _, _, title, body in batch],
                "n": [len(title) + len(body) + _OWNER_TOKENS for _, _, title, body in batch],
            },
        )
    op.execute("ALTER TABLE chunk_postings DROP CONSTRAINT chunk_postings_pkey")
    op.execute(
        "INSERT INTO chunk_postings (user_id, term, chunk_id, tf, length)"
        " SELECT t.user_id, e.term, t.chunk_id, count(*), t.length"
        " FROM chunk_terms AS t CROSS JOIN LATERAL unnest(t.terms) AS e(term)"
        " GROUP BY t.user_id, e.term, t.chunk_id, t.length"
    )
    op.execute(
        "ALTER TABLE chunk_postings ADD CONSTRAINT chunk_postings_pkey"
        " PRIMARY KEY (user_id, term, chunk_id) INCLUDE (tf, length)"
    )
    op.execute(
        "INSERT INTO keyword_stats (user_id, chunks, words)"
        " SELECT user_id, count(*), sum(length) FROM chunk_terms GROUP BY user_id"
    )
    op.execute("ALTER TABLE chunk_terms ENABLE TRIGGER USER")
    op.execute("ANALYZE chunk_terms")
    op.execute("ANALYZE chunk_postings")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        _postgres(conn)
    else:
        _sqlite(conn)


def downgrade() -> None:
    raise NotImplementedError("personaizer upgrades only; restore the backup to go back")
