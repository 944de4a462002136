"""CORS for keys that name their browser origins (API.md section 12, `allowed_origins`).

`PERSONAIZER_CORS_ORIGINS` (Starlette's CORSMiddleware, app/main.py) stays the rule for keys
without origins. A key with origins is checked by the guard, which refuses any other Origin (403
`auth.origin_not_allowed`) and records an allowed one in the request's state (`KEY_ORIGIN_STATE`);
this middleware then adds that origin's CORS headers to the answer, whatever its status.

A preflight carries no key, so it cannot be told which key will follow: it is answered for any
origin some active key allows, from a set read at most every `ORIGINS_TTL_S` seconds, so a new
key works without a restart and a disabled one stops being offered within seconds (and its
requests are refused by the guard at once either way).
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.guard import KEY_ORIGIN_STATE
from app.services import accounts
from app.services.runtime import Runtime

log = logging.getLogger(__name__)

#: How long the set of key origins is trusted for preflights.
ORIGINS_TTL_S = 5.0
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = "X-Api-Key, Authorization, Content-Type, X-Request-Id, Mcp-Protocol-Version"
EXPOSE_HEADERS = "X-Request-Id, RateLimit, RateLimit-Policy, Retry-After, Location"
MAX_AGE_S = "600"


class KeyCorsMiddleware:
    """Outside the server-wide CORSMiddleware: a preflight for one of its origins is left to
    it, one for a key's origin is answered here (CORSMiddleware would refuse it with 400)."""

    def __init__(self, app: ASGIApp, server_origins: list[str]) -> None:
        self.app = app
        self.server_origins = set(server_origins)
        self._origins: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if (
            scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
            and origin not in self.server_origins
            and origin.lower() in await self._key_origins(scope)
        ):
            await _preflight(origin)(scope, receive, send)
            return
        # The guard writes into this dict; made here so copies of the scope share it.
        state = scope.setdefault("state", {})

        async def send_with_cors(message: Message) -> None:
            allowed = state.get(KEY_ORIGIN_STATE)
            if message["type"] == "http.response.start" and allowed is not None:
                out = MutableHeaders(scope=message)
                if "access-control-allow-origin" not in out:
                    out["Access-Control-Allow-Origin"] = allowed
                    out["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                    out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _key_origins(self, scope: Scope) -> frozenset[str]:
        now = time.monotonic()
        if now - self._loaded_at < ORIGINS_TTL_S:
            return self._origins
        runtime: Runtime = scope["app"].state.runtime
        try:
            self._origins = frozenset(await accounts.allowed_origins_of_all_keys(runtime=runtime))
        except Exception:  # the database not open yet, or gone: keep what was known
            log.warning("could not read the keys' origins for CORS", exc_info=True)
            return self._origins
        self._loaded_at = now
        return self._origins


def _preflight(origin: str) -> Response:
    return Response(
        status_code=200,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE_S,
            "Vary": "Origin",
        },
    )
