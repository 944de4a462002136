"""Restricted keys through REST (API.md section 12): scopes, personas, expiry, per-key rate
limits, against the real app on both engines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.errors import ValidationFailed
from app.models import SCOPES, utcnow
from app.services import accounts
from app.services.runtime import Runtime
from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config

pytestmark = pytest.mark.anyio
EMAIL = "owner@example.com"


async def restricted(app: Starlette, **restrictions: Any) -> accounts.ApiKeyCreated:
    runtime: Runtime = app.state.runtime
    return await accounts.create_key(runtime=runtime, email=EMAIL, **restrictions)


async def seed(app: Starlette) -> tuple[str, str]:
    """Two personas with one document each; returns their ids."""
    key = await new_key(app, EMAIL, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        ids = []
        for name in ("a", "b"):
            doc = {"external_id": f"doc-{name}", "content": f"Notes about {name} gardening."}
            assert (await api.put("/api/knowledge/docs", json={"items": [doc]})).status_code == 200
            p = (await api.post("/api/personas", json={"name": name})).json()
            r = await api.put(
                f"/api/personas/{p['id']}/knowledge", json={"external_ids": [f"doc-{name}"]}
            )
            assert r.status_code == 200
            ids.append(p["id"])
    return ids[0], ids[1]


async def test_a_key_made_without_restrictions_has_all_scopes(app: Starlette) -> None:
    await new_key(app, EMAIL)
    created = await restricted(app)
    assert created.scopes == list(SCOPES)
    assert created.persona_ids is None and created.allowed_origins is None
    assert created.signing_secret  # it has `search`


async def test_restrictions_are_checked_at_creation(app: Starlette) -> None:
    await new_key(app, EMAIL)
    for bad in (
        {"scopes": ["search", "admin"]},
        {"scopes": []},
        {"persona_ids": ["per_NOPE"]},
        {"persona_ids": ["not an id"]},
        {"allowed_origins": ["https://a.example/path"]},
        {"allowed_origins": ["ftp://a.example"]},
        {"expires_at": utcnow() - timedelta(seconds=1)},
        {"rate_limit": 0},
        {"rate_limit": 10**9},  # above the plan's
    ):
        with pytest.raises(ValidationFailed):
            await restricted(app, **bad)
    no_search = await restricted(app, scopes=["docs:read"])
    assert no_search.signing_secret is None


async def test_every_operation_is_refused_outside_its_scope(app: Starlette) -> None:
    await seed(app)
    calls = {
        "docs:read": ("GET", "/api/knowledge/docs", None),
        "docs:write": (
            "PUT",
            "/api/knowledge/docs",
            {"items": [{"external_id": "doc-x", "content": "x"}]},
        ),
        "personas:read": ("GET", "/api/personas", None),
        "personas:write": ("POST", "/api/personas", {"name": "x"}),
        "search": ("POST", "/api/knowledge/search", {"query": "garden"}),
        "usage:read": ("GET", "/api/subscription/usage", None),
    }
    for scope in calls:
        key = (await restricted(app, scopes=[scope])).key
        async with client_for(app, **{"X-Api-Key": key}) as api:
            for other, (m, p, b) in calls.items():
                r = await api.request(m, p, json=b)
                if other == scope:
                    assert r.status_code < 400, (scope, r.text)
                else:
                    assert_problem(r, 403, "auth.insufficient_scope")


async def test_a_persona_restricted_key_sees_its_personas_only(app: Starlette) -> None:
    a, b = await seed(app)
    key = (await restricted(app, scopes=["search", "personas:read"], persona_ids=[a])).key
    async with client_for(app, **{"X-Api-Key": key}) as api:
        listed = (await api.get("/api/personas")).json()
        assert [p["id"] for p in listed["items"]] == [a] and listed["total"] == 1
        assert (await api.get(f"/api/personas/{a}")).status_code == 200
        assert_problem(await api.get(f"/api/personas/{b}"), 403, "auth.insufficient_scope")
        r = await api.post("/api/knowledge/search", json={"query": "gardening", "persona_id": b})
        assert_problem(r, 403, "auth.insufficient_scope")
        # Without a persona, the search covers the allowed personas' documents only.
        r = await api.post("/api/knowledge/search", json={"query": "gardening", "mode": "keyword"})
        assert [h["external_id"] for h in r.json()["results"]] == ["doc-a"]
        r = await api.post(
            "/api/knowledge/search",
            json={"query": "gardening", "mode": "keyword", "external_ids": ["doc-b"]},
        )
        assert r.json()["results"] == []  # narrowing cannot widen


async def test_an_expired_key_is_unauthorized_like_any_other(app: Starlette) -> None:
    await new_key(app, EMAIL)
    created = await restricted(app, expires_at=utcnow() + timedelta(hours=1))
    runtime: Runtime = app.state.runtime
    async with client_for(app, **{"X-Api-Key": created.key}) as api:
        assert (await api.get("/api/personas")).status_code == 200
        async with runtime.db.write() as session:
            past = (utcnow() - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            await session.execute(
                text("UPDATE api_keys SET expires_at = :t WHERE prefix = :p"),
                {"t": past, "p": created.prefix},
            )
        expired = await api.get("/api/personas")
    async with client_for(app, **{"X-Api-Key": "pa_live_" + "x" * 40}) as api:
        unknown = await api.get("/api/personas")
    assert_problem(expired, 401, "auth.unauthorized")
    drop = ("request_id", "instance")
    assert {k: v for k, v in expired.json().items() if k not in drop} == {
        k: v for k, v in unknown.json().items() if k not in drop
    }


async def test_a_key_rate_limit_is_charged_besides_the_plan(make_app: AppFactory) -> None:
    app = await make_app(
        plans={
            "small": plan_config(
                "small", reads_per_minute=50, writes_per_minute=50, searches_per_minute=50
            )
        }
    )
    await new_key(app, EMAIL, plan="small")
    slow = (await restricted(app, rate_limit=2)).key
    other = await new_key(app, EMAIL)
    async with client_for(app, **{"X-Api-Key": slow}) as api:
        assert (await api.get("/api/personas")).status_code == 200
        assert (await api.get("/api/personas")).status_code == 200
        refused = await api.get("/api/personas")
        assert_problem(refused, 429, "limits.rate_exceeded")
        assert int(refused.headers["retry-after"]) >= 1
    async with client_for(app, **{"X-Api-Key": other}) as api:
        assert (await api.get("/api/personas")).status_code == 200  # the user's plan is not spent
    with pytest.raises(ValidationFailed):
        await restricted(app, rate_limit=51)  # above the plan's largest


async def test_openapi_names_each_operations_scope(app: Starlette) -> None:
    async with client_for(app) as anon:
        doc = (await anon.get("/openapi.json")).json()
    for name, path in doc["paths"].items():
        if name in ("/livez", "/readyz"):  # no key at all: for load balancers
            continue
        for op in path.values():
            assert op["x-required-scope"] in SCOPES
            assert "auth.insufficient_scope" in op["responses"]["403"]["x-error-codes"]
