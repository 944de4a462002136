"""Per-user, per-policy rate limits (moving one-minute window) with the `limits` library.

Storage is in memory by default; with `PERSONAIZER_REDIS_URL` it is Redis, so several server
processes share one count. Every charge returns the IETF RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-07+) for the policy charged; a refused charge raises
`RateLimited` carrying them and `Retry-After`, before any work is done.

The storage key of a window names the limit's amount (`limits` builds it as
namespace/policy/user/amount/1/minute), so a user whose plan changes starts a fresh window under
the new limit rather than carrying the old plan's count over. At worst that allows one extra
window's worth of requests at the moment of the change, which is acceptable for a plan change.

Two more counts are per client address (as `app.http.proxies` finds it behind trusted proxies): failed
API-key authentications, and dashboard sign-ins (which are also counted per account). Their
limits are settings.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.errors import RateLimited, Unavailable
from app.http.proxies import parse_address
from app.services.runtime import Principal
from app.settings import Settings

log = logging.getLogger(__name__)

Policy = Literal["reads", "writes", "search"]
WINDOW_S = 60


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
        self._auth_failures = RateLimitItemPerMinute(
            settings.auth_failures_per_minute, namespace="AUTH"
        )
        self._signin_per_address = RateLimitItemPerMinute(
            settings.signin_attempts_per_address, namespace="SIGNIN"
        )
        self._signin_per_account = RateLimitItemPerMinute(
            settings.signin_attempts_per_account, namespace="SIGNIN"
        )

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

    async def failed_authentication(self, address: str) -> None:
        """Count one failed authentication (a wrong key: a missing one is not counted) from the
        client `address`; past the limit, raise
        `RateLimited` (429 in place of 401). Only failures are counted or refused: a valid key
        is accepted without coming here, so a broken client behind the same proxy or NAT
        cannot lock other users out. The count is one atomic check-and-add, so a burst of
        parallel failures cannot pass the limit either."""
        item = self._auth_failures
        ident = address_key(address)
        with _storage_errors():
            allowed = await self._limiter.hit(item, ident)
            if not allowed:
                stats = await self._limiter.get_window_stats(item, ident)
        if not allowed:
            raise RateLimited(
                "Too many failed authentications from this address.",
                headers={"Retry-After": str(_seconds_until(stats.reset_time))},
            )

    async def sign_in_attempt(self, *, address: str, account: str) -> None:
        """Count one dashboard sign-in attempt against the client address and the account
        (the normalised email, whether or not such a user exists); raise `RateLimited` before
        the password is checked when either is used up. Successes count too: each attempt
        costs an argon2 check, and a refused attempt must not reveal whether it was right."""
        for item, ident in (
            (self._signin_per_address, ("address", address_key(address))),
            (self._signin_per_account, ("account", account)),
        ):
            with _storage_errors():
                allowed = await self._limiter.hit(item, *ident)
                if not allowed:
                    stats = await self._limiter.get_window_stats(item, *ident)
            if not allowed:
                raise RateLimited(
                    "Too many sign-in attempts.",
                    headers={"Retry-After": str(_seconds_until(stats.reset_time))},
                )


def address_key(address: str) -> str:
    """What a client address is counted as: itself, or its /64 for IPv6, since one IPv6
    client usually holds a whole /64 and could otherwise take a fresh address per attempt."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address


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
