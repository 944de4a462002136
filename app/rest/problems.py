"""AppError -> RFC 9457 problem+json, once, at the REST edge."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from app.errors import (
    AppError,
    FieldError,
    InvalidExternalId,
    ValidationFailed,
)
from app.logs import request_id_var

PROBLEM_JSON = "application/problem+json"


def problem_body(exc: AppError, *, instance: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/problems/{exc.code}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": instance,
        "code": exc.code,
        "request_id": request_id_var.get(),
    }
    if exc.errors:
        body["errors"] = [e.as_dict() for e in exc.errors]
    body.update(exc.extra)
    return body


def instance_of(scope_path: str, raw_path: bytes | None = None) -> str:
    if raw_path:
        return raw_path.decode("latin-1").split("?", 1)[0]
    return quote(scope_path)


def problem_response(exc: AppError, request: Request) -> Response:
    instance = instance_of(request.url.path, request.scope.get("raw_path"))
    body = json.dumps(problem_body(exc, instance=instance), ensure_ascii=False)
    return Response(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=exc.headers)


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def from_validation_error(
    exc: ValidationError, *, prefix: tuple[int | str, ...] = (), parameter: bool = False
) -> ValidationFailed:
    """A pydantic error as the contract's 422: one FieldError per field, JSON Pointers.

    The problem's own `code` is the specific one (`knowledge.invalid_external_id`) when every
    field error has it, else `request.validation_failed`.
    """
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        code = err["type"] if err["type"] == InvalidExternalId.code else ValidationFailed.code
        name = str(loc[0]) if parameter and loc else None
        errors.append(
            FieldError(
                pointer=_pointer(prefix + loc), code=code, message=err["msg"], parameter=name
            )
        )
    codes = {e.code for e in errors}
    cls = InvalidExternalId if codes == {InvalidExternalId.code} else ValidationFailed
    where = "query parameters" if parameter else "request body"
    detail = f"{len(errors)} field(s) of the {where} failed validation: " + "; ".join(
        f"{e.parameter or e.pointer or '/'}: {e.message}" for e in errors[:5]
    )
    return cls(detail, errors=errors)
