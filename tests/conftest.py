"""Shared fixtures: the real model (loaded once per run), a fresh app per test on its own SQLite
file, and an HTTP client speaking to it through ASGI (the full middleware and routing stack)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.embedding import LocalModel, Model
from app.errors import UserExists
from app.main import create_app
from app.services import accounts
from app.services.core import Core
from app.settings import Settings
from tests.live import live_server  # noqa: F401  (the session's real server process)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model() -> Model:
    """all-MiniLM-L6-v2, loaded once for the whole run (about 9 s)."""
    return LocalModel()


AppFactory = Callable[..., Awaitable[Starlette]]


@pytest.fixture
async def make_app(
    tmp_path: Path, model: Model
) -> AsyncIterator[Callable[..., Awaitable[Starlette]]]:
    """Start an app (lifespan included) on `tmp_path/data`; settings overrides as kwargs.
    Every app started is shut down at the end of the test."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def start(
            *, data_dir: Path | None = None, app_model: Model | None = model, **overrides: Any
        ) -> Starlette:
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
    core: Core = app.state.core
    try:
        await accounts.create_user(core=core, email=email, plan_id=plan)
    except UserExists:
        if plan is not None:
            await accounts.set_plan(core=core, email=email, plan_id=plan)
    return (await accounts.create_key(core=core, email=email)).key


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
