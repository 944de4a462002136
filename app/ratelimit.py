"""Per-user, per-policy rate limits (moving one-minute window) with the `limits` library.

Storage is in memory by default; with `PERSONAIZER_REDIS_URL` it is Redis, so several server
processes share one count. Every charge returns the IETF RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-07+) for the policy charged; a refused charge raises
`RateLimited` carrying them and `Retry-After`, before any work is done.

The storage key of a window names the limit's amount (`limits` builds it as
namespace/policy/user/amount/1/minute), so a user whose plan changes starts a fresh window under
the new limit rather than carrying the old plan's count over. At worst that allows one extra
window's worth of requests at the moment of the change, which is acceptable for a plan change.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import Storage as AsyncStorage
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
        storage = storage_from_string(storage_uri(settings))
        assert isinstance(storage, AsyncStorage)  # storage_uri names async+ schemes only
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._auth_failures = RateLimitItemPerMinute(AUTH_FAILURES_PER_MINUTE, namespace="AUTH")

    @staticmethod
    def limit_for(principal: Principal, policy: Policy) -> int:
        limits = principal.plan.limits
        return {
            "reads": limits.reads_per_minute,
            "writes": limits.writes_per_minute,
            "search": limits.searches_per_minute,
        }[policy]

    async def charge(
        self, principal: Principal, policy: Policy, *, cost: int = 1
    ) -> dict[str, str]:
        """Count `cost` units (one per request, one per mutation in a GraphQL operation)
        against the user's policy; refuse them all when the window cannot hold them."""
        quota = self.limit_for(principal, policy)
        item = RateLimitItemPerMinute(quota, namespace="RL")
        ident = (policy, str(principal.user_id))
        with _storage_errors():
            allowed = await self._limiter.hit(item, *ident, cost=cost)
            stats = await self._limiter.get_window_stats(item, *ident)
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
        with _storage_errors():
            refused = not await self._limiter.test(item, address)
            if refused:
                stats = await self._limiter.get_window_stats(item, address)
        if refused:
            raise RateLimited(
                "Too many failed authentications from this address.",
                headers={"Retry-After": str(_seconds_until(stats.reset_time))},
            )
        try:
            return await attempt()
        except Unauthorized:
            with _storage_errors():
                await self._limiter.hit(item, address)
            raise


@contextmanager
def _storage_errors() -> Iterator[None]:
    """The storage is down (Redis unreachable): refuse with 503 rather than run unlimited."""
    try:
        yield
    except Exception as exc:
        log.exception("rate limit storage failed")
        raise Unavailable("Rate limiting is unavailable.", headers={"Retry-After": "5"}) from exc


def _seconds_until(when: float) -> int:
    return max(1, math.ceil(when - time.time()))
