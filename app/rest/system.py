"""Unauthenticated routes: the landing page, health, the OpenAPI document and its rendering,
problem types, and the operators' metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from app.errors import ERRORS_BY_CODE, AppError, RouteNotFound, Unavailable
from app.http.problems import problem_response

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
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/problems", problem_index, methods=["GET"]),
    Route("/problems/{code:str}", problem_type, methods=["GET"]),
]
