"""AppError -> GraphQL error, once, at the GraphQL edge.

Every error a client sees carries `extensions: {code, status, request_id}` with exactly the code
and status REST would answer, plus REST's `errors` (field errors, pointing into the operation's
arguments with camelCase names) and extra members (`missing`, quota numbers) when there are any.
Errors that GraphQL itself finds in a document (syntax, unknown fields, argument types, the
depth/alias/token guards) are `request.validation_failed`; an unexpected exception is
`server.internal_error` without its message, logged with the request id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from cross_web import HTTPException
from graphql import GraphQLError
from pydantic import BaseModel, ValidationError
from strawberry import UNSET

from app.errors import (
    AppError,
    InternalError,
    MalformedJson,
    MethodNotAllowed,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.http.logs import request_id_var
from app.http.validation import from_validation_error

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_SNAKE = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """`external_id` -> `externalId`: a model's field name as GraphQL spells it."""
    return _SNAKE.sub(lambda m: m[1].upper(), name)


def _camel_pointer(pointer: str) -> str:
    return "/".join(camel(part) for part in pointer.split("/"))


def app_error_of(error: GraphQLError) -> AppError:
    """The AppError a GraphQL error stands for."""
    original = error.original_error
    if isinstance(original, AppError):
        return original
    if error.path is None:
        # Found before execution: the document or its variables do not fit the schema.
        return ValidationFailed(error.message)
    return InternalError("An unexpected error occurred; it has been logged with the request id.")


def extensions_of(exc: AppError) -> dict[str, Any]:
    extensions: dict[str, Any] = {
        "code": exc.code,
        "status": exc.status,
        "request_id": request_id_var.get(),
    }
    if exc.errors:
        extensions["errors"] = [
            replace(e, pointer=_camel_pointer(e.pointer)).as_dict() for e in exc.errors
        ]
    extensions.update(exc.extra)
    return extensions


def format_error(error: GraphQLError) -> dict[str, Any]:
    """One entry of a response's `errors`."""
    exc = app_error_of(error)
    formatted: dict[str, Any] = dict(error.formatted)
    formatted["message"] = error.message if type(exc) is ValidationFailed else exc.detail
    formatted["extensions"] = extensions_of(exc)
    return formatted


def request_error(exc: AppError) -> dict[str, Any]:
    """A response body for a request refused before execution (no `data`)."""
    return {"errors": [{"message": exc.detail, "extensions": extensions_of(exc)}]}


def from_http_exception(exc: HTTPException) -> AppError:
    """Strawberry's own HTTP refusals, as the contract's codes."""
    if exc.status_code == 405:
        return MethodNotAllowed(exc.reason, headers={"Allow": "GET, POST"})
    if exc.reason == "Unsupported content type":
        return UnsupportedMediaType("Send the body with Content-Type: application/json.")
    if exc.reason.startswith("Unable to parse request body"):
        return MalformedJson("The body is not valid JSON.")
    return ValidationFailed(exc.reason)


def is_unexpected(error: GraphQLError) -> bool:
    return type(app_error_of(error)) is InternalError


# --- inputs --------------------------------------------------------------------------------


def given(value: object) -> dict[str, Any]:
    """An input object as the REST body it stands for: fields left out stay out, so a null
    the caller sent stays a null and a field never sent keeps its REST default."""
    return {k: v for k, v in vars(value).items() if v is not UNSET}


def validated(
    model: type[M],
    data: Mapping[str, Any],
    *,
    at: tuple[str, ...] = (),
    names: Mapping[str, str] | None = None,
) -> M:
    """`data` validated by the request model REST uses, failing with the same codes. Field
    errors point at the GraphQL arguments: under `at`, with `names` (model field -> argument)
    or else the camelCase of the field name."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        rename: Callable[[str], str] = (
            (lambda n: names.get(n) or camel(n)) if names is not None else camel
        )
        raise from_validation_error(exc, prefix=at, where="arguments", rename=rename) from exc


@contextmanager
def located(*at: str) -> Iterator[None]:
    """Field errors raised inside point under `at` (a service locates them in its own body)."""
    try:
        yield
    except AppError as exc:
        prefix = "".join(f"/{part}" for part in at)
        exc.errors = [replace(e, pointer=prefix + e.pointer) for e in exc.errors]
        raise
