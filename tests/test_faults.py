"""PostgreSQL going away under traffic: requests answer 503 `server.unavailable` with
Retry-After (never 500), the server recovers by itself once the database is back, and a write cut
off by the lost connection is wholly applied or not at all.

Each test runs its own embedded server (not the run's shared one) since it stops it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.conftest import AppFactory, assert_problem, client_for, new_key
from tests.support import pg, servers

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]


@pytest.fixture
def own_server(tmp_path: Path, engine: str) -> Iterator[pg.PostgresServer]:
    server = pg.start_server(tmp_path / "pg" / "data", durable=True)
    yield server
    server.pg_ctl("-m", "immediate", "stop")


async def _database(server: pg.PostgresServer) -> str:
    return server.url(await server.new_database())


async def test_database_restart_under_traffic(
    make_app: AppFactory, own_server: pg.PostgresServer
) -> None:
    app = await make_app(database_url=await _database(own_server))
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api, client_for(app) as anon:
        doc = "/api/knowledge/docs/by-external-id/kept"
        assert (await api.put(doc, json={"content": "Kept across restarts."})).status_code == 201

        await asyncio.to_thread(own_server.stop, "fast")
        for request in (
            api.get(doc),
            api.get("/api/knowledge/docs"),
            api.put(doc, json={"content": "Changed while down."}),
            api.post("/api/knowledge/search", json={"query": "restarts", "mode": "keyword"}),
            api.get("/api/subscription/usage"),
        ):
            r = await request
            body = assert_problem(r, 503, "server.unavailable")
            assert int(r.headers["Retry-After"]) >= 1, body
        health = await anon.get("/healthz")
        assert health.status_code == 503 and health.json()["database"] != "ok"

        await asyncio.to_thread(own_server.restart)
        # Recovers by itself: the pool drops the dead connections and reconnects.
        for _ in range(50):
            r = await api.get(doc)
            if r.status_code == 200:
                break
            await asyncio.sleep(0.2)
        assert r.status_code == 200 and r.json()["content"] == "Kept across restarts."
        assert (await anon.get("/healthz")).status_code == 200
        r = await api.put(doc, json={"content": "Changed after the restart."})
        assert r.status_code == 200 and r.json()["status"] == "updated"


async def test_a_write_cut_off_mid_transaction_is_not_applied(
    make_app: AppFactory, own_server: pg.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Starlette = await make_app(database_url=await _database(own_server))
    key = await new_key(app, plan="unlimited")
    index = app.state.runtime.index
    put_many = index.put_many

    async def put_then_lose_the_server(session: Any, **kwargs: Any) -> None:
        # Every row of the batch written, in the open transaction; then the server goes.
        await put_many(session, **kwargs)
        await asyncio.to_thread(own_server.stop, "immediate")

    monkeypatch.setattr(index, "put_many", put_then_lose_the_server)
    items = [{"external_id": f"d{i}", "content": f"Batch document number {i}."} for i in range(8)]
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.put("/api/knowledge/docs", json={"items": items})
        assert_problem(r, 503, "server.unavailable")
        monkeypatch.setattr(index, "put_many", put_many)
        await asyncio.to_thread(own_server.restart)
        listed: httpx.Response | None = None
        for _ in range(50):
            listed = await api.get("/api/knowledge/docs")
            if listed.status_code == 200:
                break
            await asyncio.sleep(0.2)
        assert listed is not None and listed.status_code == 200, listed.text
        assert listed.json()["total"] == 0  # nothing of the batch, not three of eight
        r = await api.put("/api/knowledge/docs", json={"items": items})
        assert r.status_code == 200 and r.json()["summary"]["created"] == 8


async def test_serve_started_while_postgresql_is_down_waits_for_it(
    own_server: pg.PostgresServer, tmp_path: Path
) -> None:
    """`personaizer serve` does not exit for a PostgreSQL that is not up yet: it answers /livez
    and a 503 /readyz, and becomes ready without a restart once PostgreSQL is (making the
    schema in the still empty database then). A database that answers but is wrong still
    stops it at once: tests/cli/test_cli.py::test_serve_refuses_a_newer_database_in_one_line."""
    url = own_server.url(await own_server.new_database(template=None))
    await asyncio.to_thread(own_server.stop, "fast")
    env = servers.clean_env(data_dir=str(tmp_path / "data"), database_url=url)
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    process = _start_serve(port, env, log)
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def until(path: str, status: int) -> httpx.Response:
                for _ in range(600):
                    assert process.poll() is None, log.read_text()
                    try:
                        r = await http.get(f"{base}{path}")
                        if r.status_code == status:
                            return r
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{path} never answered {status}:\n{log.read_text()}")

            await until("/livez", 200)
            body = assert_problem(await http.get(f"{base}/readyz"), 503, "server.unavailable")
            assert body["checks"]["database"]["status"] == "failing"
            assert body["checks"]["schema"]["reason"].startswith("waiting for the database")

            await asyncio.to_thread(own_server.restart)
            r = await until("/readyz", 200)
            assert r.json()["status"] == "ok", r.text
            assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = log.read_text()
    assert "serving anyway" in text
    assert "Traceback" not in text


def _start_serve(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as sink:
        return subprocess.Popen(
            [str(servers.BIN), "serve", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
