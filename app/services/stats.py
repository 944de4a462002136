"""What the server holds, all users together: the counts an operator's `/metrics` shows.

No user, key or document is named: the figures are totals, for a page anyone on the network
may read (app/http/metrics.py).
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import SQLModel, select

from app.models import Chunk, KnowledgeDoc, Persona
from app.services.runtime import Runtime

#: The name each count is shown under, and the table it counts.
STORED: tuple[tuple[str, type[SQLModel]], ...] = (
    ("documents", KnowledgeDoc),
    ("chunks", Chunk),
    ("personas", Persona),
)


async def stored_counts(*, runtime: Runtime) -> dict[str, int]:
    """Documents, chunks and personas stored: a `count(*)` over each whole table, in one read
    snapshot. Not cheap on a large database; the caller decides how often (app/http/metrics.py
    reads it at most once per scrape interval)."""
    counts: dict[str, int] = {}
    async with runtime.db.read() as session:
        for name, table in STORED:
            count = (await session.execute(select(func.count()).select_from(table))).scalar_one()
            counts[name] = int(count)
    return counts
