"""Authentication and rate limiting for the doors that speak HTTP (REST, GraphQL and MCP).

All three call the same `Guard`, so a key, a limit and its headers behave identically whether a
request arrives as REST, as a GraphQL operation or as an MCP call.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from app.errors import OriginNotAllowed, Unauthorized
from app.http.keylimits import KeyLimiter
from app.http.proxies import client_address
from app.http.ratelimit import Policy, RateLimiter
from app.models import Scope
from app.services import accounts
from app.services.runtime import Principal, Runtime, period_key

#: Where an authenticated request with an Origin its key allows records it, for the per-key
#: CORS headers of the answer (app/http/keycors.py).
KEY_ORIGIN_STATE = "key_cors_origin"


class Guard:
    def __init__(self, runtime: Runtime, limiter: RateLimiter) -> None:
        self.runtime = runtime
        self.limiter = limiter
        self.key_limiter = KeyLimiter(limiter)

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
        api_key = request.headers.get("x-api-key") or _bearer(request)
        try:
            principal = await accounts.authenticate(runtime=self.runtime, api_key=api_key)
        except Unauthorized:
            if api_key:
                await self.limiter.failed_authentication(self.client_address(request))
            raise
        self._check_origin(request, principal)
        return principal

    def _check_origin(self, request: HTTPConnection, principal: Principal) -> None:
        """A key that lists allowed origins is refused from any other browser origin (403);
        from an allowed one, the answer gets that origin's CORS headers."""
        origin = request.headers.get("origin")
        if origin is None or principal.allowed_origins is None:
            return
        if origin.lower() not in principal.allowed_origins:
            raise OriginNotAllowed(f"This key may not be used from the origin {origin!r}.")
        request.scope.setdefault("state", {})[KEY_ORIGIN_STATE] = origin

    def require(self, principal: Principal, scope: Scope) -> None:
        """403 auth.insufficient_scope unless the key (or token) has `scope`."""
        principal.require(scope)

    async def charge(
        self, principal: Principal, policy: Policy, *, cost: int = 1
    ) -> dict[str, str]:
        """Charge `cost` units to `policy`; returns the RateLimit header fields."""
        # The key's own limit and a tenant token's `sub` first: the user's count is not spent
        # on a request its key may not make.
        await self.key_limiter.charge(principal, policy, cost=cost)
        headers = await self.limiter.charge(principal, policy, cost=cost)
        # Counted in memory only; the usage endpoint adds what is not flushed yet.
        self.runtime.requests.add(principal.user_id, period_key())
        return headers


def _bearer(request: HTTPConnection) -> str | None:
    """`Authorization: Bearer <key or tenant token>`, the header browsers' libraries send."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None
