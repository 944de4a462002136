"""The chunk keyword index (SQLite FTS5, porter stemming, BM25), kept in step with the chunks.

Its rowid is the chunk id; the title is a column of its own so a title change is a cheap update
here even though it re-embeds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession


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

    async def delete(self, session: AsyncSession, chunk_ids: Iterable[int]) -> None:
        ids = list(chunk_ids)
        for start in range(0, len(ids), 500):
            await session.execute(
                text("DELETE FROM chunk_fts WHERE rowid IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": ids[start : start + 500]},
            )
