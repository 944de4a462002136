"""The MCP door: a Model Context Protocol server at `/mcp` for agents (streamable HTTP).

The official SDK's `MCPServer` serves four read-only tools over the same service functions the
REST door calls. The contract's gate runs in the same order as REST (API.md section 3), and
everything the SDK would otherwise do on its own before a tool runs is done at the edge first:

1. `McpEdge`, in front of the SDK's ASGI app, checks the Host and Origin (DNS rebinding: 421,
   403), the method (POST only: 405) and the `X-Api-Key` (401, limited per address). It reads
   the body through the shared intake (`app.http.intake`: at most `mcp_max_body_bytes`, 413; JSON
   that is bounded, finite and Unicode, 400; `application/json`, 415), charges the message to
   its rate-limit policy (`search` for `search_knowledge`, `reads` for every other message,
   `initialize`, `ping` and `tools/list` included: 429), and only then replays the bytes to the
   SDK, adding the RateLimit fields to its answer. Each refusal there is problem+json, as REST
   answers it, before the SDK has seen a byte.
2. `_gate`, an SDK middleware, answers a `tools/call` the edge found over its limit as a tool
   result (so an agent reads `retry_after`), and gives the SDK's own refusals a code.
3. The SDK checks the arguments against the tool's schema; the tool validates them with the
   REST request model and calls the service.

Every failure after the edge is a tool result with `isError: true` whose `structuredContent` is
the problem body REST would answer (`code`, `status`, `detail`, `request_id`, and `errors` or
`retry_after` where they apply), so an agent reads the same stable `code` either way.

The server is stateless (no `Mcp-Session-Id`; JSON responses): each POST stands alone, so several
server processes behind one address need no shared session store, and no tool streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server import MCPServer, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    AppError,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    MisdirectedRequest,
    RateLimited,
    RouteNotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.http import intake
from app.http.guard import Guard
from app.http.problems import problem_body, problem_response
from app.http.ratelimit import Policy
from app.http.validation import from_validation_error
from app.models import (
    SEARCH_K_MAX,
    SEARCH_QUERY_MAX,
    KnowledgeDocPublic,
    Page,
    PersonaListItem,
    PersonaPublic,
    SearchMode,
    SearchRequest,
    SearchResponse,
)
from app.models.base import JsonObject, PublicModel
from app.models.pagination import MAX_LIMIT
from app.services import knowledge, personas
from app.services import search as search_service
from app.services.runtime import Principal, Runtime
from app.settings import Settings

log = logging.getLogger(__name__)

PATH = "/mcp"
#: Where the edge leaves the caller for the tools: a key of the request's scope (the SDK's own
#: Starlette app replaces `scope["app"]`, so the outer app's state is not reachable from there).
_CALLER = "personaizer.mcp_caller"


@dataclass(frozen=True, slots=True)
class _Caller:
    runtime: Runtime
    guard: Guard
    principal: Principal
    #: The edge's refusal of a `tools/call` over its rate limit, for `_gate` to answer as a
    #: tool result; None when the call was charged.
    refused: RateLimited | None = None


#: Each tool's rate-limit policy: its REST twin's.
POLICIES: dict[str, Policy] = {
    "search_knowledge": "search",
    "get_document": "reads",
    "list_personas": "reads",
    "get_persona": "reads",
}

#: JSON values and arrays in one MCP message, far below REST's (`strict_json.MAX_VALUES`,
#: `strict_json.MAX_ARRAYS`): the SDK parses the bytes again, on the event loop, once the edge has let
#: them through, and within `mcp_max_body_bytes` REST's counts would still let 87,000 empty
#: arrays reach it (measured: 10 ms of the loop per request warm, 50 ms cold, more when the
#: allocations set off a full garbage collection). The largest real message is a search with 1000 external_ids and 8 KiB
#: of metadata filter: at most about 5,200 values of which 2,800 arrays.
MAX_VALUES = 10_000
MAX_ARRAYS = 5_000

INSTRUCTIONS = """\
PersonAIzer knowledge: documents a user uploaded, and personas (assistants with instructions, \
a greeting and attached documents). Use search_knowledge to find passages (scoped to a persona \
with persona_id), get_document to read a whole document, list_personas and get_persona to learn \
a persona's instructions. A failed call has isError and a stable `code` in structuredContent \
(described at /problems/{code})."""


