"""AppError -> RFC 9457 problem+json, once, at the REST edge."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from app.errors import AppError
from app.http.logs import request_id_var

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
