"""Unauthenticated routes: the landing page, health, the OpenAPI document and its rendering,
problem types, and the operators' metrics.

Health is three questions, none authenticated nor rate limited (docs/scaling.md has the table):

- `GET /livez`: is the process alive (its event loop answers)? Always 200; a load balancer or
  orchestrator restarts the process only when this fails.
- `GET /readyz`: should it get traffic? 200 when the model is loaded, the database answers, its
  schema is this build's, and rate limits work (Redis answers, or is down under the `open`
  policy: 200 with `status: degraded` and the reason); 503 otherwise. Every check is named in
  the body, with the reason of any that is not `ok`. The database ping is reused for
  `PING_TTL_S`, so a poller in a loop costs the database at most one `SELECT 1` a second.
- `GET /healthz`: the model and a database ping, as before (kept for existing probes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from app.errors import ERRORS_BY_CODE, AppError, RouteNotFound, Unavailable
from app.http.problems import problem_response
from app.http.ratelimit import RateLimiter
from app.services.runtime import Runtime

#: Seconds /readyz reuses a database ping's outcome.
PING_TTL_S = 1.0
#: Seconds a /readyz database ping may take before it counts as a failure.
PING_TIMEOUT_S = 2.0

CheckStatus = Literal["ok", "degraded", "failing"]

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
#: CommonMark plus tables, with raw HTML off: a description's `<b>` shows as text, escaped.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown(text: str | None) -> Markup:
    """The OpenAPI descriptions' Markdown as HTML, rendered on the server (no script)."""
    return Markup(_markdown.render(text or ""))


_templates.filters["markdown"] = markdown


async def index(request: Request) -> Response:
    settings = request.app.state.runtime.settings
    page = _templates.get_template("index.html").render(
        base=str(request.base_url).rstrip("/"),
        graphiql=settings.graphiql_enabled,
        metrics=settings.metrics,
    )
    return HTMLResponse(page)


async def healthz(request: Request) -> Response:
    runtime = request.app.state.runtime
    parts: dict[str, str] = {"database": "ok", "embedder": "ok"}
    try:
        await asyncio.wait_for(runtime.db.ping(), timeout=5)
    except Exception:
        parts["database"] = "unavailable"
    if runtime.embedder.load_error is not None:
        parts["embedder"] = "failed"
    elif not runtime.embedder.ready:
        parts["embedder"] = "loading"
    if all(v == "ok" for v in parts.values()):
        return JSONResponse({"status": "ok", **parts})
    failing = ", ".join(f"{k} {v}" for k, v in parts.items() if v != "ok")
    exc = Unavailable(
        f"Not ready: {failing}.",
        extra=parts,
        headers={"Retry-After": "5"},
    )
    return problem_response(exc, request)


class Readiness:
    """What /readyz knows beyond a request: whether the lifespan has opened the database at
    this build's schema (`schema`: None once it has, else why not), and the last database
    ping. `clock` (monotonic seconds) is the tests' to turn."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.schema: str | None = "the database is not opened yet"
        self._pinged: tuple[float, str | None] | None = None
        # Probes arriving together wait for one ping instead of each running their own.
        self._pinging = asyncio.Lock()

    async def database(self, runtime: Runtime) -> str | None:
        """None when the database answered a ping in the last `PING_TTL_S`, else why not."""
        async with self._pinging:
            if self._pinged is not None and self.clock() - self._pinged[0] < PING_TTL_S:
                return self._pinged[1]
            problem: str | None = None
            try:
                async with asyncio.timeout(PING_TIMEOUT_S):
                    await runtime.db.ping()
            except TimeoutError:
                problem = f"no answer within {PING_TIMEOUT_S:g} s"
            except Exception as exc:
                problem = _reason(exc)
            self._pinged = (self.clock(), problem)
            return problem


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong underneath (the driver's error, not only our 503)."""
    cause = exc.__cause__ or exc
    cause = getattr(cause, "orig", None) or cause
    lines = str(cause).strip().splitlines() or [cause.__class__.__name__]
    return lines[0]


async def livez(request: Request) -> Response:
    """The process answers: nothing else is checked, so a dependency's outage never gets a
    healthy process restarted."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    runtime: Runtime = state.runtime
    readiness: Readiness = state.readiness
    limiter: RateLimiter = state.guard.limiter
    checks: dict[str, dict[str, str]] = {}

    def check(name: str, status: CheckStatus, reason: str | None = None) -> None:
        checks[name] = (
            {"status": status} if reason is None else {"status": status, "reason": reason}
        )

    embedder = runtime.embedder
    if embedder.load_error is not None:
        check("model", "failing", f"the model failed to load: {embedder.load_error}")
    elif not embedder.ready:
        check("model", "failing", "the model is loading")
    else:
        check("model", "ok")
    problem = await readiness.database(runtime)
    check("database", "ok" if problem is None else "failing", problem)
    check("schema", "ok" if readiness.schema is None else "failing", readiness.schema)
    limits = await limiter.check()
    check("rate_limits", limits.status, limits.reason)

    statuses = {c["status"] for c in checks.values()}
    if "failing" not in statuses:
        status = "degraded" if "degraded" in statuses else "ok"
        return JSONResponse({"status": status, "checks": checks})
    failing = "; ".join(
        f"{name}: {c['reason']}" for name, c in checks.items() if c["status"] == "failing"
    )
    exc = Unavailable(
        f"Not ready: {failing}.", extra={"checks": checks}, headers={"Retry-After": "5"}
    )
    return problem_response(exc, request)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def docs(request: Request) -> Response:
    spec: dict[str, Any] = request.app.state.openapi
    page = _templates.get_template("docs.html").render(spec=spec)
    return HTMLResponse(page)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (app/http/metrics.py); off with PERSONAIZER_METRICS=false."""
    state = request.app.state
    if not state.runtime.settings.metrics:
        return problem_response(RouteNotFound("Metrics are turned off on this server."), request)
    await state.guard.limiter.check()  # the degraded gauge as of now, even with no traffic
    await state.metrics.refresh(state.runtime)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def problem_type(request: Request) -> Response:
    code = request.path_params["code"]
    cls: type[AppError] | None = ERRORS_BY_CODE.get(code)
    if cls is None:
        return problem_response(RouteNotFound(f"No problem type {code!r}."), request)
    return JSONResponse(
        {
            "type": f"/problems/{cls.code}",
            "code": cls.code,
            "title": cls.title,
            "status": cls.status,
            "description": cls.description,
        }
    )


async def problem_index(request: Request) -> Response:
    return JSONResponse(
        {
            "items": [
                {"code": c.code, "status": c.status, "title": c.title, "description": c.description}
                for c in ERRORS_BY_CODE.values()
            ]
        }
    )


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/problems", problem_index, methods=["GET"]),
    Route("/problems/{code:str}", problem_type, methods=["GET"]),
]
