"""The MCP door's edge: the Starlette side of `/mcp`, in front of the SDK's ASGI app.

`McpEdge` answers every refusal the contract defines for an HTTP request as a whole (Host and
Origin, the latter widened by a key's own `allowed_origins`; method, `X-Api-Key`, body, rate
limit) in problem+json, before the SDK has seen a byte,
and leaves the authenticated caller in the request's scope (`caller_of`) for the gate and the
tools. `mcp_route` mounts the SDK's streamable HTTP app behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    AppError,
    Forbidden,
    MethodNotAllowed,
    MisdirectedRequest,
    RateLimited,
    UnsupportedMediaType,
)
from app.http import intake
from app.http.guard import Guard
from app.http.problems import problem_response
from app.http.ratelimit import Policy
from app.models import Scope as KeyScope
from app.services.runtime import Principal, Runtime
from app.settings import Settings

PATH = "/mcp"
#: Where the edge leaves the caller for the tools: a key of the request's scope (the SDK's own
#: Starlette app replaces `scope["app"]`, so the outer app's state is not reachable from there).
_CALLER = "personaizer.mcp_caller"


@dataclass(frozen=True, slots=True)
class Caller:
    runtime: Runtime
    guard: Guard
    principal: Principal
    #: The edge's refusal of a `tools/call` over its rate limit, for the gate
    #: (`app.mcp.errors.Gate`) to answer as a tool result; None when the call was charged.
    refused: RateLimited | None = None


def caller_of(request: object) -> Caller:
    """The caller `McpEdge` authenticated, from the request the SDK hands a middleware or a
    tool (its `request_context.request`)."""
    assert isinstance(request, Request), "the MCP door is served over HTTP only"
    caller: Caller = request.scope[_CALLER]
    return caller


#: Each tool's rate-limit policy: its REST twin's. The edge charges a message before the SDK
#: parses it, so it names the tools itself (`tests/mcp` checks these are the server's tools).
POLICIES: dict[str, Policy] = {
    "search_knowledge": "search",
    "get_document": "reads",
    "list_documents": "reads",
    "list_personas": "reads",
    "get_persona": "reads",
}

#: Each tool's key scope: its REST twin's (API.md section 12). A tool outside the caller's scopes
#: is left out of `tools/list` and refused if called (`app.mcp.errors.Gate`); persona
#: restrictions and a token's forced metadata are applied by the services the tools call.
SCOPES: dict[str, KeyScope] = {
    "search_knowledge": "search",
    "get_document": "docs:read",
    "list_documents": "docs:read",
    "list_personas": "personas:read",
    "get_persona": "personas:read",
}


def may_use(principal: Principal, tool: str) -> bool:
    """Whether the caller's scopes admit `tool` (an unknown tool: yes, the SDK refuses it)."""
    scope = SCOPES.get(tool)
    return scope is None or scope in principal.scopes


#: JSON values and arrays in one MCP message, far below REST's (`strict_json.MAX_VALUES`,
#: `strict_json.MAX_ARRAYS`): the SDK parses the bytes again, on the event loop, once the edge has let
#: them through, and within `mcp_max_body_bytes` REST's counts would still let 87,000 empty
#: arrays reach it (measured: 10 ms of the loop per request warm, 50 ms cold, more when the
#: allocations set off a full garbage collection). The largest real message is a search with 1000 external_ids and 8 KiB
#: of metadata filter: at most about 5,200 values of which 2,800 arrays.
MAX_VALUES = 10_000
MAX_ARRAYS = 5_000


def allowed_hosts(settings: Settings) -> list[str]:
    """Host names `/mcp` answers (any port): loopback, the address the server listens on unless
    it is a wildcard, and `PERSONAIZER_ALLOWED_HOSTS`."""
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if settings.host not in ("0.0.0.0", "::", ""):
        hosts.append(f"[{settings.host}]" if ":" in settings.host else settings.host)
    hosts.extend(settings.allowed_hosts)
    return list(dict.fromkeys(hosts))


def allowed_origins(settings: Settings) -> list[str]:
    """Browser origins `/mcp` answers: the allowed hosts over http(s), and the CORS origins."""
    hosts = allowed_hosts(settings)
    return [f"{s}://{h}" for h in hosts for s in ("http", "https")] + settings.cors_origins


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's own DNS-rebinding check, given the same lists as `McpEdge` (which answers first,
    in the contract's shape), so the two never disagree."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[p for h in allowed_hosts(settings) for p in (h, f"{h}:*")],
        allowed_origins=[p for o in allowed_origins(settings) for p in (o, f"{o}:*")],
    )


def _without_port(authority: str) -> str:
    if authority.startswith("["):  # an IPv6 literal: [::1]:8000
        return authority.split("]", 1)[0] + "]"
    return authority.split(":", 1)[0]


def charge_for(message: object) -> tuple[Policy, bool]:
    """The rate-limit policy a parsed body is charged to, and whether its refusal can be a tool
    result (a `tools/call` request: it has an id to answer). A call to `search_knowledge` is a
    search, as its REST twin is; every other message (initialize, ping, tools/list, a call to a
    tool that does not exist, a body that is not JSON-RPC at all) is a read."""
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return "reads", False
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    policy = POLICIES.get(name, "reads") if isinstance(name, str) else "reads"
    return policy, message.get("id") is not None


