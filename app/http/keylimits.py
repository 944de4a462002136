"""Per-key and per-tenant-token-`sub` rate limits, charged in addition to the user's plan limits
(app/http/ratelimit.py): a key made with `rate_limit` N may make at most N requests a minute per
policy (and never more than the plan's), and each end user (`sub`) of its tenant tokens as many,
so one end user cannot spend the whole key's allowance.

Kept apart from the plan limiter so that each can change without the other; it shares the same
storage (memory, or Redis when configured), under its own namespace.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.errors import RateLimited, Unavailable
from app.http.ratelimit import WINDOW_S, Policy, RateLimiter, storage_uri
from app.services.runtime import Principal
from app.settings import Settings

log = logging.getLogger(__name__)


class KeyLimiter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._limiter: MovingWindowRateLimiter | None = None

    def _get(self) -> MovingWindowRateLimiter:
        # Made on first use: most deployments never restrict a key.
        if self._limiter is None:
            storage = storage_from_string(storage_uri(self._settings))
            assert isinstance(storage, AsyncStorage)
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    async def charge(self, principal: Principal, policy: Policy, *, cost: int = 1) -> None:
        if principal.key_id is None or (principal.rate_limit is None and not principal.token_sub):
            return
        plan_quota = RateLimiter.limit_for(principal, policy)
        quota = min(principal.rate_limit or plan_quota, plan_quota)
        item = RateLimitItemPerMinute(quota, namespace="KEYRL")
        idents: list[tuple[str, ...]] = []
        if principal.rate_limit is not None:
            idents.append(("key", policy, str(principal.key_id)))
        if principal.token_sub:
            idents.append(("sub", policy, str(principal.key_id), principal.token_sub))
        for ident in idents:
            try:
                allowed = await self._get().hit(item, *ident, cost=cost)
                stats = None if allowed else await self._get().get_window_stats(item, *ident)
            except Exception as exc:
                log.exception("rate limit storage failed")
                raise Unavailable(
                    "Rate limiting is unavailable.", headers={"Retry-After": "5"}
                ) from exc
            if stats is not None:
                reset = max(1, math.ceil(stats.reset_time - time.time()))
                who = "token's end user" if ident[0] == "sub" else "key"
                raise RateLimited(
                    f"This {who}'s {policy} limit of {quota} requests per minute is used up; "
                    f"retry in {reset} s.",
                    headers={
                        "RateLimit-Policy": f'"{policy}";q={quota};w={WINDOW_S}',
                        "RateLimit": f'"{policy}";r=0;t={reset}',
                        "Retry-After": str(reset),
                    },
                )
