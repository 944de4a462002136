"""What every use case runs against: settings, storage, indexes and the embedder."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select

from app.embedding.embedder import Embedder
from app.errors import InsufficientScope, PlanMissing
from app.models import SCOPES, PlanRow, Scope
from app.services.usage import RequestCounter
from app.settings import MiB, Plan, Settings
from app.storage import plan_rows
from app.storage.database import Database, search_index
from app.storage.index import SearchIndex

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    embedder: Embedder
    #: The engine's search index (vectors and keywords), kept in step with the chunk rows.
    index: SearchIndex = field(init=False)
    #: Authenticated requests counted in memory, flushed to the usage table in the background.
    requests: RequestCounter = field(default_factory=RequestCounter)
    #: Tenant tokens' signing secrets by key prefix: prefix -> (loaded at, [(key id, secret)]).
    token_keys: dict[str, tuple[float, list[tuple[int, str]]]] = field(default_factory=dict)
    #: Tenant tokens whose signature held, by the token itself (app/services/tokens.py).
    verified_tokens: dict[str, Any] = field(default_factory=dict)
    #: The `plans` table as last read, and when (monotonic); None: not read yet.
    _plans: dict[str, Plan] | None = field(default=None, init=False, repr=False)
    _plans_at: float = field(default=0.0, init=False, repr=False)
    _plans_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    #: Plan ids met on an account but missing from the table, logged once each.
    _missing_logged: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = search_index(
            self.db,
            vector_cache_bytes=self.settings.vector_cache_mb * MiB,
            partition_bytes=self.settings.partition_cache_mb * MiB,
            partition_min_chunks=self.settings.partition_min_chunks,
        )

    async def plans(self) -> dict[str, Plan]:
        """The `plans` table, read at most every `plans_refresh_s` seconds: every server
        reads the same table, so a change reaches all of them within that, without a restart,
        and a request costs no query for it."""
        if (
            self._plans is None
            or time.monotonic() - self._plans_at >= self.settings.plans_refresh_s
        ):
            async with self._plans_lock:
                # Another request may have reloaded it while this one waited.
                if (
                    self._plans is None
                    or time.monotonic() - self._plans_at >= self.settings.plans_refresh_s
                ):
                    async with self.db.read() as session:
                        rows = (
                            await session.execute(select(PlanRow).order_by(col(PlanRow.id)))
                        ).scalars()
                        loaded = {r.id: plan_rows.plan_of(r.id, r.name, r.limits) for r in rows}
                    self._plans, self._plans_at = loaded, time.monotonic()
        return self._plans

    def forget_plans(self) -> None:
        """Read the table again at the next use (after this process changed it)."""
        self._plans = None

    async def plan(self, plan_id: str) -> Plan:
        """An account's plan. One the table lacks (deleted by hand while accounts were on it)
        refuses the account's requests (`account.plan_missing`), logged once per plan: serving
        the default plan instead would silently change what those accounts may do."""
        found = (await self.plans()).get(plan_id)
        if found is None:
            if plan_id not in self._missing_logged:
                self._missing_logged.add(plan_id)
                log.error(
                    "accounts on plan %r are refused: the plans table has no such plan "
                    "(`personaizer plans set %s ...` restores it; `personaizer users set-plan` "
                    "moves an account)",
                    plan_id,
                    plan_id,
                )
            raise PlanMissing(
                f"This account's plan {plan_id!r} does not exist on this server; ask the operator."
            )
        return found


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
