"""Per-user, per-policy rate limits (moving one-minute window) with the `limits` library.

Storage is in memory by default; with `PERSONAIZER_REDIS_URL` it is Redis, so several server
processes share one count. Every charge returns the IETF RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-07+) for the policy charged; a refused charge raises
`RateLimited` carrying them and `Retry-After`, before any work is done.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.errors import RateLimited, Unauthorized, Unavailable
from app.services.core import Principal
from app.settings import Settings

log = logging.getLogger(__name__)

Policy = Literal["reads", "writes", "search"]
WINDOW_S = 60
#: Failed authentications one client address may make per minute before it is refused.
AUTH_FAILURES_PER_MINUTE = 30


def storage_uri(settings: Settings) -> str:
    if not settings.redis_url:
        return "async+memory://"
    scheme, sep, rest = settings.redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"PERSONAIZER_REDIS_URL must be redis:// or rediss://, not {scheme!r}")
    return f"async+{scheme}://{rest}"


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._storage = storage_from_string(storage_uri(settings))
        self._limiter = MovingWindowRateLimiter(self._storage)  # type: ignore[arg-type]
        self._auth_failures = RateLimitItemPerMinute(AUTH_FAILURES_PER_MINUTE, namespace="AUTH")

    @staticmethod
    def limit_for(principal: Principal, policy: Policy) -> int:
        limits = principal.plan.limits
        return {
            "reads": limits.reads_per_minute,
            "writes": limits.writes_per_minute,
            "search": limits.searches_per_minute,
        }[policy]

    async def charge(self, principal: Principal, policy: Policy) -> dict[str, str]:
        """Count one request against the user's policy; refuse it when the window is full."""
        quota = self.limit_for(principal, policy)
        item = RateLimitItemPerMinute(quota, namespace="RL")
        ident = (policy, str(principal.user_id))
        try:
            allowed = await self._limiter.hit(item, *ident)
            stats = await self._limiter.get_window_stats(item, *ident)
        except Exception as exc:  # storage down: refuse rather than run unlimited
            log.exception("rate limit storage failed")
            raise Unavailable(
                "Rate limiting is unavailable.", headers={"Retry-After": "5"}
            ) from exc
        reset = _seconds_until(stats.reset_time)
        headers = {
            "RateLimit-Policy": f'"{policy}";q={quota};w={WINDOW_S}',
            "RateLimit": f'"{policy}";r={max(stats.remaining, 0)};t={reset}',
        }
        if not allowed:
            raise RateLimited(
                f"The {policy} limit of {quota} requests per minute is used up; "
                f"retry in {reset} s.",
                headers={**headers, "Retry-After": str(reset)},
            )
        return headers

    async def authenticate(
        self, address: str, attempt: Callable[[], Awaitable[Principal]]
    ) -> Principal:
        """Run `attempt`; failures count per client address and, past the limit, are refused
        with 429 before the key is even looked at."""
        item: RateLimitItem = self._auth_failures
        if not await self._limiter.test(item, address):
            stats = await self._limiter.get_window_stats(item, address)
            reset = _seconds_until(stats.reset_time)
            raise RateLimited(
                "Too many failed authentications from this address.",
                headers={"Retry-After": str(reset)},
            )
        try:
            return await attempt()
        except Unauthorized:
            await self._limiter.hit(item, address)
            raise

    async def reset(self) -> None:
        await self._storage.reset()


def _seconds_until(when: float) -> int:
    return max(1, math.ceil(when - time.time()))
