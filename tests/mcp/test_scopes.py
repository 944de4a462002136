"""Restricted keys and tenant tokens through MCP (API.md section 12): a tool outside the
caller's scopes is not listed and is refused with the REST code if called anyway; persona
restrictions and a token's forced metadata hold as in REST."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.client import Client
from app.http import keycors
from app.mcp.edge import POLICIES, SCOPES
from tests.conftest import AppFactory, client_for
from tests.mcp.test_edge import HEADERS, LIST_TOOLS
from tests.rest.test_scopes import restricted, seed

pytestmark = pytest.mark.anyio

ARGUMENTS: dict[str, dict[str, Any]] = {
    "search_knowledge": {"query": "gardening", "mode": "keyword"},
    "get_document": {"external_id": "doc-a"},
    "list_documents": {},
    "list_personas": {},
    "get_persona": {"persona_id": "set by the test"},
}


def test_every_tool_has_a_scope() -> None:
    assert set(SCOPES) == set(POLICIES)


async def tools(api: httpx.AsyncClient) -> set[str]:
    r = await api.post("/mcp", json=LIST_TOOLS, headers=HEADERS)
    assert r.status_code == 200, r.text
    return {t["name"] for t in r.json()["result"]["tools"]}


async def call(api: httpx.AsyncClient, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    message = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    r = await api.post("/mcp", json=message, headers=HEADERS)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["result"]
    return result


def refused(result: dict[str, Any]) -> bool:
    return bool(result.get("isError")) and result["structuredContent"]["code"] == (
        "auth.insufficient_scope"
    )


@pytest.fixture
async def app(make_app: AppFactory) -> Starlette:
    return await make_app(allowed_hosts=["testserver"])


async def test_each_tool_needs_its_scope(app: Starlette) -> None:
    a, _ = await seed(app)
    arguments = {**ARGUMENTS, "get_persona": {"persona_id": a}}
    for scope in ("docs:read", "personas:read", "search", "docs:write", "usage:read"):
        key = (await restricted(app, scopes=[scope])).key
        async with client_for(app, **{"X-Api-Key": key}) as api:
            allowed = {t for t, s in SCOPES.items() if s == scope}
            assert await tools(api) == allowed
            for name, args in arguments.items():
                result = await call(api, name, args)
                if name in allowed:
                    assert not result.get("isError"), (scope, name, result)
                else:
                    assert refused(result), (scope, name, result)


async def test_persona_restrictions_and_token_metadata_hold(app: Starlette) -> None:
    a, b = await seed(app)
    key = await restricted(app, scopes=["search", "personas:read"], persona_ids=[a])
    assert key.signing_secret
    async with client_for(app, **{"X-Api-Key": key.key}) as api:
        hits = await call(api, "search_knowledge", ARGUMENTS["search_knowledge"])
        assert [h["external_id"] for h in hits["structuredContent"]["results"]] == ["doc-a"]
        assert refused(await call(api, "get_persona", {"persona_id": b}))
        persona = (await call(api, "get_persona", {"persona_id": a}))["structuredContent"]
        assert persona["knowledge_external_ids"] == ["doc-a"]
        assert persona["documents"] == []  # titles and sizes are docs:read
        listed = (await call(api, "list_personas", {}))["structuredContent"]
        assert [p["id"] for p in listed["items"]] == [a]
    token = Client.mint_token(
        key=key.key, signing_secret=key.signing_secret, metadata={"tenant": "nobody"}
    )
    async with client_for(app, **{"X-Api-Key": token}) as api:
        assert await tools(api) == {"search_knowledge", "list_personas", "get_persona"}
        hits = await call(api, "search_knowledge", ARGUMENTS["search_knowledge"])
        assert hits["structuredContent"]["results"] == []  # the forced metadata matches nothing
        assert refused(await call(api, "get_document", ARGUMENTS["get_document"]))


async def rpc(api: httpx.AsyncClient, method: str, params: dict[str, Any]) -> dict[str, Any]:
    message = {"jsonrpc": "2.0", "id": 3, "method": method, "params": params}
    r = await api.post("/mcp", json=message, headers=HEADERS)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_prompts_and_resources_need_their_scopes(app: Starlette) -> None:
    a, b = await seed(app)
    for scope, prompts, resources in [
        ("personas:read", True, False),
        ("docs:read", False, True),
        ("search", False, False),
    ]:
        key = (await restricted(app, scopes=[scope])).key
        async with client_for(app, **{"X-Api-Key": key}) as api:
            listed = (await rpc(api, "prompts/list", {}))["result"]["prompts"]
            assert [p["name"] for p in listed] == ([a, b] if prompts else []), scope
            got = await rpc(api, "prompts/get", {"name": a})
            assert ("result" in got) is prompts, (scope, got)
            if not prompts:
                assert got["error"]["data"]["code"] == "auth.insufficient_scope"
            docs = (await rpc(api, "resources/list", {}))["result"]["resources"]
            assert bool(docs) is resources, scope
            templates = (await rpc(api, "resources/templates/list", {}))["result"]
            assert bool(templates["resourceTemplates"]) is resources, scope
            read = await rpc(api, "resources/read", {"uri": "personaizer://docs/doc-a"})
            assert ("result" in read) is resources, (scope, read)
            if not resources:
                assert read["error"]["data"]["code"] == "auth.insufficient_scope"


SHOP = "https://shop.example"


async def test_a_key_origin_may_call_mcp_from_the_browser(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's DNS-rebinding check knows the server's origins only; a key's own (API.md
    section 12) is answered as REST answers it: preflight, CORS headers, and 403 from others."""
    monkeypatch.setattr(keycors, "ORIGINS_TTL_S", 0.0)  # no waiting in a test
    a, _ = await seed(app)
    key = await restricted(app, scopes=["search"], persona_ids=[a], allowed_origins=[SHOP])
    assert key.signing_secret
    token = Client.mint_token(key=key.key, signing_secret=key.signing_secret)
    async with client_for(app) as anon:
        pre = await anon.options(
            "/mcp",
            headers={
                "Origin": SHOP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type, mcp-protocol-version",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == SHOP
        asked = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert {"x-api-key", "content-type", "mcp-protocol-version"} <= asked
    for credential in (key.key, token):
        async with client_for(app, **{"X-Api-Key": credential, "Origin": SHOP}) as api:
            r = await api.post("/mcp", json=LIST_TOOLS, headers=HEADERS)
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == SHOP
            assert {t["name"] for t in r.json()["result"]["tools"]} == {"search_knowledge"}
            hits = await call(api, "search_knowledge", ARGUMENTS["search_knowledge"])
            assert [h["external_id"] for h in hits["structuredContent"]["results"]] == ["doc-a"]
        for origin in ("https://evil.example", "http://testserver"):  # foreign, the server's own
            async with client_for(app, **{"X-Api-Key": credential, "Origin": origin}) as api:
                r = await api.post("/mcp", json=LIST_TOOLS, headers=HEADERS)
                assert r.status_code == 403 and r.json()["code"] == "auth.origin_not_allowed"
                assert "access-control-allow-origin" not in r.headers
    # A key without origins from a foreign page: the DNS-rebinding refusal, as before.
    plain = (await restricted(app, scopes=["search"])).key
    async with client_for(app, **{"X-Api-Key": plain, "Origin": SHOP}) as api:
        r = await api.post("/mcp", json=LIST_TOOLS, headers=HEADERS)
        assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
