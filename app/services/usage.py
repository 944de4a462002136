"""Counting authenticated API requests without a database write per request.

Every charged request adds one to an in-memory counter per (user, period); a background task
writes the sums to `UsageCounter.requests` every few seconds and once more at shutdown. Readers
see stored + pending. With several server processes each holds its own pending counts, so another
process's requests show up within one flush interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from app.models import UsageCounter, User
from app.storage.database import Database, add_counts

log = logging.getLogger(__name__)

#: Seconds between flushes of the pending request counts.
FLUSH_INTERVAL_S = 5.0

_Key = tuple[int, str]


class RequestCounter:
    def __init__(self) -> None:
        self._pending: Counter[_Key] = Counter()
        # Held while a flush moves counts from memory to the table and while a reader adds the
        # two, so a reader never sees a count in both places, or in neither.
        self._lock = asyncio.Lock()

    def add(self, user_id: int, period: str, n: int = 1) -> None:
        self._pending[(user_id, period)] += n

    def pending(self, user_id: int, period: str) -> int:
        return self._pending.get((user_id, period), 0)

    async def total(self, session: AsyncSession, user_id: int, period: str) -> int:
        """Stored plus pending requests of one user in one period."""
        async with self._lock:
            stored = (
                await session.execute(
                    select(UsageCounter.requests).where(
                        UsageCounter.user_id == user_id, UsageCounter.period == period
                    )
                )
            ).scalar_one_or_none()
            return (stored or 0) + self.pending(user_id, period)

    async def flush(self, db: Database) -> int:
        """Write the pending counts; returns how many requests were written. On failure the
        counts stay pending for the next flush."""
        async with self._lock:
            taken, self._pending = self._pending, Counter()
            if not taken:
                return 0
            try:
                async with db.write() as session:
                    for (user_id, period), n in taken.items():
                        await _add_requests(session, user_id, period, n)
            except BaseException:
                self._pending.update(taken)
                raise
            return sum(taken.values())

    async def flush_or_log(self, db: Database) -> None:
        """`flush`, logging a failure instead of raising it (the counts stay pending)."""
        try:
            await self.flush(db)
        except Exception:
            log.exception("flushing request counts failed")

    async def run(self, db: Database, interval: float | None = None) -> None:
        """Flush every `interval` seconds until cancelled (the app's lifespan owns the task)."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S if interval is None else interval)
            await self.flush_or_log(db)


async def _add_requests(session: AsyncSession, user_id: int, period: str, n: int) -> None:
    if await session.get(User, user_id) is None:  # deleted since: nothing to count against
        return
    await add_counts(session, UsageCounter, {"user_id": user_id, "period": period}, requests=n)
