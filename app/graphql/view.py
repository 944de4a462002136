"""The `/graphql` endpoint: Strawberry's ASGI view with the contract's gate in front.

Per request, in the contract's order (API.md section 3): authenticate (`X-Api-Key`, the same
`Guard` as REST), read the body (through REST's own intake, `app.http.intake`), charge the rate limit
once for the whole operation (`app.graphql.charging`: writes per mutation field, searches per
search field), refuse lists that are too long from their length (`app.graphql.variable_limits`), then
validate and execute. A refusal before execution (authentication, rate limit, a body that is
not a GraphQL request) answers with its own HTTP status and a body of `errors` only; everything
GraphQL decides itself (invalid documents, guard limits, domain errors while executing) is
HTTP 200 with `errors` (docs/decisions.md, "GraphQL").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cross_web import AsyncHTTPRequestAdapter, HTTPException, StarletteRequestAdapter
from graphql import OperationType
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.types import ExecutionResult

from app.errors import AppError, MethodNotAllowed, RouteNotFound, ValidationFailed
from app.graphql.charging import classify
from app.graphql.context import Context, get_context
from app.graphql.errors import format_error, from_http_exception, request_error
from app.graphql.schema import schema
from app.graphql.variable_limits import refuse_long_lists
from app.http import intake
from app.models import strict_json
from app.services.runtime import Principal
from app.settings import Settings

PATH = "/graphql"
#: The explorer's page and assets (GraphiQL, vendored from npm with its licences; no CDN).
EXPLORER_DIR = Path(__file__).parent / "static" / "graphiql"
EXPLORER_PATH = "/static/graphiql"


class RequestAdapter(StarletteRequestAdapter):
    """Strawberry's view of a request, keeping the Starlette request for the shared intake."""

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.request = request


class GraphQLView(GraphQL[Context, None]):
    request_adapter_class = RequestAdapter

    def __init__(self, *, graphiql: bool, max_body_bytes: int) -> None:
        super().__init__(
            schema,
            # Strawberry's own GraphiQL page loads from a CDN; `graphql_ide_html` serves ours.
            graphql_ide="graphiql" if graphiql else None,
            allow_queries_via_get=True,
            subscription_protocols=(),
        )
        self.max_body_bytes = max_body_bytes

    @cached_property
    def graphql_ide_html(self) -> str:
        """The explorer page: GraphiQL from the package's own files."""
        return (EXPLORER_DIR / "explorer.html").read_text(encoding="utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive=receive)
        context: Context | None = None
        response: Response
        try:
            if self.should_render_graphql_ide(self.request_adapter_class(request)):
                # The GraphiQL page holds no data; its requests authenticate like any other.
                if self.graphql_ide is None:
                    raise RouteNotFound("GraphiQL is not enabled on this server.")
                response = await self.render_graphql_ide(request)
            else:
                context = await get_context(request)
                request.state.principal = context.principal  # for `parse_http_body`
                response = await self.run(request, context=context)
        except HTTPException as exc:
            response = _refusal(from_http_exception(exc))
        except AppError as exc:
            response = _refusal(exc)
        if context is not None:
            response.headers.update(context.response_headers)
        await response(scope, receive, send)

    async def parse_http_body(
        self, request_adapter: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        """A POST body through the same intake as every REST body (media type, size, UTF-8,
        bounded JSON), so the same bytes get the same answer at both doors."""
        if request_adapter.method != "POST":
            return await super().parse_http_body(request_adapter)
        assert isinstance(request_adapter, RequestAdapter)
        principal: Principal = request_adapter.request.state.principal

        def bounded(data: object) -> GraphQLRequestData:
            # Where the body was parsed (a worker thread when it is large), so that a list too
            # long to run is refused, and freed, there: not item by item on the event loop.
            request = request_data(data)
            refusal = refuse_long_lists(request, principal)
            if refusal is None:
                return request
            return RefusedRequestData(
                query=request.query,
                variables=None,
                operation_name=request.operation_name,
                extensions=None,
                refusal=refusal,
            )

        return await intake.read_json(
            request_adapter.request, limit=self.max_body_bytes, then=bounded
        )

    def decode_json(self, data: str | bytes) -> object:
        # The JSON in a GET's query string (`variables`, `extensions`), as bounded as a body.
        return strict_json.loads(data)

    async def get_context(self, request: Request | object, response: object) -> Context:
        assert isinstance(request, Request)
        return await get_context(request)

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        kind = classify(request_data.query, request_data.operation_name, request_data.variables)
        if kind.operation is OperationType.MUTATION and request_adapter.method == "GET":
            # Refused before charging, as REST refuses a method a route does not take.
            raise MethodNotAllowed("Send mutations with POST.", headers={"Allow": "POST"})
        headers = await context.guard.charge(context.principal, kind.policy, cost=kind.cost)
        context.response_headers.update(headers)
        # Before graphql-core coerces the variables (item by item, on the event loop).
        if isinstance(request_data, RefusedRequestData):
            return request_data.refusal
        refused = refuse_long_lists(request_data, context.principal)
        if refused is not None:
            return refused
        result = await super().execute_single(
            request=request,
            request_adapter=request_adapter,
            sub_response=sub_response,
            context=context,
            root_value=root_value,
            request_data=request_data,
        )
        for error in result.errors or ():
            if isinstance(error.original_error, AppError):
                context.response_headers.update(error.original_error.headers)
        return result

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        response: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            response["errors"] = [format_error(e) for e in result.errors]
        if result.extensions:
            response["extensions"] = result.extensions
        return response


def _refusal(exc: AppError) -> Response:
    return JSONResponse(request_error(exc), status_code=exc.status, headers=exc.headers)


def explorer_routes(settings: Settings) -> list[BaseRoute]:
    """The explorer's assets, where it is on (`Settings.graphiql_enabled`)."""
    if not settings.graphiql_enabled:
        return []
    return [Mount(EXPLORER_PATH, StaticFiles(directory=EXPLORER_DIR), name="graphiql")]


def graphql_route(settings: Settings) -> Route:
    """`/graphql` for every method: the view answers GET and POST, and refuses the others in
    GraphQL's error shape."""
    view = GraphQLView(graphiql=settings.graphiql_enabled, max_body_bytes=settings.max_body_bytes)
    return Route(PATH, view, name="graphql")


@dataclass
class RefusedRequestData(GraphQLRequestData):
    """A request refused while its body was read, its variables already dropped: charged to the
    rate limit like any other, then answered with `refusal`."""

    refusal: ExecutionResult = field(kw_only=True)


def request_data(data: object) -> GraphQLRequestData:
    """A parsed body as one GraphQL request; anything else is `request.validation_failed`."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            "The body must be one GraphQL request, a JSON object with `query` "
            "(batches of requests are not supported)."
        )
    for name, kind in (("query", "string"), ("operationName", "string"), ("variables", "object")):
        value = data.get(name)
        if value is not None and not isinstance(value, str if kind == "string" else dict):
            raise ValidationFailed(f"`{name}` must be a {kind} or null.")
    extensions = data.get("extensions")
    return GraphQLRequestData(
        query=data.get("query"),
        variables=data.get("variables"),
        operation_name=data.get("operationName"),
        extensions=extensions if isinstance(extensions, dict) else None,
    )
