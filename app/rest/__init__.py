"""The REST door: Starlette routes over the services, errors as problem+json."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from app.errors import AppError, MethodNotAllowed, RouteNotFound
from app.http.problems import problem_response
from app.rest import knowledge, personas, search, subscription, system
from app.rest.operations import Operation

OPERATIONS: list[Operation] = [
    *knowledge.OPERATIONS,
    *search.OPERATIONS,
    *personas.OPERATIONS,
    *subscription.OPERATIONS,
]


def routes() -> list[BaseRoute]:
    return [*system.ROUTES, *(op.route() for op in OPERATIONS)]


async def app_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem_response(exc, request)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own routing errors, in the contract's shape."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    error: AppError
    if exc.status_code == 405:
        allow = _allowed_methods(request)
        error = MethodNotAllowed(
            f"{request.method} is not allowed here; allowed: {allow}.",
            headers={**headers, "Allow": allow},
        )
    elif exc.status_code == 404:
        error = RouteNotFound(f"No route {request.method} {request.url.path}.")
    else:
        error = AppError(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
    return problem_response(error, request)


def _allowed_methods(request: Request) -> str:
    # Starlette's Allow names only the first route matching the path; several routes (one per
    # operation) can share a path, so gather them all.
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "OPTIONS-PROBE"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


EXCEPTION_HANDLERS = {AppError: app_error_handler, HTTPException: http_error_handler}
