"""The chunk keyword index (SQLite FTS5, porter stemming, BM25), kept in step with the chunks.

Its rowid is the chunk id; the title is a column of its own so a title change is a cheap update
here even though it re-embeds nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

#: A word as the `unicode61` tokenizer sees one: a run of letters and digits.
_WORD = re.compile(r"[^\W_]+")
#: Words of a query beyond this many are dropped (each OR-ed term costs a posting-list scan).
MAX_QUERY_TERMS = 64
#: bm25 column weights (title, text): measured on Cranfield, see scripts/eval_cranfield.py.
TITLE_WEIGHT = 1.0
TEXT_WEIGHT = 1.0


def match_expression(query: str) -> str | None:
    """A MATCH expression that is safe for any text: every word quoted (so `AND`, `NEAR`, `*`,
    `:`, `^`, quotes and parentheses are only text) and the words OR-ed, as BM25 ranking wants.
    None when the text has no word at all."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(query))
    return " OR ".join(f'"{w}"' for w in list(words)[:MAX_QUERY_TERMS]) or None


class KeywordIndex:
    async def put(
        self,
        session: AsyncSession,
        *,
        title: str | None,
        chunks: Sequence[tuple[int, str]],
    ) -> None:
        if not chunks:
            return
        await self.delete(session, [cid for cid, _ in chunks])
        await session.execute(
            text("INSERT INTO chunk_fts(rowid, title, text) VALUES (:c, :title, :t)"),
            [{"c": cid, "title": title or "", "t": body} for cid, body in chunks],
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
                {"title": title or "", "ids": ids},
            )

    async def best_per_doc(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        match: str,
        limit: int,
        chunk_ids: Sequence[int] | None = None,
    ) -> list[tuple[str, int, float]]:
        """The user's `limit` best-matching documents, each with its best chunk: (doc id, chunk
        id, bm25), best first (bm25 is lower for better matches). `chunk_ids` restricts the
        search to those chunks.

        The MATCH runs over the whole index and the rows are filtered after it: an FTS5 query
        constrained by `rowid IN (...)` is re-run per rowid, milliseconds each. MATERIALIZED keeps
        `bm25()` inside the FTS scan (SQLite refuses it once the subquery is flattened)."""
        scope = " AND f.chunk_id IN (SELECT value FROM json_each(:ids))" if chunk_ids else ""
        params: dict[str, object] = {
            "m": match,
            "tw": TITLE_WEIGHT,
            "xw": TEXT_WEIGHT,
            "u": user_id,
            "n": limit,
        }
        if chunk_ids is not None:
            if not chunk_ids:
                return []
            params["ids"] = json.dumps(list(chunk_ids))
        rows = await session.execute(
            text(
                "WITH f AS MATERIALIZED ("
                " SELECT rowid AS chunk_id, bm25(chunk_fts, :tw, :xw) AS score"
                " FROM chunk_fts WHERE chunk_fts MATCH :m)"
                " SELECT c.doc_id, f.chunk_id, min(f.score) AS best"
                " FROM f JOIN chunks AS c ON c.id = f.chunk_id"
                f" WHERE c.user_id = :u{scope}"
                " GROUP BY c.doc_id ORDER BY best, c.doc_id LIMIT :n"
            ),
            params,
        )
        return [(str(doc), int(cid), float(score)) for doc, cid, score in rows]

    async def delete(self, session: AsyncSession, chunk_ids: Iterable[int]) -> None:
        ids = list(chunk_ids)
        for start in range(0, len(ids), 500):
            await session.execute(
                text("DELETE FROM chunk_fts WHERE rowid IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": ids[start : start + 500]},
            )
