"""REST operations: one declaration per route, from which both the server and the OpenAPI
document are built, so what is documented is what is validated.

Every operation runs its checks in the contract's order (API.md section 3): authentication, rate
limit, request shape and validation, then the handler (existence, quota).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.main import IncEx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import (
    AppError,
    MalformedJson,
    TooLarge,
    UnsupportedMediaType,
)
from app.guard import Guard
from app.ratelimit import Policy
from app.services.core import Core, Principal
from app.validation import from_validation_error


@dataclass
class Call:
    """What a handler gets: the validated inputs of one request."""

    request: Request
    core: Core
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
    idempotent: bool
    description: str = ""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, PathParam] = field(default_factory=dict)
    status: int = 200
    #: Success responses: status -> (model or None, description).
    responses: Mapping[int, tuple[Any, str]] = field(default_factory=dict)
    errors: tuple[type[AppError], ...] = ()
    #: Links from every success response with a body, by name.
    links: Mapping[str, Link] = field(default_factory=dict)

    def route(self) -> Route:
        return Route(self.path, self._endpoint, methods=[self.method], name=self.operation_id)

    async def _endpoint(self, request: Request) -> Response:
        state = request.app.state
        core: Core = state.core
        guard: Guard = state.guard
        principal = await guard.authenticate(request)
        headers = await guard.charge(principal, self.policy)
        try:
            query = _parse_query(self.query, request) if self.query else None
            body = await _parse_body(self.body, request, core.settings.max_body_bytes)
            response = await self.handler(
                Call(request=request, core=core, principal=principal, body=body, query=query)
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
    content = (
        model.model_dump(mode="json", exclude=exclude) if isinstance(model, BaseModel) else model
    )
    return JSONResponse(content, status_code=status, headers=dict(headers or {}))


def _parse_query(model: type[BaseModel], request: Request) -> BaseModel:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise from_validation_error(exc, parameter=True) from exc


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The body is {declared} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _parse_body(model: type[BaseModel] | None, request: Request, limit: int) -> Any:
    if model is None:
        return None
    content_type = request.headers.get("content-type", "")
    if content_type and not _is_json(content_type):
        raise UnsupportedMediaType(f"Send the body as application/json, not {content_type!r}.")
    raw = await _read_limited(request, limit)
    if not raw.strip():
        raise MalformedJson("A JSON body is required.")
    if not content_type:
        raise UnsupportedMediaType("Send the body with Content-Type: application/json.")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedJson(f"The body is not valid UTF-8 JSON: {exc}.") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
