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

Redis going away does not take the API with it. Under `PERSONAIZER_RATE_LIMIT_ON_REDIS_FAILURE=open`
(the default, as Envoy's failure_mode_deny=false and Kong's fault_tolerant) each process counts in
its own memory at 1/`PERSONAIZER_RATE_LIMIT_PROCESSES` of every budget, so the processes together
allow about one budget, and the answers carry that share in their RateLimit fields; `closed` keeps
refusing with 503 instead. Either way the outage is logged once when it starts and once when it
ends (not once per request), `outage` says so to /readyz and /metrics, and Redis is tried again at
most every `PROBE_INTERVAL_S` (by a request or a readiness probe), never by every request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from limits.util import WindowStats

from app.errors import RateLimited, Unavailable
from app.http.proxies import parse_address
from app.services.runtime import Principal
from app.settings import Settings

log = logging.getLogger(__name__)

Policy = Literal["reads", "writes", "search"]
WINDOW_S = 60
#: Seconds between two tries of a Redis that did not answer: a request or a readiness probe
#: tries it when this much has passed, every other request meanwhile counts in memory (or is
#: refused, under `closed`) without waiting on it.
PROBE_INTERVAL_S = 1.0
#: Seconds a Redis call may take before it counts as a failure (a host that drops packets
#: rather than refusing would otherwise hold each request for the client's connect timeout).
REDIS_TIMEOUT_S = 2.0


def storage_uri(settings: Settings) -> str:
    if not settings.redis_url:
        return "async+memory://"
    scheme, sep, rest = settings.redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"PERSONAIZER_REDIS_URL must be redis:// or rediss://, not {scheme!r}")
    return f"async+{scheme}://{rest}"


@dataclass(frozen=True)
class Outage:
    """Redis unreachable: since when (monotonic seconds) and the last failure seen."""

    since: float
    reason: str


@dataclass(frozen=True)
class LimitStatus:
    """How limits are counted now, for /readyz: `ok` (Redis, or memory when no Redis is
    configured), `degraded` (Redis unreachable, counting in memory) or `failing` (Redis
    unreachable and the policy refuses requests)."""

    status: Literal["ok", "degraded", "failing"]
    reason: str | None = None


