"""Authentication and rate limiting for the doors that speak HTTP (REST and GraphQL).

Both doors call the same `Guard`, so a key, a limit and its headers behave identically whether a
request arrives as REST or as a GraphQL operation.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from app.ratelimit import Policy, RateLimiter
from app.services import accounts
from app.services.core import Core, Principal, period_key


class Guard:
    def __init__(self, core: Core, limiter: RateLimiter) -> None:
        self.core = core
        self.limiter = limiter

    async def authenticate(self, request: HTTPConnection) -> Principal:
        """The caller behind `X-Api-Key`; failures are limited per client address."""
        key = request.headers.get("x-api-key")
        address = request.client.host if request.client else "unknown"
        return await self.limiter.authenticate(
            address, lambda: accounts.authenticate(core=self.core, api_key=key)
        )

    async def charge(
        self, principal: Principal, policy: Policy, *, cost: int = 1
    ) -> dict[str, str]:
        """Charge `cost` units to `policy`; returns the RateLimit header fields."""
        headers = await self.limiter.charge(principal, policy, cost=cost)
        # Counted in memory only; the usage endpoint adds what is not flushed yet.
        self.core.requests.add(principal.user_id, period_key())
        return headers