# --- the edge: Host, Origin, method, X-Api-Key, body and rate limit of every HTTP request ---


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
            self._check_host_and_origin(request)
            if request.method != "POST":
                # Stateless: no session to DELETE, and no server-initiated messages to GET (the
                # SDK would hold a GET open, an event stream that never carries anything). The
                # spec's answer for a server without that stream is 405.
                raise MethodNotAllowed(
                    f"{request.method} is not allowed here; the MCP door takes POST only.",
                    headers={"Allow": "POST"},
                )
            guard: Guard = request.app.state.guard
            principal = await guard.authenticate(request)
            raw, headers, refused = await self._take(request, guard, principal)
        except AppError as exc:
            await problem_response(exc, request)(scope, receive, send)
            return
        caller = _Caller(request.app.state.runtime, guard, principal, refused)
        # A copy: the SDK's Starlette app rewrites `app` and `route` in the scope it is given,
        # and the outer middleware reads the route (for metrics) after the response.
        inner = {**scope, _CALLER: caller}
        await self.app(inner, _replay(raw, receive), _with_headers(send, headers))

    def _check_host_and_origin(self, request: Request) -> None:
        host = request.headers.get("host", "")
        if _without_port(host) not in self.hosts:
            raise MisdirectedRequest(
                f"This server does not answer MCP for the host {host!r}; its operator can "
                "allow it with PERSONAIZER_ALLOWED_HOSTS."
            )
        origin = request.headers.get("origin")
        if origin is not None and not self._origin_allowed(origin):
            raise Forbidden(f"Pages from {origin!r} may not call this server's MCP door.")

    def _origin_allowed(self, origin: str) -> bool:
        scheme, _, authority = origin.partition("://")
        return origin in self.origins or f"{scheme}://{_without_port(authority)}" in self.origins

    async def _take(
        self, request: Request, guard: Guard, principal: Principal
    ) -> tuple[bytes, dict[str, str], RateLimited | None]:
        """The body, checked and charged: its bytes, the RateLimit fields for the answer, and
        the refusal of a `tools/call` over its limit (left for `_gate` to answer)."""
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


# --- the gate: a tool call over its limit, and the SDK's own refusals with a code --------


def error_result(exc: AppError) -> CallToolResult:
    """An AppError as a tool result: the REST problem body as structured content."""
    body = problem_body(exc, instance=PATH)
    if "Retry-After" in exc.headers:
        body["retry_after"] = int(exc.headers["Retry-After"])
    return CallToolResult(
        content=[TextContent(type="text", text=f"{exc.code}: {exc.detail}")],
        structured_content=body,
        is_error=True,
    )


def _caller(request: object) -> _Caller:
    assert isinstance(request, Request), "the MCP door is served over HTTP only"
    caller: _Caller = request.scope[_CALLER]
    return caller


