"""create_app(): wires the REST and GraphQL doors onto one core. The only module importing both."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from app import rest, web
from app.embedding.embedder import Embedder, LocalModel, Model
from app.graphql.view import explorer_routes, graphql_route
from app.http.guard import Guard
from app.http.metrics import Metrics
from app.http.middleware import RequestContextMiddleware
from app.http.ratelimit import RateLimiter
from app.mcp import build_server, mcp_route
from app.rest.openapi import build_openapi
from app.services.runtime import Runtime
from app.settings import Settings
from app.storage.database import Database
from app.web.headers import SecurityHeadersMiddleware

log = logging.getLogger(__name__)

#: How long a thread may hold the interpreter while another waits for it (CPython's default is
#: 5 ms). Work that cannot leave the interpreter runs on worker threads (parsing a 10 MB body,
#: tokenising for the model), and every request hops threads several times (aiosqlite runs each
#: statement on its own thread), paying up to this interval at each hop: 20-odd hops made a
#: /healthz wait 120 ms behind one large body; at 1 ms it waits under 40.
GIL_SWITCH_INTERVAL_S = 0.001


def _cors(settings: Settings) -> list[Middleware]:
    if not settings.cors_origins:
        return []
    # API keys travel in a header, not cookies, so credentials stay off; the dashboard is
    # same-origin only (its session cookie is SameSite=Strict).
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["X-Api-Key", "Content-Type", "X-Request-Id"],
            expose_headers=[
                "X-Request-Id",
                "RateLimit",
                "RateLimit-Policy",
                "Retry-After",
                "Location",
            ],
            max_age=600,
        )
    ]


def model_loader(settings: Settings) -> Callable[[], Model]:
    """The encoder `PERSONAIZER_ENCODER` names (the onnx module is imported only when chosen)."""
    if settings.encoder == "onnx":
        from app.embedding.onnx_encoder import OnnxModel

        return partial(
            OnnxModel,
            settings.encoder_cache_path,
            model_dir=settings.encoder_model_dir,
            threads=settings.encoder_threads,
            urgent_threads=settings.encoder_query_thread_count,
        )
    return LocalModel


def create_app(
    settings: Settings, *, model: Model | None = None, loader: Callable[[], Model] | None = None
) -> Starlette:
    """The ASGI app. `model` lets a caller share an already loaded embedding model (tests do);
    without it the model loads in the background (`loader`, else the configured encoder) and
    /healthz answers 503 until it is ready."""
    db = Database(settings)
    embedder = Embedder(
        model=model,
        max_batch=settings.embedder_batch_size,
        bulk_workers=settings.embedder_bulk_workers,
        loader=loader or model_loader(settings),
    )
    runtime = Runtime(settings=settings, db=db, embedder=embedder)
    limiter = RateLimiter(settings)
    metrics = Metrics(embedder)
    mcp_server = build_server()
    mcp = mcp_route(mcp_server, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        await db.migrate()
        await embedder.start()
        log.info("data in %s", db.where)
        tasks = [asyncio.create_task(hook(runtime)) for hook in app.state.startup_hooks]
        flusher = asyncio.create_task(runtime.requests.run(db))
        try:
            # The MCP door's requests run in the session manager's task group.
            async with mcp_server.session_manager.run():
                yield
        finally:
            for task in tasks:
                task.cancel()
            flusher.cancel()
            with suppress(asyncio.CancelledError):
                await flusher
            await runtime.requests.flush_or_log(db)  # the last requests of this process
            await embedder.stop()
            await db.dispose()

    app = Starlette(
        routes=[
            *rest.routes(),
            graphql_route(settings),
            *explorer_routes(settings),
            mcp,
            *web.routes(settings),
        ],
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(RequestContextMiddleware, metrics=metrics),
            *_cors(settings),
        ],
        exception_handlers=rest.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.guard = Guard(runtime, limiter)
    app.state.openapi = build_openapi(rest.OPERATIONS)
    app.state.metrics = metrics
    #: Background jobs started once the server is up (the CLI's --demo seeding is one).
    app.state.startup_hooks = []
    return app


def app_from_environment() -> Starlette:
    """The app as a worker of `personaizer serve --workers N` builds it: settings from the
    PERSONAIZER_* environment, which every worker process inherits."""
    from app.http import logs

    settings = Settings()
    logs.configure(settings.log_level, json_lines=settings.log_format == "json")
    return create_app(settings)


def graphql_sdl() -> str:
    """The GraphQL schema (SDL) the server serves, exactly as `schema.graphql` holds it (and as
    `strawberry export-schema app.graphql.schema:schema` prints it), for `personaizer
    export-schema`: the CLI reaches the GraphQL door only through this wiring."""
    from strawberry.printer import print_schema

    from app.graphql.schema import schema

    return print_schema(schema) + "\n"
