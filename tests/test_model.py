"""The concurrency model check (tests/support/model.py) on both engines, in one process and
across two server processes on PostgreSQL: several clients write, delete, attach and list at
once, then the stored state must be some serial order of what was acknowledged, usage must
count what is stored, the changes feed must replay to it, and a user deleted mid-write leaves
nothing behind.

Small here (a few hundred operations); `python scripts/soak.py` runs the same check for as long
as it is asked to."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from app.services.runtime import Runtime
from tests.conftest import AppFactory, client_for, new_key, plan_config
from tests.support import model, servers

pytestmark = pytest.mark.anyio

DOC_LIMIT = 8
PLANS = {
    "model": plan_config(
        "model",
        knowledge_docs=DOC_LIMIT,
        batch_items=10,
        reads_per_minute=100_000,
        writes_per_minute=100_000,
    )
}


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_clients_leave_a_serial_state(make_app: AppFactory, seed: int) -> None:
    app = await make_app(plans=PLANS)
    key = await new_key(app, "model@example.com", plan="model")
    clients = [client_for(app, **{"X-Api-Key": key}) for _ in range(2)]
    try:
        await model.run_model(clients, seed=seed, ops=40, doc_limit=DOC_LIMIT)
    finally:
        for c in clients:
            await c.aclose()


async def test_a_user_deleted_mid_write_leaves_nothing(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    email = "victim@example.com"
    key = await new_key(app, email, plan="unlimited")

    async def delete_user() -> None:
        await accounts.delete_user(runtime=runtime, email=email)

    async def recreate() -> httpx.AsyncClient:
        return client_for(app, **{"X-Api-Key": await new_key(app, email)})

    async with client_for(app, **{"X-Api-Key": key}) as victim:
        await model.deleted_user_leaves_nothing(
            victim, delete_user=delete_user, recreate=recreate, seed=7
        )


@pytest.mark.redis
@pytest.mark.engines("postgresql")
async def test_two_servers_leave_a_serial_state(database_url: str, tmp_path: Path) -> None:
    with servers.redis_server(tmp_path / "redis") as redis_url:
        env = servers.clean_env(
            data_dir=str(tmp_path / "data"),
            database_url=database_url,
            redis_url=redis_url,
            plans=json.dumps(PLANS),
        )
        made = servers.personaizer(
            "users", "create", "model@example.com", "--plan", "model", env=env
        )
        assert made.returncode == 0, made.stderr
        out = servers.personaizer("keys", "create", "model@example.com", "--json", env=env)
        assert out.returncode == 0, out.stderr
        key = json.loads(out.stdout)["key"]
        with (
            servers.serve(env=env, log=tmp_path / "a.log") as a,
            servers.serve(env=env, log=tmp_path / "b.log") as b,
        ):
            clients = [
                httpx.AsyncClient(base_url=url, headers={"X-Api-Key": key}, timeout=120)
                for url in (a, b)
            ]
            try:
                await model.run_model(clients, seed=3, ops=40, doc_limit=DOC_LIMIT)
            finally:
                for c in clients:
                    await c.aclose()