async def _gate(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    if ctx.method != "tools/call" or ctx.request_id is None:
        return await call_next(ctx)
    name = str((ctx.params or {}).get("name"))
    caller = _caller(ctx.request)
    if caller.refused is not None:  # the edge charges every message; this one was over
        return error_result(caller.refused)
    result = await call_next(ctx)
    wire = result.model_dump(by_alias=True) if isinstance(result, BaseModel) else result
    if isinstance(wire, dict) and wire.get("isError") and wire.get("structuredContent") is None:
        # Every tool answers its own failures with a code, so an error without one is the SDK
        # refusing the call before the tool ran: an unknown tool, or arguments off its schema.
        text = "\n".join(c.get("text", "") for c in wire.get("content", []))
        # Pydantic's text ends each error with a link to its website; the detail stays ours.
        text = "\n".join(line for line in text.splitlines() if "errors.pydantic.dev" not in line)
        if name not in POLICIES:
            return error_result(RouteNotFound(f"No tool {name!r}."))
        return error_result(ValidationFailed(text or "The arguments do not fit the tool."))
    return result


async def _answer(
    ctx: Context, work: Callable[[Runtime, Principal], Awaitable[BaseModel]]
) -> CallToolResult:
    """Run a tool's work for the caller: its result as structured content (and as JSON text for
    clients that read only text), or its failure as an error result with the code."""
    caller = _caller(ctx.request_context.request)
    try:
        result = await work(caller.runtime, caller.principal)
    except ValidationError as exc:
        return error_result(from_validation_error(exc, where="arguments"))
    except AppError as exc:
        return error_result(exc)
    except Exception:
        log.exception("MCP tool failed")
        return error_result(
            InternalError("An unexpected error occurred; it has been logged with the request id.")
        )
    data = result.model_dump(mode="json")
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


# --- the tools ------------------------------------------------------------------------------


async def search_knowledge(
    ctx: Context,
    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=SEARCH_QUERY_MAX,
            description="What to look for: free text; any characters are safe.",
        ),
    ],
    k: Annotated[int, Field(ge=1, le=SEARCH_K_MAX, description="How many documents.")] = 5,
    mode: Annotated[
        SearchMode,
        Field(description="`hybrid` (keyword and vector rankings fused), `semantic`, `keyword`."),
    ] = "hybrid",
    persona_id: Annotated[
        str | None, Field(description="Only documents attached to this persona.")
    ] = None,
    external_ids: Annotated[
        list[str] | None,
        Field(description="Only these documents (external_ids); unknown ones are ignored."),
    ] = None,
    metadata: Annotated[
        JsonObject | None,
        Field(description='Equality filters on top-level metadata keys, e.g. {"lang": "en"}.'),
    ] = None,
    min_score: Annotated[
        float | None, Field(ge=0, le=1, description="Leave out hits scoring below this (0..1).")
    ] = None,
) -> Annotated[CallToolResult, SearchResponse]:
    """Search the user's knowledge documents. Best first, at most `k`, one hit per document (its
    best-matching chunk: `text`, `chunk_index`); `score` is higher for better hits. Scopes
    (persona_id, external_ids, metadata) combine: a hit matches every one given."""
    arguments = {
        "query": query,
        "k": k,
        "mode": mode,
        "persona_id": persona_id,
        "external_ids": external_ids,
        "metadata": metadata,
        "min_score": min_score,
    }

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        request = SearchRequest.model_validate(arguments)
        return await search_service.search(runtime=runtime, principal=principal, request=request)

    return await _answer(ctx, work)


async def get_document(
    ctx: Context,
    external_id: Annotated[str, Field(description="The document's external_id.")],
) -> Annotated[CallToolResult, KnowledgeDocPublic]:
    """One knowledge document with its whole content."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        return await knowledge.get_doc(runtime=runtime, principal=principal, external_id=external_id)

    return await _answer(ctx, work)


async def list_personas(
    ctx: Context,
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Personas per page.")] = 50,
    cursor: Annotated[
        str | None, Field(description="The next_cursor of the previous page.")
    ] = None,
) -> Annotated[CallToolResult, Page[PersonaListItem]]:
    """The user's personas, oldest first, with cursor pagination."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        return await personas.list_personas(
            runtime=runtime, principal=principal, limit=limit, cursor=cursor
        )

    return await _answer(ctx, work)


class AttachedDocument(PublicModel):
    external_id: str
    title: str | None
    char_count: int


class PersonaForAgent(PersonaPublic):
    """A persona as `get_persona` answers it: with the titles of its attached documents."""

    documents: list[AttachedDocument] = Field(
        description=f"The attached documents by external_id, the first {MAX_LIMIT}."
    )


async def get_persona(
    ctx: Context,
    persona_id: Annotated[str, Field(description="The persona's id (per_...).")],
) -> Annotated[CallToolResult, PersonaForAgent]:
    """One persona: its instructions and greeting, and its attached documents (search within
    them with search_knowledge's persona_id)."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        persona = await personas.get_persona(runtime=runtime, principal=principal, persona_id=persona_id)
        pages = await personas.knowledge_for_personas(
            runtime=runtime, principal=principal, persona_ids=[persona.id], limit=MAX_LIMIT
        )
        documents = [
            AttachedDocument(external_id=d.external_id, title=d.title, char_count=d.char_count)
            for d in pages[persona.id].items
        ]
        return PersonaForAgent(**persona.model_dump(), documents=documents)

    return await _answer(ctx, work)


_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def build_server() -> MCPServer:
    server = MCPServer(
        "personaizer",
        title="PersonAIzer knowledge",
        instructions=INSTRUCTIONS,
        version="1",
        middleware=[_gate],
    )
    for tool in (search_knowledge, get_document, list_personas, get_persona):
        server.add_tool(tool, annotations=_READ_ONLY)
    return server


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
