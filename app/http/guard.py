"""Authentication and rate limiting for the doors that speak HTTP (REST, GraphQL and MCP).

All three call the same `Guard`, so a key, a limit and its headers behave identically whether a
request arrives as REST, as a GraphQL operation or as an MCP call.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from app.errors import Unauthorized
from app.http.proxies import client_address
from app.http.ratelimit import Policy, RateLimiter
from app.services import accounts
from app.services.runtime import Principal, Runtime, period_key


class Guard:
    def __init__(self, runtime: Runtime, limiter: RateLimiter) -> None:
        self.runtime = runtime
        self.limiter = limiter

    def client_address(self, request: HTTPConnection) -> str:
        """The client's address, seen through the configured trusted proxies."""
        return client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
            self.runtime.settings.trusted_networks,
        )

    async def authenticate(self, request: HTTPConnection) -> Principal:
        """The caller behind `X-Api-Key`. A valid key is always accepted; a wrong key is counted
        against the client address and, past the limit, answered 429 instead of 401.

        A missing (or empty) key is always 401 and never counted: it guesses nothing, so there
        is nothing to slow down, and a keyless client (a browser, a probe, a fuzzer checking
        that authentication is enforced) must be told 401, not 429."""
        api_key = request.headers.get("x-api-key")
        try:
            return await accounts.authenticate(runtime=self.runtime, api_key=api_key)
        except Unauthorized:
            if api_key:
                await self.limiter.failed_authentication(self.client_address(request))
            raise

    async def charge(
        self, principal: Principal, policy: Policy, *, cost: int = 1
    ) -> dict[str, str]:
        """Charge `cost` units to `policy`; returns the RateLimit header fields."""
        headers = await self.limiter.charge(principal, policy, cost=cost)
        # Counted in memory only; the usage endpoint adds what is not flushed yet.
        self.runtime.requests.add(principal.user_id, period_key())
        return headers
