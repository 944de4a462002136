"""The keyword tables derived from `chunk_terms` (app/storage/index/keywords.py), checked against
it on either engine: what the triggers keep must be what the record says, row for row."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.index.keywords import IMPACT_MEAN, K1, B


def impact(tf: int, length: int) -> float:
    """`keywords.IMPACT_SQL`, computed here as the engines must compute it."""
    return float(tf) / (tf + K1 * (1 - B) + K1 * B / IMPACT_MEAN * length)


def _terms(stored: Any) -> list[str]:
    """A `chunk_terms.terms` value as a list: SQLite holds a JSON array, PostgreSQL a text[]."""
    return json.loads(stored) if isinstance(stored, str) else list(stored)


async def stored_terms(session: AsyncSession, user_id: int) -> dict[int, tuple[str, list[str]]]:
    """The user's chunks: chunk id -> (its document's id, its terms as `chunk_terms` holds them)."""
    rows = await session.execute(
        text(
            "SELECT t.chunk_id, c.doc_id, t.terms FROM chunk_terms AS t"
            " JOIN chunks AS c ON c.id = t.chunk_id WHERE t.user_id = :u"
        ),
        {"u": user_id},
    )
    return {int(c): (str(d), _terms(t)) for c, d, t in rows}


async def assert_keyword_tables_derived(session: AsyncSession) -> dict[str, Any]:
    """Assert that postings, document frequencies and totals are exactly those of
    `chunk_terms`; return them (`postings`: (user, term, chunk, tf, length, impact) rows,
    `df`: (user, term, df), `stats`: (user, chunks, words))."""
    records = (
        await session.execute(text("SELECT chunk_id, user_id, terms, length FROM chunk_terms"))
    ).all()
    postings: set[tuple[Any, ...]] = set()
    df: Counter[tuple[int, str]] = Counter()
    chunks: Counter[int] = Counter()
    words: Counter[int] = Counter()
    for chunk_id, user_id, stored, length in records:
        found = _terms(stored)
        assert length == len(found)
        for term, tf in Counter(found).items():
            postings.add((user_id, term, chunk_id, tf, length, impact(tf, length)))
            df[(user_id, term)] += 1
        chunks[user_id] += 1
        words[user_id] += length
    held = {
        tuple(r)
        for r in await session.execute(
            text("SELECT user_id, term, chunk_id, tf, length, impact FROM chunk_postings")
        )
    }
    held_df = {
        tuple(r) for r in await session.execute(text("SELECT user_id, term, df FROM keyword_df"))
    }
    held_stats = {
        tuple(r)
        for r in await session.execute(text("SELECT user_id, chunks, words FROM keyword_stats"))
    }
    assert held == postings
    assert held_df == {(u, t, n) for (u, t), n in df.items()}
    assert held_stats == {(u, n, words[u]) for u, n in chunks.items()}
    return {"postings": held, "df": held_df, "stats": held_stats}
