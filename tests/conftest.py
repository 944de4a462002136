"""Shared fixtures: the real model (loaded once per run), a fresh app per test on its own
database, and an HTTP client speaking to it through ASGI (the full middleware and routing stack).

Every test that starts an app runs on both engines: `engine` is parametrized over SQLite (a file
under the test's tmp_path) and PostgreSQL (a fresh database on one embedded server per run).
`--engines sqlite` (or PERSONAIZER_TEST_ENGINES=sqlite) runs one only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.embedding.embedder import LocalModel, Model
from app.errors import UserExists
from app.main import create_app
from app.services import accounts
from app.services.runtime import Runtime
from app.settings import Settings
from tests.support import pg
from tests.support.live import live_server  # noqa: F401  (the session's real server process)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model() -> Model:
    """all-MiniLM-L6-v2, loaded once for the whole run (about 9 s)."""
    return LocalModel()


ENGINES = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engines",
        default=os.environ.get("PERSONAIZER_TEST_ENGINES", ",".join(ENGINES)),
        help="comma-separated database engines to run the app tests on",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        chosen = [e for e in metafunc.config.getoption("engines").split(",") if e]
        unknown = set(chosen) - set(ENGINES)
        if unknown:
            raise pytest.UsageError(f"unknown engines {sorted(unknown)}; known: {ENGINES}")
        # `@pytest.mark.engines("sqlite")`: a test about one engine's internals.
        marker = metafunc.definition.get_closest_marker("engines")
        if marker is not None:
            chosen = [e for e in chosen if e in marker.args]
        metafunc.parametrize("engine", chosen)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> pg.PostgresServer:
    """The run's embedded PostgreSQL server (started on first use)."""
    return pg.start_server(tmp_path_factory.mktemp("pg") / "data")


@pytest.fixture
async def database_url(request: pytest.FixtureRequest, engine: str) -> AsyncIterator[str]:
    """The URL of a fresh, empty-but-migrated database on `engine` ("" means the default SQLite
    file under the data dir). Dropped after the test."""
    if engine == "sqlite":
        yield ""
        return
    server: pg.PostgresServer = request.getfixturevalue("postgres")
    name = await server.new_database()
    try:
        yield server.url(name)
    finally:
        await server.drop_database(name)


AppFactory = Callable[..., Awaitable[Starlette]]


@pytest.fixture
async def make_app(
    tmp_path: Path, model: Model, database_url: str
) -> AsyncIterator[Callable[..., Awaitable[Starlette]]]:
    """Start an app (lifespan included) on `tmp_path/data` and the test's database; settings
    overrides as kwargs. Every app started is shut down at the end of the test."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def start(
            *, data_dir: Path | None = None, app_model: Model | None = model, **overrides: Any
        ) -> Starlette:
            overrides.setdefault("database_url", database_url)
            settings = Settings.for_tests(data_dir or tmp_path / "data", **overrides)
            app = create_app(settings, model=app_model)
            await stack.enter_async_context(app.router.lifespan_context(app))
            return app

        yield start


@pytest.fixture
async def app(make_app: AppFactory) -> Starlette:
    return await make_app()


def client_for(app: Starlette, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers
    )


async def new_key(app: Starlette, email: str = "owner@example.com", plan: str | None = None) -> str:
    """Make (or reuse) a user and return a fresh API key for them."""
    runtime: Runtime = app.state.runtime
    try:
        await accounts.create_user(runtime=runtime, email=email, plan_id=plan)
    except UserExists:
        if plan is not None:
            await accounts.set_plan(runtime=runtime, email=email, plan_id=plan)
    return (await accounts.create_key(runtime=runtime, email=email)).key


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client authenticated as a fresh user on the `unlimited` plan (no rate limits in the way)."""
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as client:
        yield client


@pytest.fixture
async def anon(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


#: A test plan's limits where a test does not set its own: roomy, but small enough to reach.
PLAN_DEFAULTS: dict[str, int] = {
    "knowledge_docs": 100,
    "knowledge_chars": 100_000,
    "doc_chars": 1000,
    "personas": 3,
    "batch_items": 10,
    "reads_per_minute": 100,
    "writes_per_minute": 100,
    "searches_per_minute": 100,
}


def plan_config(plan_id: str, **limits: int) -> dict[str, Any]:
    """A plan as `make_app(plans=...)` takes it: `PLAN_DEFAULTS` with `limits` over them."""
    unknown = limits.keys() - PLAN_DEFAULTS.keys()
    assert not unknown, f"not a plan limit: {sorted(unknown)}"
    return {"id": plan_id, "name": plan_id.title(), "limits": {**PLAN_DEFAULTS, **limits}}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the contract's problem+json with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["type"] == f"/problems/{code}"
    assert body["request_id"] == response.headers["x-request-id"]
    return body
