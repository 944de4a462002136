"""What every use case runs against: settings, storage, indexes and the embedder."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.embedding.embedder import Embedder
from app.services.usage import RequestCounter
from app.settings import MiB, Plan, Settings
from app.storage.database import Database, search_index
from app.storage.index import SearchIndex


@dataclass
class Runtime:
    settings: Settings
    db: Database
    embedder: Embedder
    #: The engine's search index (vectors and keywords), kept in step with the chunk rows.
    index: SearchIndex = field(init=False)
    #: Authenticated requests counted in memory, flushed to the usage table in the background.
    requests: RequestCounter = field(default_factory=RequestCounter)

    def __post_init__(self) -> None:
        self.index = search_index(self.db, vector_cache_bytes=self.settings.vector_cache_mb * MiB)

    def plan(self, plan_id: str) -> Plan:
        plans = self.settings.all_plans
        # A plan removed from the configuration after users were put on it: fall back to the
        # default rather than lock those users out.
        return plans.get(plan_id) or plans[self.settings.default_plan]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: whichever of the user's keys was used, the user is the unit."""

    user_id: int
    email: str
    plan: Plan


def current_period(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The calendar month in UTC containing `now`: [start, end)."""
    now = now or datetime.now(UTC)
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def period_key(now: datetime | None = None) -> str:
    return current_period(now)[0].strftime("%Y-%m")
