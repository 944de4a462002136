"""The outermost REST middleware: request ids, the access log, and the last-resort 500.

Pure ASGI (no BaseHTTPMiddleware) so streaming bodies and lifespan pass through untouched. It sits
inside Starlette's ServerErrorMiddleware but catches everything itself, so even a crash answers
problem+json with the request id, and never a stack trace.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import InternalError
from app.http.logs import request_id_var
from app.http.metrics import Metrics
from app.http.problems import PROBLEM_JSON, instance_of, problem_body

log = logging.getLogger("personaizer.access")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if REQUEST_ID_RE.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def operation_of(scope: Scope) -> str:
    """The metrics' name for what answered: the matched route's name, `unmatched` for none."""
    route = scope.get("route")
    name = getattr(route, "name", None)
    return str(name) if name else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client left mid-request, or `serve`'s read deadline cut it off: there is no
            # one to answer and nothing broke. 499 (nginx's "client closed request") in the log.
            status = status or 499
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status:  # the response had started; nothing sane can be sent now
                raise
            status = 500
            await _send_internal_error(scope, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                },
            )
            if self.metrics is not None:
                self.metrics.observe_request(operation_of(scope), scope["method"], status, seconds)
            request_id_var.reset(token)


async def _send_internal_error(scope: Scope, send: Send) -> None:
    import json

    exc = InternalError("An unexpected error occurred; it has been logged with the request id.")
    body = json.dumps(
        problem_body(exc, instance=instance_of(scope["path"], scope.get("raw_path")))
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
