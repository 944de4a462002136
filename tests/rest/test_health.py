"""`GET /livez` and `GET /readyz` (app/rest/system.py) on each engine: no key, no rate limit,
every check named in the body with the reason of any that fails; and a server whose PostgreSQL
is down when it starts, which waits for it rather than exit and becomes ready by itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.embedding.embedder import Model
from app.main import create_app
from app.settings import Settings
from tests.conftest import AppFactory, assert_problem, client_for, new_key
from tests.support import pg

pytestmark = pytest.mark.anyio

ALL_OK = {
    "model": {"status": "ok"},
    "database": {"status": "ok"},
    "schema": {"status": "ok"},
    "rate_limits": {"status": "ok"},
}


async def test_livez_and_readyz_answer_without_a_key_or_a_limit(
    anon: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        r = await anon.get("/livez")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = await anon.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ok", "checks": ALL_OK}
        assert "ratelimit" not in r.headers


async def test_the_openapi_document_declares_them(anon: httpx.AsyncClient) -> None:
    spec = (await anon.get("/openapi.json")).json()
    for path, operation_id in (("/livez", "getLiveness"), ("/readyz", "getReadiness")):
        op = spec["paths"][path]["get"]
        assert op["operationId"] == operation_id and op["security"] == []
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


async def test_readyz_is_503_until_the_model_loads(model: Model, tmp_path: Path) -> None:
    gate = threading.Event()

    def slow_loader() -> Model:
        gate.wait(timeout=30)
        return model

    app = create_app(Settings.for_tests(tmp_path / "d"), model=None, loader=slow_loader)
    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.get("/livez")).status_code == 200
        r = await client.get("/readyz")
        body = assert_problem(r, 503, "server.unavailable")
        assert body["checks"]["model"] == {"status": "failing", "reason": "the model is loading"}
        assert body["checks"]["database"] == {"status": "ok"}
        assert "model: the model is loading" in body["detail"]
        assert int(r.headers["retry-after"]) >= 1
        gate.set()
        await app.state.runtime.embedder.wait_ready()
        assert (await client.get("/readyz")).json() == {"status": "ok", "checks": ALL_OK}


# --- PostgreSQL down when the server starts ------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path, engine: str) -> Iterator[pg.PostgresServer]:
    """A PostgreSQL server of this test's own (it is stopped and started)."""
    server = pg.start_server(tmp_path / "pg" / "data", durable=True)
    yield server
    server.pg_ctl("-m", "immediate", "stop")


async def _until(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    for _ in range(150):
        r = await client.get(path)
        if r.status_code == status:
            return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}: {r.status_code} {r.text}")


@pytest.mark.engines("postgresql")
async def test_a_server_started_while_postgresql_is_down_becomes_ready_by_itself(
    make_app: AppFactory, own_server: pg.PostgresServer
) -> None:
    # An empty database (no schema yet): the server makes it once PostgreSQL answers.
    url = own_server.url(await own_server.new_database(template=None))
    await asyncio.to_thread(own_server.stop, "fast")
    app = await make_app(database_url=url)  # the lifespan does not fail: it waits
    async with client_for(app) as anon, client_for(app, **{"X-Api-Key": "pk_x"}) as api:
        assert (await anon.get("/livez")).status_code == 200
        r = await anon.get("/readyz")
        body = assert_problem(r, 503, "server.unavailable")
        checks: dict[str, Any] = body["checks"]
        assert checks["database"]["status"] == "failing" and checks["database"]["reason"]
        assert checks["schema"]["status"] == "failing"
        assert checks["schema"]["reason"].startswith("waiting for the database")
        assert checks["model"] == {"status": "ok"}
        # What needs the database answers 503 (never 500) meanwhile.
        assert_problem(await api.get("/api/personas"), 503, "server.unavailable")

        await asyncio.to_thread(own_server.restart)
        r = await _until(anon, "/readyz", 200)
        assert r.json() == {"status": "ok", "checks": ALL_OK}
        key = await new_key(app)
        r = await anon.get("/api/personas", headers={"X-Api-Key": key})
        assert r.status_code == 200, r.text


@pytest.mark.engines("postgresql")
async def test_readyz_pings_the_database_at_most_once_a_second(
    make_app: AppFactory, own_server: pg.PostgresServer
) -> None:
    """A poller in a loop reads the last ping's outcome, so PostgreSQL going away shows once
    the ping is due (the clock turned by hand here), not at every probe's expense."""
    app = await make_app(database_url=own_server.url(await own_server.new_database()))
    now = [1000.0]
    app.state.readiness.clock = lambda: now[0]
    async with client_for(app) as anon:
        assert (await anon.get("/readyz")).status_code == 200
        await asyncio.to_thread(own_server.stop, "fast")
        for _ in range(5):
            assert (await anon.get("/readyz")).status_code == 200  # the cached ping
        now[0] += 1.0
        body = assert_problem(await anon.get("/readyz"), 503, "server.unavailable")
        assert body["checks"]["database"]["status"] == "failing"
        assert body["checks"]["schema"] == {"status": "ok"}
        assert (await anon.get("/livez")).status_code == 200
        await asyncio.to_thread(own_server.restart)
        app.state.readiness.clock = time.monotonic
        assert (await _until(anon, "/readyz", 200)).json()["status"] == "ok"
