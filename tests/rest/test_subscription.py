"""Subscription and usage through HTTP (API.md section 7), plans from configuration included."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.embedding.embedder import Model
from app.main import create_app
from app.services import usage as usage_module
from app.settings import DEFAULT_PLANS, Settings
from tests.conftest import AppFactory, assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio

SUBSCRIPTION = "/api/subscription"
USAGE = "/api/subscription/usage"
DOCS = "/api/knowledge/docs"
PERSONAS = "/api/personas"

TEAM_PLAN: dict[str, Any] = {
    "id": "team",
    "name": "Team",
    "limits": {
        "knowledge_docs": 2,
        "knowledge_chars": 1000,
        "doc_chars": 300,
        "personas": 1,
        "batch_items": 2,
        "reads_per_minute": 50,
        "writes_per_minute": 7,
        "searches_per_minute": 5,
    },
}


def this_month() -> tuple[str, str]:
    now = datetime.now(UTC)
    start = f"{now.year:04d}-{now.month:02d}-01T00:00:00.000Z"
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return start, f"{year:04d}-{month:02d}-01T00:00:00.000Z"


async def requests_used(api: httpx.AsyncClient) -> int:
    used: int = (await api.get(USAGE)).json()["usage"]["requests"]["used"]
    return used


async def test_default_plan_subscription(make_app: AppFactory) -> None:
    app = await make_app()
    async with client_for(app, **{"X-Api-Key": await new_key(app)}) as api:
        r = await api.get(SUBSCRIPTION)
    assert r.status_code == 200
    start, end = this_month()
    assert r.json() == {
        "plan": {"id": "free", "name": "Free"},
        "status": "active",
        "current_period_start": start,
        "current_period_end": end,
        "limits": {
            "knowledge_docs": 100,
            "knowledge_chars": 2_000_000,
            "doc_chars": 100_000,
            "personas": 3,
            "batch_items": 100,
            "reads_per_minute": 600,
            "writes_per_minute": 120,
            "searches_per_minute": 60,
        },
    }
    assert r.headers["ratelimit-policy"] == '"reads";q=600;w=60'


async def test_every_default_plan(app: Starlette) -> None:
    for plan_id, plan in DEFAULT_PLANS.items():
        key = await new_key(app, f"{plan_id}@example.com", plan=plan_id)
        async with client_for(app, **{"X-Api-Key": key}) as api:
            body = (await api.get(SUBSCRIPTION)).json()
        assert body["plan"] == {"id": plan_id, "name": plan.name}
        assert body["limits"] == plan.limits.model_dump()


async def test_fresh_usage(api: httpx.AsyncClient) -> None:
    r = await api.get(USAGE)
    assert r.status_code == 200
    start, end = this_month()
    assert r.json() == {
        "period_start": start,
        "period_end": end,
        "usage": {
            "knowledge_docs": {"used": 0, "limit": 1_000_000},
            "knowledge_chars": {"used": 0, "limit": 20_000_000_000},
            "personas": {"used": 0, "limit": 10_000},
            "embedded_chunks": {"used": 0},
            "requests": {"used": 1},  # this request
        },
    }


async def test_usage_equals_the_lists(api: httpx.AsyncClient) -> None:
    contents = {"a": "Alpha text.", "b": "Beta, a little longer.", "c": "Gamma."}
    items = [{"external_id": k, "content": v} for k, v in contents.items()]
    await api.put(DOCS, json={"items": items})
    await api.put(f"{DOCS}/by-external-id/a", json={"content": "Alpha text, changed."})
    await api.delete(f"{DOCS}/by-external-id/c")
    for name in ("one", "two"):
        await api.post(PERSONAS, json={"name": name})
    usage = (await api.get(USAGE)).json()["usage"]
    docs = (await api.get(DOCS, params={"include_content": "true"})).json()
    assert usage["knowledge_docs"]["used"] == docs["total"] == 2
    assert usage["knowledge_chars"]["used"] == sum(d["char_count"] for d in docs["items"])
    assert usage["knowledge_chars"]["used"] == len("Alpha text, changed.") + len(contents["b"])
    assert usage["personas"]["used"] == (await api.get(PERSONAS)).json()["total"] == 2
    # Chunks embedded are events: the deleted document's and the replaced one's still count.
    assert usage["embedded_chunks"]["used"] == 4


async def test_requests_are_counted_per_user_across_keys(app: Starlette) -> None:
    key1 = await new_key(app, "counted@example.com")
    key2 = await new_key(app, "counted@example.com")
    other = await new_key(app, "other@example.com")
    async with (
        client_for(app, **{"X-Api-Key": key1}) as one,
        client_for(app, **{"X-Api-Key": key2}) as two,
        client_for(app, **{"X-Api-Key": other}) as stranger,
        client_for(app) as anon,
    ):
        assert await requests_used(one) == 1
        await two.get(PERSONAS)  # a read
        await one.post(PERSONAS, json={"name": "x"})  # a write
        await two.get(f"{PERSONAS}/per_missing")  # a 404 is still a request
        await one.post(PERSONAS, json={})  # so is a 422
        await stranger.get(PERSONAS)  # another user's
        await anon.get(PERSONAS)  # unauthenticated: not counted
        await one.get(PERSONAS, headers={"X-Api-Key": "pa_live_" + "x" * 40})
        assert await requests_used(two) == 6
        assert await requests_used(stranger) == 2


async def test_request_counts_are_flushed_not_lost(app: Starlette) -> None:
    runtime = app.state.runtime
    async with client_for(app, **{"X-Api-Key": await new_key(app)}) as api:
        for _ in range(4):
            await api.get(PERSONAS)
        assert await requests_used(api) == 5
        # Nothing is written per request; the flush moves the count to the table.
        assert await stored_requests(app) == 0
        assert await runtime.requests.flush(runtime.db) == 5
        assert await runtime.requests.flush(runtime.db) == 0
        assert await stored_requests(app) == 5
        assert await requests_used(api) == 6


async def stored_requests(app: Starlette) -> int:
    from sqlalchemy import text

    async with app.state.runtime.db.read() as session:
        value = (await session.execute(text("SELECT sum(requests) FROM usage_counters"))).scalar()
    return int(value or 0)


async def test_background_flush(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "FLUSH_INTERVAL_S", 0.05)
    app = await make_app()
    async with client_for(app, **{"X-Api-Key": await new_key(app)}) as api:
        await api.get(PERSONAS)
        await api.get(PERSONAS)
        for _ in range(100):
            if await stored_requests(app) == 2:
                break
            await asyncio.sleep(0.02)
        assert await stored_requests(app) == 2
        assert await requests_used(api) == 3


async def test_counts_survive_a_restart(model: Model, tmp_path: Path) -> None:
    settings = Settings.for_tests(tmp_path / "data")
    app1 = create_app(settings, model=model)
    async with app1.router.lifespan_context(app1):
        key = await new_key(app1)
        async with client_for(app1, **{"X-Api-Key": key}) as api:
            for _ in range(3):
                await api.get(PERSONAS)
    # Shut down before any periodic flush: the lifespan's last flush kept the counts.
    app2 = create_app(settings, model=model)
    async with app2.router.lifespan_context(app2), client_for(app2, **{"X-Api-Key": key}) as api:
        assert await requests_used(api) == 4


async def test_operator_defined_plan_end_to_end(make_app: AppFactory) -> None:
    app = await make_app(plans={"team": TEAM_PLAN}, default_plan="team")
    key = await new_key(app)  # no plan given: the configured default
    async with client_for(app, **{"X-Api-Key": key}) as api:
        body = (await api.get(SUBSCRIPTION)).json()
        assert body["plan"] == {"id": "team", "name": "Team"}
        assert body["limits"] == TEAM_PLAN["limits"]

        # Its limits are the ones enforced.
        r = await api.put(
            DOCS, json={"items": [{"external_id": f"d{i}", "content": "x"} for i in range(3)]}
        )
        assert_problem(r, 422, "knowledge.batch_too_large")
        r = await api.put(f"{DOCS}/by-external-id/big", json={"content": "x" * 301})
        assert_problem(r, 422, "knowledge.content_too_large")
        await api.put(DOCS, json={"items": [{"external_id": "d1", "content": "one"}]})
        await api.put(DOCS, json={"items": [{"external_id": "d2", "content": "two"}]})
        r = await api.put(f"{DOCS}/by-external-id/d3", json={"content": "three"})
        assert_problem(r, 403, "knowledge.quota_exceeded")
        assert (await api.post(PERSONAS, json={"name": "only"})).status_code == 201
        r = await api.post(PERSONAS, json={"name": "second"})
        assert_problem(r, 403, "persona.quota_exceeded")
        assert r.headers["ratelimit-policy"] == '"writes";q=7;w=60'
        r = await api.delete(f"{DOCS}/by-external-id/nothing")
        assert r.headers["ratelimit"].startswith('"writes";r=0;')
        assert_problem(
            await api.delete(f"{DOCS}/by-external-id/nothing"), 429, "limits.rate_exceeded"
        )

        usage = (await api.get(USAGE)).json()["usage"]
        assert usage["knowledge_docs"] == {"used": 2, "limit": 2}
        assert usage["knowledge_chars"] == {"used": 6, "limit": 1000}
        assert usage["personas"] == {"used": 1, "limit": 1}


async def test_plans_file_overrides_and_adds(make_app: AppFactory, tmp_path: Path) -> None:
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(
        '[plans.free]\nname = "Starter"\n'
        "[plans.free.limits]\n"
        "knowledge_docs = 5\nknowledge_chars = 500\ndoc_chars = 100\npersonas = 2\n"
        "batch_items = 5\nreads_per_minute = 10\nwrites_per_minute = 10\n"
        "searches_per_minute = 10\n",
        encoding="utf-8",
    )
    app = await make_app(plans_file=plans_file, plans={"team": TEAM_PLAN})
    async with client_for(app, **{"X-Api-Key": await new_key(app)}) as api:
        body = (await api.get(SUBSCRIPTION)).json()
        usage = (await api.get(USAGE)).json()["usage"]
    assert body["plan"] == {"id": "free", "name": "Starter"}
    assert body["limits"]["knowledge_docs"] == 5 and body["limits"]["reads_per_minute"] == 10
    assert usage["personas"] == {"used": 0, "limit": 2}
    team_key = await new_key(app, "team@example.com", plan="team")
    async with client_for(app, **{"X-Api-Key": team_key}) as api:
        assert (await api.get(SUBSCRIPTION)).json()["plan"]["id"] == "team"


async def test_plan_change_applies_at_once(app: Starlette) -> None:
    key = await new_key(app, "mover@example.com", plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        assert (await api.get(SUBSCRIPTION)).json()["plan"]["id"] == "free"
        await new_key(app, "mover@example.com", plan="pro")
        body = (await api.get(SUBSCRIPTION)).json()
        assert body["plan"] == {"id": "pro", "name": "Pro"}
        assert (await api.get(USAGE)).json()["usage"]["personas"]["limit"] == 50


async def test_subscription_needs_a_key(anon: httpx.AsyncClient) -> None:
    for path in (SUBSCRIPTION, USAGE):
        assert_problem(await anon.get(path), 401, "auth.unauthorized")


def test_plans_json_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAIZER_PLANS", json.dumps({"team": TEAM_PLAN}))
    monkeypatch.setenv("PERSONAIZER_DEFAULT_PLAN", "team")
    settings = Settings(data_dir=tmp_path)
    assert settings.default_plan == "team"
    assert settings.all_plans["team"].limits.personas == 1
    assert set(settings.all_plans) == {"free", "pro", "unlimited", "team"}
