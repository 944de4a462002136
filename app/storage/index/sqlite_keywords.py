"""SQLite's chunk keyword index (FTS5, BM25), kept in step with the chunks.

FTS5 holds each chunk's terms as `words.terms` makes them (stemmed, folded), space-separated, and
splits them with its `ascii` tokenizer, which keeps such a term whole and as it is (it breaks only
at ASCII characters other than letters and digits, and lowercases nothing a term still has): the
terms PostgreSQL's postings hold, so both engines count and score the same (revision 0011).

Its rowid is the chunk id; the title is a column of its own so a title change is a cheap update
here even though it re-embeds nothing. The `owner` column holds one token, `u<user id>`: every
MATCH is `owner:u<id> AND {title text}:(...)`, so FTS5 walks only that user's rows (the AND
skips through the term lists by rowid) instead of every user's matches before a per-user filter.
Measured with 100,000 chunks of one user and 20,000 of another: the smaller user's keyword
search went from ~90 ms (all matches of both users scored, then filtered) to ~2 ms; the owner
term costs the large user ~3 ms (bm25 counts its rows to weigh it, though its weight is 0).

Costs are dominated by how many rows match: BM25 scores every row holding any query word, so a
word found in most rows ("the", "of", "what") makes a query score most of the index, ~40 ms per
100,000 rows, while such a word's IDF is about zero (FTS5 clamps it to 1e-6 once a word is in
half the rows), so it hardly moves the ranking. `match_expression` leaves out English stopwords
(a short fixed list), unless the query has no other word.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import sqlean
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.index import TIE_DECIMALS, Ranked, best_chunks_per_doc
from app.storage.index.words import query_terms, terms

#: The document ids of chunks (ids of this connection's snapshot), in their order; None for a
#: chunk that is gone.
DocsOf = Callable[[sqlean.Connection, list[int]], list[str | None]]

#: bm25 column weights (title, text): measured on Cranfield, see scripts/eval_cranfield.py.
TITLE_WEIGHT = 1.0
TEXT_WEIGHT = 1.0

#: The first pass of an unscoped search reads this many best chunks per wanted document.
CHUNKS_PER_DOC = 4


def match_expression(query: str) -> str | None:
    """A MATCH expression that is safe for any text: the query's terms (`words.query_terms`:
    stemmed, stopwords left out unless they are all there is) each quoted (so `AND`, `NEAR`,
    `*`, `:`, `^`, quotes and parentheses are only text), OR-ed as BM25 ranking wants. None when
    the text has no word at all."""
    return " OR ".join(f'"{t}"' for t in query_terms(query)) or None


def indexed(text: str | None) -> str:
    """What FTS5 holds of `text`: its terms, space-separated."""
    return " ".join(terms(text or ""))


def owner_token(user_id: int) -> str:
    return f"u{user_id}"


class KeywordIndex:
    async def put_titled(
        self, session: AsyncSession, *, user_id: int, chunks: Sequence[tuple[int, str | None, str]]
    ) -> None:
        """Index new chunks (ids not indexed yet, as for the vectors), of one document or
        several: (chunk id, its document's title, text)."""
        if not chunks:
            return
        await session.execute(
            text("INSERT INTO chunk_fts(rowid, owner, title, text) VALUES (:c, :o, :title, :t)"),
            [
                {"c": cid, "o": owner_token(user_id), "title": indexed(title), "t": indexed(body)}
                for cid, title, body in chunks
            ],
        )

    async def retitle(
        self, session: AsyncSession, *, title: str | None, chunk_ids: Iterable[int]
    ) -> None:
        ids = list(chunk_ids)
        if ids:
            await session.execute(
                text("UPDATE chunk_fts SET title = :title WHERE rowid IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"title": indexed(title), "ids": ids},
            )

    def best_per_doc(
        self,
        conn: sqlean.Connection,
        *,
        user_id: int,
        match: str,
        limit: int,
        chunk_ids: Sequence[int] | None = None,
        docs_of: DocsOf | None = None,
    ) -> list[Ranked]:
        """The user's `limit` best-matching documents, each with its best chunk, best first,
        scored by BM25 (higher is better: FTS5's bm25() negated). `chunk_ids` restricts the
        search to those chunks. Run on the connection's own thread (`run_on_connection`).

        Unscoped, FTS5 hands over only the best `CHUNKS_PER_DOC * limit` chunks (a bounded sort
        of the user's matches; the rest are never joined), deepened while they hold too few
        documents; `docs_of`, when given, names their documents instead of a join to `chunks`
        (a third of the statement's time). Scoped, every match of the user is filtered in SQL:
        an FTS5 query constrained by `rowid IN (...)` is re-run per rowid, milliseconds each.
        MATERIALIZED keeps `bm25()` inside the FTS scan (SQLite refuses it once the subquery is
        flattened)."""
        params: dict[str, object] = {
            "m": f'owner : "{owner_token(user_id)}" AND {{title text}} : ({match})',
            "tw": TITLE_WEIGHT,
            "xw": TEXT_WEIGHT,
        }
        fts = (
            "WITH f AS MATERIALIZED ("
            " SELECT rowid AS chunk_id, bm25(chunk_fts, 0, :tw, :xw) AS score"
            " FROM chunk_fts WHERE chunk_fts MATCH :m"
        )
        if chunk_ids is not None:
            if not chunk_ids:
                return []
            # Each document's best chunk, ties as `best_chunks_per_doc` breaks them.
            scoped = conn.execute(
                f"{fts}), s AS ("
                " SELECT c.doc_id, f.chunk_id, f.score, round(f.score, :tie) AS rounded,"
                " row_number() OVER (PARTITION BY c.doc_id"
                "  ORDER BY round(f.score, :tie), f.chunk_id) AS nth"
                " FROM f JOIN chunks AS c ON c.id = f.chunk_id"
                " WHERE f.chunk_id IN (SELECT value FROM json_each(:ids)))"
                " SELECT doc_id, chunk_id, score FROM s WHERE nth = 1"
                " ORDER BY rounded, chunk_id LIMIT :n",
                {**params, "ids": json.dumps(list(chunk_ids)), "tie": TIE_DECIMALS, "n": limit},
            ).fetchall()
            return best_chunks_per_doc(
                [(str(doc), int(cid), -float(score)) for doc, cid, score in scoped], limit
            )
        n = CHUNKS_PER_DOC * limit
        while True:
            if docs_of is None:
                rows = conn.execute(
                    f"{fts} ORDER BY score LIMIT :n)"
                    " SELECT c.doc_id, f.chunk_id, f.score"
                    " FROM f JOIN chunks AS c ON c.id = f.chunk_id",
                    {**params, "n": n},
                ).fetchall()
            else:
                found = conn.execute(
                    f"{fts} ORDER BY score LIMIT :n) SELECT * FROM f", {**params, "n": n}
                ).fetchall()
                docs = docs_of(conn, [cid for cid, _ in found])
                rows = [(doc, cid, score) for doc, (cid, score) in zip(docs, found, strict=True)]
            ranked = best_chunks_per_doc(
                [
                    (str(doc), int(cid), -float(score))
                    for doc, cid, score in rows
                    if doc is not None
                ],
                limit,
            )
            if len(ranked) >= limit or len(rows) < n:
                return ranked
            n *= 4

    async def delete(self, session: AsyncSession, chunk_ids: Iterable[int]) -> None:
        ids = list(chunk_ids)
        for start in range(0, len(ids), 500):
            await session.execute(
                text("DELETE FROM chunk_fts WHERE rowid IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": ids[start : start + 500]},
            )