class RateLimiter:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        storage = storage_from_string(storage_uri(settings))
        assert isinstance(storage, AsyncStorage)  # storage_uri names async+ schemes only
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self.clock = clock
        #: Whether counts live in Redis (shared by every process) rather than in this process.
        self.shared = bool(settings.redis_url)
        self.fail_open = settings.rate_limit_on_redis_failure == "open"
        #: Each process's share of a budget while Redis is down.
        self.processes = settings.rate_limit_processes
        self.where = _redis_where(settings.redis_url) if self.shared else "memory"
        #: Set while Redis is unreachable.
        self.outage: Outage | None = None
        self._local = MovingWindowRateLimiter(MemoryStorage()) if self.shared else self._limiter
        self._local_items: dict[tuple[str, int], RateLimitItem] = {}
        self._next_probe = 0.0
        self._checked_at: float | None = None
        self._auth_failures = RateLimitItemPerMinute(
            settings.auth_failures_per_minute, namespace="AUTH"
        )
        self._signin_per_address = RateLimitItemPerMinute(
            settings.signin_attempts_per_address, namespace="SIGNIN"
        )
        self._signin_per_account = RateLimitItemPerMinute(
            settings.signin_attempts_per_account, namespace="SIGNIN"
        )

    @property
    def degraded(self) -> bool:
        """Redis is configured and unreachable (the /metrics gauge)."""
        return self.outage is not None

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
        item = RateLimitItemPerMinute(self.limit_for(principal, policy), namespace="RL")
        allowed, stats, quota = await self.hit(
            item, policy, str(principal.user_id), cost=cost, stats=True
        )
        assert stats is not None
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
        allowed, stats, _ = await self.hit(self._auth_failures, address_key(address))
        if not allowed:
            assert stats is not None  # a refusal always reads the window
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
            allowed, stats, _ = await self.hit(item, *ident)
            if not allowed:
                assert stats is not None
                raise RateLimited(
                    "Too many sign-in attempts.",
                    headers={"Retry-After": str(_seconds_until(stats.reset_time))},
                )

    async def check(self) -> LimitStatus:
        """How limits are counted now; Redis is pinged first when it was last looked at more
        than `PROBE_INTERVAL_S` ago (so a readiness probe sees an outage with no traffic, and
        its end), never more often however often this is called."""
        now = self.clock()
        if self.shared and (self._checked_at is None or now - self._checked_at >= PROBE_INTERVAL_S):
            self._checked_at = now
            if self.outage is None:
                try:
                    async with asyncio.timeout(REDIS_TIMEOUT_S):
                        answered = await self._storage.check()
                except Exception as exc:
                    self._went_down(exc)
                else:
                    if not answered:
                        self._went_down(ConnectionError("PING failed"))
            else:
                await self._probe()
        return self.status()

    def status(self) -> LimitStatus:
        if self.outage is None:
            return LimitStatus("ok")
        down = f"{self.where} unreachable ({self.outage.reason})"
        if self.fail_open:
            return LimitStatus(
                "degraded",
                f"{down}: each process limits in memory at 1/{self.processes} of every budget",
            )
        return LimitStatus("failing", f"{down}: API requests are refused until it answers")

    async def hit(
        self, item: RateLimitItem, *ident: str, cost: int = 1, stats: bool = False
    ) -> tuple[bool, WindowStats | None, int]:
        """Charge `cost` to `item` for `ident`: in Redis while it answers, else in this
        process's memory at its share of the amount (or refused, under `closed`). Returns
        whether it was allowed, the window's stats (when asked for, or when refused) and the
        amount that was applied."""
        if self.shared and await self._redis_usable():
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    return await _hit(self._limiter, item, ident, cost=cost, stats=stats)
            except Exception as exc:
                self._went_down(exc)
        if self.shared and not self.fail_open:
            raise Unavailable("Rate limiting is unavailable.", headers={"Retry-After": "5"})
        return await _hit(self._local, self._local_item(item), ident, cost=cost, stats=stats)

    async def _redis_usable(self) -> bool:
        if self.outage is None:
            return True
        if self.clock() < self._next_probe:
            return False
        return await self._probe()

    async def _probe(self) -> bool:
        """Ping Redis (unless it was pinged less than `PROBE_INTERVAL_S` ago); True once it
        answers. Requests arriving while a probe is out count in memory rather than wait."""
        now = self.clock()
        if now < self._next_probe:
            return self.outage is None
        self._next_probe = now + PROBE_INTERVAL_S
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                answered = await self._storage.check()
        except Exception as exc:
            self._went_down(exc)
            return False
        if not answered:
            self._went_down(ConnectionError("PING failed"))
            return False
        self._came_back()
        return True

    def _local_item(self, item: RateLimitItem) -> RateLimitItem:
        if not self.shared:
            return item
        key = (item.namespace, item.amount)
        if (local := self._local_items.get(key)) is None:
            share = max(1, item.amount // self.processes)
            local = self._local_items[key] = RateLimitItemPerMinute(share, namespace=item.namespace)
        return local

    def _went_down(self, exc: BaseException) -> None:
        reason = _reason(exc)
        if self.outage is not None:
            self.outage = Outage(self.outage.since, reason)
            return
        self.outage = Outage(self.clock(), reason)
        self._next_probe = self.clock() + PROBE_INTERVAL_S
        # Once per outage (and app/http/logs.py's RepeatFilter holds back a flapping one).
        if self.fail_open:
            then = (
                f"each process now limits in memory at 1/{self.processes} of every budget "
                "until it answers (PERSONAIZER_RATE_LIMIT_PROCESSES)"
            )
        else:
            then = "API requests answer 503 until it answers (on Redis failure: closed)"
        log.warning("rate limits degraded: %s unreachable (%s); %s", self.where, reason, then)

    def _came_back(self) -> None:
        if self.outage is None:
            return
        down_s = self.clock() - self.outage.since
        self.outage = None
        log.warning(
            "rate limits restored: %s answers again after %.0f s; limits are shared again",
            self.where,
            down_s,
        )


async def _hit(
    limiter: MovingWindowRateLimiter,
    item: RateLimitItem,
    ident: tuple[str, ...],
    *,
    cost: int,
    stats: bool,
) -> tuple[bool, WindowStats | None, int]:
    allowed = await limiter.hit(item, *ident, cost=cost)
    window = await limiter.get_window_stats(item, *ident) if stats or not allowed else None
    return allowed, window, item.amount


def _redis_where(url: str) -> str:
    """`Redis at host:port`, for the log and /readyz: never the URL's password."""
    try:
        parts = urlsplit(url)
        return f"Redis at {parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return "Redis"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {REDIS_TIMEOUT_S:g} s"
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def address_key(address: str) -> str:
    """What a client address is counted as: itself, or its /64 for IPv6, since one IPv6
    client usually holds a whole /64 and could otherwise take a fresh address per attempt."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address


def _seconds_until(when: float) -> int:
    return max(1, math.ceil(when - time.time()))
