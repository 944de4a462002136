"""Per-key and per-tenant-token-`sub` rate limits, charged in addition to the user's plan limits
(app/http/ratelimit.py): a key made with `rate_limit` N may make at most N requests a minute per
policy (and never more than the plan's), and each end user (`sub`) of its tenant tokens as many,
so one end user cannot spend the whole key's allowance.

Kept apart from the plan limiter so that each can change without the other; it shares the same
storage (memory, or Redis when configured) and failure policy, under its own namespace.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute

from app.errors import RateLimited
from app.http.ratelimit import WINDOW_S, Policy, RateLimiter
from app.services.runtime import Principal


class KeyLimiter:
    """Charged through the plan limiter's own storage and failure policy (`RateLimiter.hit`),
    so Redis going away degrades these limits as it does the plan's, in one place."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

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
            allowed, stats, applied = await self._limiter.hit(item, *ident, cost=cost)
            if not allowed:
                assert stats is not None
                reset = max(1, math.ceil(stats.reset_time - time.time()))
                who = "token's end user" if ident[0] == "sub" else "key"
                raise RateLimited(
                    f"This {who}'s {policy} limit of {applied} requests per minute is used up; "
                    f"retry in {reset} s.",
                    headers={
                        "RateLimit-Policy": f'"{policy}";q={applied};w={WINDOW_S}',
                        "RateLimit": f'"{policy}";r=0;t={reset}',
                        "Retry-After": str(reset),
                    },
                )
