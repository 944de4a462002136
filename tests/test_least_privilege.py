"""Issue 20's "done when", end to end over real server processes: a search-only,
persona-restricted, origin-restricted key made with `personaizer keys create --json`, and a
tenant token minted from it with `personaizer tokens mint`, each work through REST, GraphQL and
MCP (the official SDK's client) and are refused everything else with the documented codes, on
both engines, across two `personaizer serve` processes sharing one database (and, on
PostgreSQL, one Redis). A token first used on one process is accepted by the other; disabling
or deleting the key through the dashboard of one process voids its tokens on the other at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from tests.support import servers

pytestmark = pytest.mark.anyio

OWNER = "owner@example.com"
PASSWORD = "correct horse battery"
SHOP = "https://shop.example"
EVIL = "https://evil.example"
SEARCH = "/api/knowledge/search"
DOCS = [
    {"external_id": "garden", "content": "Tomatoes need gardening care and sunny beds."},
    {"external_id": "boats", "content": "Gardening on a sailing boat: herbs in pots on deck."},
    {"external_id": "loose", "content": "Gardening tools are sharpened every spring."},
]
#: Every tool the MCP door has, and what the widget's credentials may see of them.
WIDGET_TOOLS = {"search_knowledge", "list_personas", "get_persona"}


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = servers.personaizer(*args, env=env, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@contextmanager
def two_servers(database_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], str, str]]:
    """The environment (for the CLI) and the base URLs of two server processes on one database:
    the SQLite file of one data dir, or PostgreSQL with a Redis for the shared rate limits."""
    with ExitStack() as stack:
        settings = {"data_dir": str(tmp_path / "data")}
        if database_url:
            settings["database_url"] = database_url
            settings["redis_url"] = stack.enter_context(servers.redis_server(tmp_path / "redis"))
        env = servers.clean_env(**settings)
        cli(env, "init")
        cli(
            env, "users", "create", OWNER, "--plan", "unlimited", "--password-stdin", stdin=PASSWORD
        )
        a = stack.enter_context(servers.serve(env=env, log=tmp_path / "a.log"))
        b = stack.enter_context(servers.serve(env=env, log=tmp_path / "b.log"))
        yield env, a, b


async def seed(http: httpx.AsyncClient, base: str, key: str) -> tuple[str, str]:
    """Three documents; persona `allowed` has `garden`, persona `other` has `boats`."""
    h = {"X-Api-Key": key}
    r = await http.put(f"{base}/api/knowledge/docs", json={"items": DOCS}, headers=h)
    assert r.status_code == 200, r.text
    ids = []
    for name, doc in (("allowed", "garden"), ("other", "boats")):
        r = await http.post(
            f"{base}/api/personas", json={"name": name, "greeting": f"Hi from {name}."}, headers=h
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        r = await http.put(
            f"{base}/api/personas/{ids[-1]}/knowledge", json={"external_ids": [doc]}, headers=h
        )
        assert r.status_code == 200, r.text
    return ids[0], ids[1]


def widget_key(env: dict[str, str], persona: str) -> dict[str, Any]:
    made: dict[str, Any] = json.loads(
        cli(
            env, "keys", "create", OWNER, "--name", "widget", "--scopes", "search,personas:read",
            "--personas", persona, "--origins", SHOP, "--json",
        )
    )  # fmt: skip
    assert set(made["scopes"]) == {"personas:read", "search"}
    assert made["persona_ids"] == [persona] and made["allowed_origins"] == [SHOP]
    assert made["signing_secret"]
    return made


def mint(env: dict[str, str], made: dict[str, Any], *extra: str) -> str:
    return cli(
        env, "tokens", "mint", "--key", made["key"], "--signing-secret", made["signing_secret"],
        "--expires-in", "900", "--sub", "visitor-1", *extra,
    )  # fmt: skip


def problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.request.method, r.request.url, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code, r.text


async def check_rest(
    http: httpx.AsyncClient, base: str, credential: str, allowed: str, other: str
) -> None:
    h = {"X-Api-Key": credential, "Origin": SHOP}
    body = {"query": "gardening", "mode": "keyword", "k": 10}
    r = await http.post(f"{base}{SEARCH}", json=body, headers=h)
    assert r.status_code == 200, r.text
    # Only the allowed persona's knowledge, whatever else matches.
    assert [hit["external_id"] for hit in r.json()["results"]] == ["garden"]
    assert r.headers["access-control-allow-origin"] == SHOP
    r = await http.get(f"{base}/api/personas/{allowed}", headers=h)
    assert r.status_code == 200 and r.json()["greeting"] == "Hi from allowed."
    assert r.headers["access-control-allow-origin"] == SHOP
    refused = [
        await http.post(f"{base}{SEARCH}", json={**body, "persona_id": other}, headers=h),
        await http.get(f"{base}/api/personas/{other}", headers=h),
        # A persona's knowledge listing names documents: docs:read, which the widget lacks.
        await http.get(f"{base}/api/personas/{allowed}/knowledge", headers=h),
        await http.get(f"{base}/api/knowledge/docs", headers=h),
        await http.get(f"{base}/api/knowledge/docs/by-external-id/garden", headers=h),
        await http.get(f"{base}/api/knowledge/changes", headers=h),
        await http.put(
            f"{base}/api/knowledge/docs/by-external-id/x", json={"content": "x"}, headers=h
        ),
        await http.delete(f"{base}/api/knowledge/docs/by-external-id/garden", headers=h),
        await http.post(f"{base}/api/personas", json={"name": "x"}, headers=h),
        await http.patch(f"{base}/api/personas/{allowed}", json={"name": "x"}, headers=h),
        await http.get(f"{base}/api/subscription", headers=h),
        await http.get(f"{base}/api/subscription/usage", headers=h),
    ]
    for r in refused:
        problem(r, 403, "auth.insufficient_scope")
        assert r.headers["access-control-allow-origin"] == SHOP  # the page can read why
    # Another origin: refused before anything else, without CORS headers.
    r = await http.post(f"{base}{SEARCH}", json=body, headers={**h, "Origin": EVIL})
    problem(r, 403, "auth.origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers
    # The page's preflights: answered for its origin only.
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    for path in (SEARCH, "/graphql", "/mcp"):
        pre = await http.options(f"{base}{path}", headers={**ask, "Origin": SHOP})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == SHOP
        pre = await http.options(f"{base}{path}", headers={**ask, "Origin": EVIL})
        assert "access-control-allow-origin" not in pre.headers


async def graphql(
    http: httpx.AsyncClient, base: str, credential: str, query: str, origin: str = SHOP
) -> dict[str, Any]:
    r = await http.post(
        f"{base}/graphql",
        json={"query": query},
        headers={"X-Api-Key": credential, "Origin": origin},
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == SHOP
    answer: dict[str, Any] = r.json()
    return answer


def codes(answer: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in answer.get("errors", [])]


async def check_graphql(
    http: httpx.AsyncClient, base: str, credential: str, allowed: str, other: str
) -> None:
    found = await graphql(
        http,
        base,
        credential,
        '{ search(query: "gardening", mode: KEYWORD, k: 10) { results { externalId score } }'
        f' persona(id: "{allowed}") {{ id name greeting description instructions }} }}',
    )
    assert "errors" not in found, found
    assert [h["externalId"] for h in found["data"]["search"]["results"]] == ["garden"]
    assert found["data"]["persona"]["greeting"] == "Hi from allowed."
    for query in (
        f'{{ persona(id: "{other}") {{ name }} }}',
        f'{{ search(query: "gardening", personaId: "{other}") {{ mode }} }}',
        f'{{ persona(id: "{allowed}") {{ knowledge {{ total }} }} }}',
        "{ knowledgeDocs { total } }",
        '{ knowledgeDoc(externalId: "garden") { externalId } }',
        "{ usage { usage { personas { used } } } }",
        "{ plan { plan { id } } }",
        "{ viewer { email } }",
        'mutation { createPersona(input: {name: "x"}) { id } }',
        'mutation { deleteKnowledgeDoc(externalId: "garden") { deleted } }',
        f'mutation {{ setPersonaKnowledge(id: "{allowed}", externalIds: []) {{ added }} }}',
    ):
        answer = await graphql(http, base, credential, query)
        assert codes(answer) == ["auth.insufficient_scope"], (query, answer)
        assert answer["errors"][0]["extensions"]["status"] == 403
    r = await http.post(
        f"{base}/graphql",
        json={"query": '{ search(query: "x") { mode } }'},
        headers={"X-Api-Key": credential, "Origin": EVIL},
    )
    assert r.json()["errors"][0]["extensions"]["code"] == "auth.origin_not_allowed", r.text


@asynccontextmanager
async def mcp_client(base: str, credential: str) -> AsyncIterator[Client]:
    headers = {"X-Api-Key": credential, "Origin": SHOP}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http), cache=None) as client,  # type: ignore[arg-type]
    ):
        yield client


def tool_code(result: CallToolResult) -> str | None:
    body = result.structured_content or {}
    return str(body["code"]) if result.is_error else None


async def check_mcp(
    http: httpx.AsyncClient, base: str, credential: str, allowed: str, other: str
) -> None:
    async with mcp_client(base, credential) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools == WIDGET_TOOLS
        hits = await client.call_tool("search_knowledge", {"query": "gardening", "k": 10})
        assert not hits.is_error and hits.structured_content is not None
        assert [h["external_id"] for h in hits.structured_content["results"]] == ["garden"]
        persona = await client.call_tool("get_persona", {"persona_id": allowed})
        assert not persona.is_error, persona.content
        for name, arguments in (
            ("get_persona", {"persona_id": other}),
            ("search_knowledge", {"query": "gardening", "persona_id": other}),
            ("get_document", {"external_id": "garden"}),
            ("list_documents", {}),
        ):
            result = await client.call_tool(name, arguments)
            assert tool_code(result) == "auth.insufficient_scope", (name, result)
    # A page of another origin gets the REST answer.
    r = await http.post(
        f"{base}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "X-Api-Key": credential,
            "Origin": EVIL,
            "Accept": "application/json, text/event-stream",
        },
    )
    problem(r, 403, "auth.origin_not_allowed")


async def check_everywhere(
    http: httpx.AsyncClient, bases: tuple[str, ...], credential: str, allowed: str, other: str
) -> None:
    for base in bases:
        await check_rest(http, base, credential, allowed, other)
        await check_graphql(http, base, credential, allowed, other)
        await check_mcp(http, base, credential, allowed, other)


async def refused_everywhere(http: httpx.AsyncClient, bases: tuple[str, ...], *creds: str) -> None:
    for base in bases:
        for credential in creds:
            h = {"X-Api-Key": credential, "Origin": SHOP}
            r = await http.post(f"{base}{SEARCH}", json={"query": "gardening"}, headers=h)
            problem(r, 401, "auth.unauthorized")
            r = await http.post(
                f"{base}/graphql", json={"query": '{ search(query: "x") { mode } }'}, headers=h
            )
            assert r.status_code == 401 and r.json()["errors"][0]["extensions"]["code"] == (
                "auth.unauthorized"
            )
            r = await http.post(
                f"{base}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={**h, "Accept": "application/json, text/event-stream"},
            )
            problem(r, 401, "auth.unauthorized")


@asynccontextmanager
async def dashboard(base: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The owner signed in at `base`'s dashboard: the client and its CSRF token."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as browser:
        page = await browser.get("/login")
        token = csrf_of(page)
        r = await browser.post(
            "/login", data={"email": OWNER, "password": PASSWORD, "csrf_token": token}
        )
        assert r.status_code == 303, r.text
        yield browser, csrf_of(await browser.get("/api-keys"))


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


async def test_least_privilege_through_every_door_on_two_processes(
    database_url: str, tmp_path: Path
) -> None:
    with two_servers(database_url, tmp_path) as (env, a, b):
        owner = json.loads(cli(env, "keys", "create", OWNER, "--json"))["key"]
        async with httpx.AsyncClient(timeout=120) as http:
            allowed, other = await seed(http, a, owner)
            made = widget_key(env, allowed)
            token = mint(env, made)
            # The key and its token, first on A (the token's first use), then on B.
            for credential in (made["key"], token):
                await check_everywhere(http, (a, b), credential, allowed, other)

            # A token is never wider than its key: other personas, or none of the key's scopes
            # beyond search and personas:read, are not to be had by asking.
            wider = mint(env, made, "--personas", f"{allowed},{other}")
            await refused_everywhere(http, (b,), wider)

            # Disabling the key on A voids it and its tokens on B at once (and on A).
            async with dashboard(a) as (browser, csrf):
                r = await browser.post(
                    f"/api-keys/{made['prefix']}/disable", data={"csrf_token": csrf}
                )
                assert r.status_code == 303, r.text
            await refused_everywhere(http, (b, a), made["key"], token)

            # Deleting a second such key on B voids its tokens on A at once.
            again = widget_key(env, allowed)
            second = mint(env, again)
            for base in (a, b):
                r = await http.post(
                    f"{base}{SEARCH}",
                    json={"query": "gardening"},
                    headers={"X-Api-Key": second, "Origin": SHOP},
                )
                assert r.status_code == 200, r.text
            async with dashboard(b) as (browser, csrf):
                r = await browser.post(
                    f"/api-keys/{again['prefix']}/delete",
                    data={"csrf_token": csrf, "confirm": "yes"},
                )
                assert r.status_code == 303 and r.headers["location"] == "/api-keys", r.text
            await refused_everywhere(http, (a, b), again["key"], second)
            # The owner's own key is untouched by all this.
            r = await http.get(f"{a}/api/knowledge/docs", headers={"X-Api-Key": owner})
            assert r.status_code == 200 and r.json()["total"] == len(DOCS)
