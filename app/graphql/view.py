"""The `/graphql` endpoint: Strawberry's ASGI view with the contract's gate in front.

Per request, in the contract's order (API.md section 3): authenticate (`X-Api-Key`, the same
`Guard` as REST), read the body (size limit, JSON), charge the rate limit once for the whole
operation (`app.graphql.charging`: writes per mutation field, searches per search field), then
validate and execute. A refusal before execution (authentication, rate limit, a body that is
not a GraphQL request) answers with its own HTTP status and a body of `errors` only; everything
GraphQL decides itself (invalid documents, guard limits, domain errors while executing) is
HTTP 200 with `errors` (docs/decisions.md, "GraphQL").
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import OperationType
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.types import ExecutionResult

from app.errors import AppError, MethodNotAllowed, RouteNotFound, TooLarge
from app.graphql.charging import classify
from app.graphql.context import Context, get_context
from app.graphql.errors import format_error, from_http_exception, request_error
from app.graphql.schema import schema
from app.settings import Settings

PATH = "/graphql"
#: The explorer's page and assets (GraphiQL, vendored from npm with its licences; no CDN).
EXPLORER_DIR = Path(__file__).parent / "static" / "graphiql"
EXPLORER_PATH = "/static/graphiql"


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive`, refusing a body over `limit` bytes while it streams in."""
    size = 0

    async def receive_limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise TooLarge(f"The body is over the limit of {limit} bytes.")
        return message

    return receive_limited


class GraphQLView(GraphQL[Context, None]):
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
        request = Request(scope, receive=_limited(receive, self.max_body_bytes))
        context: Context | None = None
        response: Response
        try:
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise TooLarge(f"The body is {declared} bytes; the limit is {self.max_body_bytes}.")
            if self.should_render_graphql_ide(self.request_adapter_class(request)):
                # The GraphiQL page holds no data; its requests authenticate like any other.
                if self.graphql_ide is None:
                    raise RouteNotFound("GraphiQL is not enabled on this server.")
                response = await self.render_graphql_ide(request)
            else:
                context = await get_context(request)
                response = await self.run(request, context=context)
        except HTTPException as exc:
            response = _refusal(from_http_exception(exc))
        except AppError as exc:
            response = _refusal(exc)
        if context is not None:
            response.headers.update(context.response_headers)
        await response(scope, receive, send)

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
        kind = classify(request_data.query, request_data.operation_name)
        if kind.operation is OperationType.MUTATION and request_adapter.method == "GET":
            # Refused before charging, as REST refuses a method a route does not take.
            raise MethodNotAllowed("Send mutations with POST.", headers={"Allow": "POST"})
        headers = await context.guard.charge(context.principal, kind.policy, cost=kind.cost)
        context.response_headers.update(headers)
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
