"""What every use case runs against: settings, storage, indexes and the embedder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.embedding.embedder import Embedder
from app.errors import InsufficientScope
from app.models import SCOPES, Scope
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
    #: Keys by visible prefix for tenant tokens, briefly: prefix -> (loaded at, rows).
    token_keys: dict[str, tuple[float, list[Any]]] = field(default_factory=dict)

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
    #: The key used (None for callers that are not a key, e.g. the dashboard's own reads).
    key_id: int | None = None
    scopes: frozenset[Scope] = frozenset(SCOPES)
    #: The personas it may search and read; None: all of the user's.
    persona_ids: frozenset[str] | None = None
    #: Browser origins it may be used from; None: no per-key rule.
    allowed_origins: tuple[str, ...] | None = None
    #: The key's own per-minute limit (per policy), within the plan's; None: the plan's only.
    rate_limit: int | None = None
    #: A tenant token's `sub` (the end user), counted on its own; None for a key.
    token_sub: str | None = None
    #: A tenant token's forced metadata equality filters, applied to every search.
    metadata: Mapping[str, Any] | None = None
    #: Authenticated by a tenant token rather than by the key itself.
    via_token: bool = False

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise InsufficientScope(f"This key does not have the {scope} scope.")

    def require_persona(self, persona_id: str) -> None:
        if self.persona_ids is not None and persona_id not in self.persona_ids:
            raise InsufficientScope(f"This key may not use persona {persona_id!r}.")


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
