"""CORS for keys with allowed origins: a real preflight and request through the app, the
server-wide PERSONAIZER_CORS_ORIGINS untouched, and a key's origin offered or withdrawn within
seconds of the key being made or disabled."""

from __future__ import annotations

import pytest

from app.http import keycors
from app.services import accounts
from app.services.runtime import Runtime
from tests.conftest import AppFactory, assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio
EMAIL = "owner@example.com"
SHOP = "https://shop.example"


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    }


async def test_a_key_origin_gets_preflight_and_cors_headers(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keycors, "ORIGINS_TTL_S", 0.0)  # no waiting in a test
    app = await make_app(cors_origins=["https://server.example"])
    await new_key(app, EMAIL)
    runtime: Runtime = app.state.runtime
    async with client_for(app) as anon:
        before = await anon.options("/api/knowledge/search", headers=preflight_headers(SHOP))
        assert "access-control-allow-origin" not in before.headers
        key = await accounts.create_key(
            runtime=runtime, email=EMAIL, scopes=["search"], allowed_origins=[SHOP]
        )
        pre = await anon.options("/api/knowledge/search", headers=preflight_headers(SHOP))
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == SHOP
        assert "POST" in pre.headers["access-control-allow-methods"]
        allowed = {
            h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")
        }
        assert allowed >= {"x-api-key", "authorization", "content-type", "x-request-id"}
        assert "origin" in pre.headers["vary"].lower()
        # The server-wide origins keep Starlette's answer.
        server = await anon.options(
            "/api/knowledge/search", headers=preflight_headers("https://server.example")
        )
        assert server.headers["access-control-allow-origin"] == "https://server.example"
        evil = await anon.options(
            "/api/knowledge/search", headers=preflight_headers("https://evil.example")
        )
        assert "access-control-allow-origin" not in evil.headers
    async with client_for(app, **{"X-Api-Key": key.key, "Origin": SHOP}) as api:
        r = await api.post("/api/knowledge/search", json={"query": "x"})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == SHOP
        assert "origin" in r.headers["vary"].lower()
        exposed = r.headers["access-control-expose-headers"]
        assert "RateLimit" in exposed and "X-Request-Id" in exposed
        # A refusal after authentication is readable by the page too.
        refused = await api.get("/api/personas")
        assert_problem(refused, 403, "auth.insufficient_scope")
        assert refused.headers["access-control-allow-origin"] == SHOP
        for path in ("/graphql",):
            g = await api.post(path, json={"query": '{ search(query: "x") { mode } }'})
            assert g.status_code == 200 and g.headers["access-control-allow-origin"] == SHOP
    async with client_for(app, **{"X-Api-Key": key.key, "Origin": "https://evil.example"}) as api:
        r = await api.post("/api/knowledge/search", json={"query": "x"})
        assert_problem(r, 403, "auth.origin_not_allowed")
        assert "access-control-allow-origin" not in r.headers
    await accounts.disable_key(runtime=runtime, prefix=key.prefix)
    async with client_for(app) as anon:
        gone = await anon.options("/api/knowledge/search", headers=preflight_headers(SHOP))
        assert "access-control-allow-origin" not in gone.headers


async def test_a_key_without_origins_keeps_the_server_rule(make_app: AppFactory) -> None:
    app = await make_app(cors_origins=["https://server.example"])
    key = await new_key(app, EMAIL)
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.get("/api/personas", headers={"Origin": "https://server.example"})
        assert r.headers["access-control-allow-origin"] == "https://server.example"
        other = await api.get("/api/personas", headers={"Origin": "https://other.example"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers
