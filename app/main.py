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
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app import rest, web
from app.embedding.embedder import Embedder, LocalModel, Model
from app.errors import Unavailable
from app.graphql.view import explorer_routes, graphql_route
from app.http.guard import Guard
from app.http.keycors import KeyCorsMiddleware
from app.http.metrics import Metrics
from app.http.middleware import RequestContextMiddleware
from app.http.problems import problem_response
from app.http.ratelimit import RateLimiter
from app.mcp import build_server, mcp_route
from app.rest.openapi import build_openapi
from app.rest.system import Readiness
from app.services.runtime import Runtime
from app.settings import Settings
from app.storage.database import Database, DatabaseUnreachable
from app.web.headers import SecurityHeadersMiddleware

log = logging.getLogger(__name__)

#: How long a thread may hold the interpreter while another waits for it (CPython's default is
#: 5 ms). Work that cannot leave the interpreter runs on worker threads (parsing a 10 MB body,
#: tokenising for the model), and every request hops threads several times (aiosqlite runs each
#: statement on its own thread), paying up to this interval at each hop: 20-odd hops made a
#: /healthz wait 120 ms behind one large body; at 1 ms it waits under 40.
GIL_SWITCH_INTERVAL_S = 0.001
#: Seconds between tries of a database that cannot be reached at start: doubled each time, up to
#: `OPEN_RETRY_MAX_S`, so a server started before its PostgreSQL is ready within seconds of it.
OPEN_RETRY_FIRST_S = 0.5
OPEN_RETRY_MAX_S = 5.0
#: What answers while the database is not open yet: health, and what needs no database.
_OPEN_BEFORE_DATABASE = frozenset(
    {"/", "/livez", "/readyz", "/healthz", "/openapi.json", "/docs", "/problems"}
)


class UntilOpen:
    """Answers 503 (Retry-After) to every request that needs the database until the lifespan
    has opened it: a server started while PostgreSQL is down serves /livez and /readyz
    meanwhile, and nothing reaches a database whose schema is not made yet."""

    def __init__(self, app: ASGIApp, readiness: Readiness) -> None:
        self.app = app
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.readiness.schema is None
            or scope["type"] == "lifespan"
            or scope["path"] in _OPEN_BEFORE_DATABASE
            or scope["path"].startswith("/problems/")
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a websocket: "try again later"
            await send({"type": "websocket.close", "code": 1013})
            return
        exc = Unavailable(
            "The server is waiting for its database; retry shortly.",
            headers={"Retry-After": "2"},
        )
        await problem_response(exc, Request(scope))(scope, receive, send)


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

        queries = settings.encoder_query_thread_count
        # One session unless documents are given threads of their own: a session holds its
        # copy of the weights (~90 MB a process).
        return partial(
            OnnxModel,
            settings.encoder_cache_path,
            model_dir=settings.encoder_model_dir,
            threads=queries if settings.encoder_threads is None else settings.encoder_threads,
            urgent_threads=queries,
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
    metrics = Metrics(embedder, limiter=limiter)
    readiness = Readiness()
    mcp_server = build_server()
    mcp = mcp_route(mcp_server, settings)

    async def open_database(*, first: DatabaseUnreachable) -> None:
        """Try again, with backoff, a database that could not be reached at start; once open,
        start what needs it. Each try is logged (app/http/logs.py holds back repeats)."""
        delay, attempt, error = OPEN_RETRY_FIRST_S, 1, first
        while True:
            readiness.schema = f"waiting for the database: {error}"
            log.warning(
                "the database cannot be reached yet (try %d): %s; trying again in %g s",
                attempt,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            delay, attempt = min(delay * 2, OPEN_RETRY_MAX_S), attempt + 1
            try:
                await db.migrate()
            except DatabaseUnreachable as exc:
                error = exc
            except Exception as exc:
                # Reachable but unusable (a newer schema...): not ready until an operator acts.
                readiness.schema = str(exc)
                log.error("the database cannot be used: %s", exc)
                return
            else:
                break
        log.info("the database answers: %s is open (after %d tries)", db.where, attempt)
        started()

    background: list[asyncio.Task[None]] = []

    def started() -> None:
        """The database is open at this build's schema: what needs it may start."""
        readiness.schema = None
        background.extend(asyncio.create_task(hook(runtime)) for hook in app.state.startup_hooks)
        background.append(asyncio.create_task(runtime.requests.run(db)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        opening: asyncio.Task[None] | None = None
        try:
            await db.migrate()
        except DatabaseUnreachable as exc:
            # PostgreSQL not up yet (or restarting): serve /livez, /readyz 503, and wait for it.
            opening = asyncio.create_task(open_database(first=exc))
        else:
            started()
        await embedder.start()
        await limiter.check()  # an unreachable Redis is known (and logged) from the start
        log.info("data in %s", db.where)
        try:
            # The MCP door's requests run in the session manager's task group.
            async with mcp_server.session_manager.run():
                yield
        finally:
            for task in (*([opening] if opening else []), *background):
                task.cancel()
            for task in (*([opening] if opening else []), *background):
                with suppress(asyncio.CancelledError):
                    await task
            if readiness.schema is None:
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
            Middleware(KeyCorsMiddleware, server_origins=settings.cors_origins),
            *_cors(settings),
            Middleware(UntilOpen, readiness=readiness),
        ],
        exception_handlers=rest.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.guard = Guard(runtime, limiter)
    app.state.openapi = build_openapi(rest.OPERATIONS)
    app.state.metrics = metrics
    app.state.readiness = readiness
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