class McpEdge:
    """ASGI app in front of the SDK's: every refusal the contract defines for a request as a
    whole (Host, Origin, method, key, body, rate limit) is answered here in problem+json, so the
    SDK only ever sees an authenticated, charged POST whose body has passed the shared intake.

    The body is read and parsed before it is charged, unlike REST, because the policy depends on
    the tool it calls; `mcp_max_body_bytes`, `MAX_VALUES` and `MAX_ARRAYS` keep that work small
    (and it runs off the event loop past `offload.INLINE_BYTES`). A body refused there is still charged, as a read, as REST charges
    one."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = set(allowed_hosts(settings))
        self.origins = set(allowed_origins(settings))
        self.max_body_bytes = settings.mcp_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            self._check_host(request)
            origin = request.headers.get("origin")
            # An Origin outside the server's list may still be one the caller's key allows
            # (API.md section 12): that is known only once the key is read.
            foreign = origin is not None and not self._origin_allowed(origin)
            if request.method != "POST":
                if foreign:
                    raise _foreign(origin)
                # Stateless: no session to DELETE, and no server-initiated messages to GET (the
                # SDK would hold a GET open, an event stream that never carries anything). The
                # spec's answer for a server without that stream is 405.
                raise MethodNotAllowed(
                    f"{request.method} is not allowed here; the MCP door takes POST only.",
                    headers={"Allow": "POST"},
                )
            guard: Guard = request.app.state.guard
            # A key with allowed_origins is refused from any other Origin here (403
            # auth.origin_not_allowed, as in REST), and one of its own is recorded for the
            # answer's CORS headers (app/http/keycors.py).
            principal = await guard.authenticate(request)
            if foreign and principal.allowed_origins is None:
                raise _foreign(origin)
            raw, headers, refused = await self._take(request, guard, principal)
        except AppError as exc:
            await problem_response(exc, request)(scope, receive, send)
            return
        caller = Caller(request.app.state.runtime, guard, principal, refused)
        # A copy: the SDK's Starlette app rewrites `app` and `route` in the scope it is given,
        # and the outer middleware reads the route (for metrics) after the response.
        inner = {**scope, _CALLER: caller}
        if foreign:
            # A key's own origin, accepted above: the SDK's DNS-rebinding check knows only the
            # server's fixed list and would refuse it, so it is not shown the header it has no
            # say over (the Host is still its to check).
            inner["headers"] = [(k, v) for k, v in scope["headers"] if k != b"origin"]
        await self.app(inner, _replay(raw, receive), _with_headers(send, headers))

    def _check_host(self, request: Request) -> None:
        host = request.headers.get("host", "")
        if _without_port(host) not in self.hosts:
            raise MisdirectedRequest(
                f"This server does not answer MCP for the host {host!r}; its operator can "
                "allow it with PERSONAIZER_ALLOWED_HOSTS."
            )

    def _origin_allowed(self, origin: str) -> bool:
        scheme, _, authority = origin.partition("://")
        return origin in self.origins or f"{scheme}://{_without_port(authority)}" in self.origins

    async def _take(
        self, request: Request, guard: Guard, principal: Principal
    ) -> tuple[bytes, dict[str, str], RateLimited | None]:
        """The body, checked and charged: its bytes, the RateLimit fields for the answer, and
        the refusal of a `tools/call` over its limit (left for the gate to answer)."""
        try:
            raw = await self._read(request)
            policy, tool_call = await intake.parse(
                raw, charge_for, max_values=MAX_VALUES, max_arrays=MAX_ARRAYS
            )
        except AppError as exc:
            exc.headers.update(await guard.charge(principal, "reads"))
            raise
        try:
            return raw, await guard.charge(principal, policy), None
        except RateLimited as exc:
            if not tool_call:
                raise
            # The tool result carries `retry_after`; Retry-After belongs to a 429 only.
            fields = {k: v for k, v in exc.headers.items() if k != "Retry-After"}
            return raw, fields, exc

    async def _read(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in ("", "application/json") and intake.is_json_media_type(content_type):
            # REST takes `application/*+json` too; MCP's transport is `application/json` only,
            # and the SDK would refuse anything else in a shape of its own.
            raise UnsupportedMediaType(
                f"Send MCP messages as application/json, not {content_type!r}."
            )
        return await intake.read_json_body(request, self.max_body_bytes)


def _foreign(origin: str | None) -> Forbidden:
    return Forbidden(
        f"Pages from {origin!r} may not call this server's MCP door; a key may allow its own "
        "origins (allowed_origins)."
    )


def _replay(raw: bytes, receive: Receive) -> Receive:
    """The request's `receive` with the body, already read, given back first: the SDK reads it
    as if it came from the client, then waits on the client (for a disconnect) as before."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send` adding `headers` (the charge's RateLimit fields) to the response's start."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).update(headers)
        await send(message)

    return send_with_headers


def mcp_route(server: MCPServer, settings: Settings) -> Route:
    """`/mcp` in the app's router: the SDK's streamable HTTP app behind `McpEdge`. The app's
    lifespan must run `server.session_manager.run()`."""
    sdk_app = server.streamable_http_app(
        streamable_http_path=PATH,
        stateless_http=True,
        json_response=True,
        # The edge refuses a larger body first, in problem+json; this is the SDK's own guard.
        max_request_body_size=settings.mcp_max_body_bytes,
        transport_security=transport_security(settings),
    )
    return Route(PATH, McpEdge(sdk_app, settings), name="mcp")
