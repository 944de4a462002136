"""REST operations: one declaration per route, from which both the server and the OpenAPI
document are built, so what is documented is what is validated.

Every operation runs its checks in the contract's order (API.md section 3): authentication (with
the key's origin rule), scope, rate limit, request shape and validation, then the handler
(existence, quota). Each declares its rate-limit `policy` and the key `scope` it needs side by
side, so the list of operations is the one table of both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.main import IncEx
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import AppError
from app.http import intake
from app.http.guard import Guard
from app.http.ratelimit import Policy
from app.http.validation import from_validation_error, validation_context
from app.models import Scope
from app.services.runtime import Principal, Runtime


class RawConvertor(Convertor[str]):
    """`{name:raw}`: the rest of the path, as decoded, whatever it holds. Starlette's own `path`
    convertor is `.*`, whose `.` stops at a newline, and the route's closing `$` then matches
    before it: `a%0A` would route as `a`. Here every character is taken, and the parameter's own
    validation refuses what it must."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("raw", RawConvertor())


#: A query model field's JSON Schema key marking parameters OpenAPI cannot name one by one
#: (`metadata.<key>`): left out of the parameters, documented in the operation's description.
DYNAMIC_PARAMETERS = "x-dynamic-parameters"


@dataclass
class Call:
    """What a handler gets: the validated inputs of one request."""

    request: Request
    runtime: Runtime
    principal: Principal
    body: Any = None
    query: Any = None

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class PathParam:
    """A path parameter as documented: `type_` is what the handler validates it as (its JSON
    schema, pattern included, goes into the document), `example` feeds the examples phase."""

    description: str
    type_: Any = str
    example: str | None = None


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from a success response to another operation: what a client (or a
    stateful fuzzer) can call next with values taken from this request or response."""

    operation_id: str
    #: Parameter name -> runtime expression, e.g. `$response.body#/id`.
    parameters: Mapping[str, str]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    handler: Handler
    tag: str
    policy: Policy
    #: The key scope it needs (API.md section 12); outside it: 403 auth.insufficient_scope.
    scope: Scope
    idempotent: bool
    #: Scopes it needs besides `scope` (listing a persona's documents reads documents too).
    extra_scopes: tuple[Scope, ...] = ()
    description: str = ""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, PathParam] = field(default_factory=dict)
    status: int = 200
    #: Success responses: status -> (model or None, description).
    responses: Mapping[int, tuple[Any, str]] = field(default_factory=dict)
    errors: tuple[type[AppError], ...] = ()
    #: The pattern Starlette matches, when it is wider than the documented `path`: Starlette
    #: decodes `%2F` to `/` before routing, so a parameter that may hold one is matched with
    #: `:path` and then refused by its own validation (422), not as a missing route (404).
    route_path: str | None = None
    #: Links from every success response with a body, by name.
    links: Mapping[str, Link] = field(default_factory=dict)

    def route(self) -> Route:
        return Route(
            self.route_path or self.path,
            self._endpoint,
            methods=[self.method],
            name=self.operation_id,
        )

    async def _endpoint(self, request: Request) -> Response:
        state = request.app.state
        runtime: Runtime = state.runtime
        guard: Guard = state.guard
        principal = await guard.authenticate(request)
        for scope in (self.scope, *self.extra_scopes):
            guard.require(principal, scope)
        headers = await guard.charge(principal, self.policy)
        try:
            query = _parse_query(self.query, request) if self.query else None
            body = await _parse_body(
                self.body, request, limit=runtime.settings.max_body_bytes, principal=principal
            )
            response = await self.handler(
                Call(request=request, runtime=runtime, principal=principal, body=body, query=query)
            )
        except AppError as exc:
            exc.headers.update(headers)
            raise
        response.headers.update(headers)
        return response


def json_response(
    model: BaseModel | dict[str, Any],
    status: int = 200,
    *,
    headers: Mapping[str, str] | None = None,
    exclude: IncEx | None = None,
) -> Response:
    if isinstance(model, BaseModel):
        # Serialized by pydantic in one step: a tenth of a millisecond less for a page of
        # search hits than dumping to Python objects and encoding those.
        return Response(
            model.model_dump_json(exclude=exclude),
            status_code=status,
            headers=dict(headers or {}),
            media_type="application/json",
        )
    return JSONResponse(model, status_code=status, headers=dict(headers or {}))


def _query_dict(request: Request) -> dict[str, Any]:
    """The query parameters, each once (the last, as Starlette's dict has it), except that a
    repeated `metadata.<key>` keeps all its values (a list): an equality filter given twice is
    refused rather than decided by order."""
    data: dict[str, Any] = dict(request.query_params)
    for name in data:
        if name.startswith("metadata."):
            values = request.query_params.getlist(name)
            if len(values) > 1:
                data[name] = values
    return data


def _parse_query(model: type[BaseModel], request: Request) -> BaseModel:
    try:
        return model.model_validate(_query_dict(request))
    except ValidationError as exc:
        raise from_validation_error(exc, parameter=True) from exc


async def _parse_body(
    model: type[BaseModel] | None, request: Request, *, limit: int, principal: Principal
) -> Any:
    if model is None:
        return None
    context = validation_context(principal.plan.limits)

    def validate(data: Any) -> BaseModel:
        # Runs where the body was parsed: in a worker thread when the body is large.
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            raise from_validation_error(exc) from exc

    return await intake.read_json(request, limit=limit, then=validate)
