"""The MCP door through the SDK's own client (streamable HTTP) against a live server process:
the model loaded from disk, a key made with the CLI, documents written through REST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent, TextResourceContents

from app.models import SEARCH_K_MAX, SEARCH_METADATA_KEYS_MAX
from app.models.knowledge import DOC_NEIGHBOURS_MAX, DOC_PAGE_DEFAULT_CHARS, DOC_PAGE_MAX_CHARS
from tests.conftest import plan_config

pytestmark = pytest.mark.anyio

BIN = Path(sys.executable).with_name("personaizer")
#: Reads a minute on the `tight` plan: a test uses them up with the client's own messages.
TIGHT_READS = 6


def _plan(plan_id: str, *, reads: int, searches: int) -> dict[str, Any]:
    return plan_config(
        plan_id, doc_chars=10_000, reads_per_minute=reads, searches_per_minute=searches
    )


#: `tiny`: a search limit a test can use up in a few calls; `tight`: the same for reads.
PLANS = {
    "tiny": _plan("tiny", reads=100, searches=3),
    "tight": _plan("tight", reads=TIGHT_READS, searches=3),
}

DOCS = [
    {
        "external_id": "faq-shipping",
        "title": "Shipping",
        "content": "Orders ship within two days by courier.",
    },
    {
        "external_id": "lamp",
        "title": "Aurora lamp",
        "content": "The Aurora lamp has a USB-C port and three brightness levels.",
        "metadata": {"lang": "en"},
    },
    {
        "external_id": "returns",
        "title": "Returns",
        "content": "Return any item within 30 days for a full refund.",
    },
]
#: Longer than get_document's default page, so that reading it takes more than one call.
MANUAL = {
    "external_id": "warranty",
    "title": "Warranty terms",
    "content": "".join(f"Clause {i:04}: the warranty covers defects. " for i in range(400)),
    "metadata": {"kind": "legal"},
}


@dataclass
class Server:
    base: str
    key: str
    tiny_key: str
    tight_key: str
    persona_id: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("mcp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    env.update(PERSONAIZER_DATA_DIR=str(data), PERSONAIZER_PLANS=json.dumps(PLANS))
    _cli("init", env=env)
    _cli("users", "create", "agent@example.com", "--plan", "unlimited", env=env)
    _cli("users", "create", "tiny@example.com", "--plan", "tiny", env=env)
    _cli("users", "create", "tight@example.com", "--plan", "tight", env=env)
    key = _cli("keys", "create", "agent@example.com", env=env)
    tiny_key = _cli("keys", "create", "tiny@example.com", env=env)
    tight_key = _cli("keys", "create", "tight@example.com", env=env)
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the server exited"
            time.sleep(0.3)
        h = {"X-Api-Key": key}
        r = httpx.put(
            f"{base}/api/knowledge/docs", json={"items": [*DOCS, MANUAL]}, headers=h, timeout=60
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{base}/api/personas",
            json={"name": "Ava", "instructions": "Be kind.", "greeting": "Hi, I am Ava."},
            headers=h,
        )
        persona_id = r.json()["id"]
        r = httpx.put(
            f"{base}/api/personas/{persona_id}/knowledge",
            json={"external_ids": ["lamp", "returns"]},
            headers=h,
        )
        assert r.status_code == 200, r.text
        yield Server(
            base=base, key=key, tiny_key=tiny_key, tight_key=tight_key, persona_id=persona_id
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


@asynccontextmanager
async def connect(url: str, key: str | None, *, mode: str = "auto") -> AsyncIterator[Client]:
    headers = {"X-Api-Key": key} if key is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client,  # type: ignore[arg-type]
    ):
        yield client


def data(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def problem(result: CallToolResult, code: str) -> dict[str, Any]:
    assert result.is_error
    body = result.structured_content
    assert body is not None and body["code"] == code, body
    assert body["type"] == f"/problems/{code}"
    return body


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_over_http(server: Server, mode: str) -> None:
    async with connect(f"{server.base}/mcp", server.key, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {
            "search_knowledge",
            "get_document",
            "list_documents",
            "list_personas",
            "get_persona",
        }
        search = tools["search_knowledge"]
        assert set(search.input_schema["properties"]) == {
            "query",
            "k",
            "mode",
            "persona_id",
            "external_ids",
            "metadata",
            "min_score",
        }
        assert search.input_schema["required"] == ["query"]
        assert search.output_schema is not None

        hits = data(
            await client.call_tool("search_knowledge", {"query": "usb port on the lamp", "k": 2})
        )
        assert hits["mode"] == "hybrid"
        assert hits["results"][0]["external_id"] == "lamp"
        assert "USB-C" in hits["results"][0]["text"]

        # The persona's scope: shipping is not attached, so it is never a hit.
        scoped = data(
            await client.call_tool(
                "search_knowledge",
                {"query": "how long does shipping take", "persona_id": server.persona_id, "k": 5},
            )
        )
        assert {h["external_id"] for h in scoped["results"]} <= {"lamp", "returns"}
        meta = data(
            await client.call_tool(
                "search_knowledge", {"query": "lamp", "metadata": {"lang": "en"}, "mode": "keyword"}
            )
        )
        assert [h["external_id"] for h in meta["results"]] == ["lamp"]
        only = data(
            await client.call_tool(
                "search_knowledge",
                {"query": "refund", "external_ids": ["returns"], "mode": "semantic"},
            )
        )
        assert [h["external_id"] for h in only["results"]] == ["returns"]

        doc = data(await client.call_tool("get_document", {"external_id": "returns"}))
        assert doc["content"] == DOCS[2]["content"]
        assert doc["title"] == "Returns"
        assert (doc["offset"], doc["total_chars"], doc["next_offset"]) == (0, 49, None)

        page = data(await client.call_tool("list_personas", {}))
        assert [p["name"] for p in page["items"]] == ["Ava"] and page["total"] == 1
        persona = data(await client.call_tool("get_persona", {"persona_id": server.persona_id}))
        assert persona["instructions"] == "Be kind."
        assert persona["greeting"] == "Hi, I am Ava."
        assert persona["knowledge_external_ids"] == ["lamp", "returns"]
        assert [(d["external_id"], d["title"]) for d in persona["documents"]] == [
            ("lamp", "Aurora lamp"),
            ("returns", "Returns"),
        ]


async def test_min_score_drops_weaker_hits(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        args = {"query": "usb port on the lamp", "k": 3, "mode": "semantic"}
        every = data(await client.call_tool("search_knowledge", args))["results"]
        assert len(every) == 3
        # Each hit carries the parts of its score: semantic only, in this mode.
        assert all((h["semantic_score"], h["keyword_score"]) == (h["score"], None) for h in every)
        cut = (every[0]["score"] + every[1]["score"]) / 2
        kept = data(await client.call_tool("search_knowledge", {**args, "min_score": cut}))
        assert [h["external_id"] for h in kept["results"]] == [every[0]["external_id"]]


async def test_errors_carry_the_contract_codes(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        body = problem(
            await client.call_tool("get_document", {"external_id": "nope"}), "knowledge.not_found"
        )
        assert body["status"] == 404
        problem(
            await client.call_tool("get_document", {"external_id": "bad id"}),
            "knowledge.invalid_external_id",
        )
        problem(
            await client.call_tool("get_persona", {"persona_id": "per_01NOPE"}), "persona.not_found"
        )
        problem(
            await client.call_tool("search_knowledge", {"query": "x", "persona_id": "per_01NOPE"}),
            "persona.not_found",
        )
        # Off the tool's schema (the SDK refuses), and off the request model (the tool refuses).
        body = problem(
            await client.call_tool("search_knowledge", {"query": "x", "k": 500}),
            "request.validation_failed",
        )
        assert body["status"] == 422
        assert "less than or equal to 50" in body["detail"] and "://" not in body["detail"]
        problem(
            await client.call_tool("search_knowledge", {"query": "   "}),
            "request.validation_failed",
        )
        problem(
            await client.call_tool("list_personas", {"cursor": "%%%"}), "request.invalid_cursor"
        )
        problem(await client.call_tool("no_such_tool", {}), "request.not_found")


async def test_search_is_rate_limited_like_rest(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.tiny_key) as client:
        for _ in range(3):
            data(await client.call_tool("search_knowledge", {"query": "lamp"}))
        body = problem(
            await client.call_tool("search_knowledge", {"query": "lamp"}), "limits.rate_exceeded"
        )
        assert body["status"] == 429 and body["retry_after"] >= 1
        # Reads are another policy, still open.
        data(await client.call_tool("list_personas", {}))
    # The same count as REST: the search policy is used up there too.
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{server.base}/api/knowledge/search",
            json={"query": "lamp"},
            headers={"X-Api-Key": server.tiny_key},
        )
    assert r.status_code == 429


async def test_every_message_costs_a_read(server: Server) -> None:
    # The client's own messages (initialize and its notification, tools/list) are charged as
    # reads. Past the budget the edge answers 429 problem+json, which the SDK's client raises.
    listed = 0
    with pytest.raises(ExceptionGroup) as raised:
        async with connect(f"{server.base}/mcp", server.tight_key) as client:
            for _ in range(TIGHT_READS):
                await client.list_tools()
                listed += 1
    assert raised.group_contains(MCPError, match="Server returned an error response")
    # Without the handshake's charge every listing would have passed.
    assert 1 <= listed < TIGHT_READS
    headers = {"X-Api-Key": server.tight_key, "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=server.base, headers=headers) as http:
        r = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 429
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "limits.rate_exceeded" and int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-policy"] == f'"reads";q={TIGHT_READS};w=60'
        # Searches are another policy: a call still runs (and its answer says what is left).
        search = {"name": "search_knowledge", "arguments": {"query": "lamp"}}
        r = await http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": search}
        )
    assert r.status_code == 200 and not r.json()["result"]["isError"]
    assert r.headers["ratelimit"].startswith('"search";r=2;')


def test_key_is_required(server: Server) -> None:
    for key in (None, "pa_live_" + "x" * 40):
        headers = {"X-Api-Key": key} if key else {}
        r = httpx.post(
            f"{server.base}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={**headers, "Accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "auth.unauthorized"


async def test_sdk_client_without_key_fails(server: Server) -> None:
    # The SDK's client gets no further than its first request.
    with pytest.raises(ExceptionGroup) as raised:
        async with connect(f"{server.base}/mcp", None) as client:
            await client.list_tools()
    assert raised.group_contains(MCPError)


def test_foreign_host_is_misdirected(server: Server) -> None:
    r = httpx.post(
        f"{server.base}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"X-Api-Key": server.key, "Host": "evil.example", "Accept": "application/json"},
    )
    assert r.status_code == 421
    assert r.json()["code"] == "request.misdirected"
    r = httpx.post(
        f"{server.base}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "X-Api-Key": server.key,
            "Origin": "http://evil.example",
            "Accept": "application/json",
        },
    )
    assert r.status_code == 403
    assert r.json()["code"] == "auth.forbidden"


async def test_documents_are_read_a_page_at_a_time(server: Server) -> None:
    whole = str(MANUAL["content"])
    assert len(whole) > DOC_PAGE_DEFAULT_CHARS
    async with connect(f"{server.base}/mcp", server.key) as client:
        first = data(await client.call_tool("get_document", {"external_id": "warranty"}))
        assert first["content"] == whole[:DOC_PAGE_DEFAULT_CHARS]
        assert first["total_chars"] == first["char_count"] == len(whole)
        assert first["next_offset"] == DOC_PAGE_DEFAULT_CHARS
        assert (first["title"], first["metadata"]) == ("Warranty terms", {"kind": "legal"})
        # Following next_offset reads the whole document, and nothing twice.
        text, offset, calls = "", 0, 0
        while offset is not None:
            page = data(
                await client.call_tool(
                    "get_document",
                    {"external_id": "warranty", "offset": offset, "max_chars": 5000},
                )
            )
            assert page["offset"] == offset and len(page["content"]) <= 5000
            text += page["content"]
            offset = page["next_offset"]
            calls += 1
        assert text == whole and calls == -(-len(whole) // 5000)
        past = data(
            await client.call_tool("get_document", {"external_id": "returns", "offset": 1000})
        )
        assert (past["content"], past["next_offset"]) == ("", None)


async def test_documents_are_listed_without_content(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        first = data(await client.call_tool("list_documents", {"limit": 3}))
        assert first["total"] == 4 and first["next_cursor"]
        rest = data(await client.call_tool("list_documents", {"cursor": first["next_cursor"]}))
        items = first["items"] + rest["items"]
        assert rest["next_cursor"] is None
        assert [d["external_id"] for d in items] == ["faq-shipping", "lamp", "returns", "warranty"]
        assert set(items[1]) == {"external_id", "title", "metadata", "char_count", "updated_at"}
        assert items[1]["metadata"] == {"lang": "en"} and items[1]["char_count"] == 61
        future = data(
            await client.call_tool("list_documents", {"updated_since": "2999-01-01T00:00:00Z"})
        )
        assert (future["items"], future["total"]) == ([], 0)
        # The same refusals as REST's list.
        problem(
            await client.call_tool("list_documents", {"updated_since": "yesterday"}),
            "request.validation_failed",
        )
        problem(
            await client.call_tool("list_documents", {"cursor": "%%%"}), "request.invalid_cursor"
        )


def _rest_problem(server: Server, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    r = httpx.request(
        method, f"{server.base}{path}", headers={"X-Api-Key": server.key}, timeout=60, **kwargs
    )
    assert r.status_code == 422, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_validation_errors_are_rests(server: Server) -> None:
    """A bad argument is refused with REST's code and `errors[]` (pointer, code, message),
    whether the SDK refused it against the tool's schema or the service did."""
    async with connect(f"{server.base}/mcp", server.key) as client:
        mcp_k = problem(
            await client.call_tool("search_knowledge", {"query": "lamp", "k": 500}),
            "request.validation_failed",
        )
        rest_k = _rest_problem(
            server, "POST", "/api/knowledge/search", json={"query": "lamp", "k": 500}
        )
        assert (
            mcp_k["errors"]
            == rest_k["errors"]
            == [
                {
                    "pointer": "/k",
                    "code": "request.validation_failed",
                    "message": f"Input should be less than or equal to {SEARCH_K_MAX}",
                }
            ]
        )
        assert mcp_k["status"] == rest_k["status"] == 422
        assert mcp_k["detail"] == rest_k["detail"].replace("request body", "arguments")

        mcp_id = problem(
            await client.call_tool("get_document", {"external_id": "bad id"}),
            "knowledge.invalid_external_id",
        )
        rest_id = _rest_problem(server, "GET", "/api/knowledge/docs/by-external-id/bad%20id")
        assert {k: mcp_id.get(k) for k in ("code", "detail", "errors")} == {
            k: rest_id.get(k) for k in ("code", "detail", "errors")
        }

        mcp_offset = problem(
            await client.call_tool("get_document", {"external_id": "lamp", "offset": -1}),
            "request.validation_failed",
        )
        # REST has no offset; its own bound on a number reads the same (limit=0 on a list).
        rest_limit = _rest_problem(server, "GET", "/api/knowledge/docs", params={"limit": 0})
        assert mcp_offset["errors"] == [
            {
                "pointer": "/offset",
                "code": "request.validation_failed",
                "message": "Input should be greater than or equal to 0",
            }
        ]
        assert rest_limit["errors"][0]["message"] == "Input should be greater than or equal to 1"
        too_much = problem(
            await client.call_tool(
                "get_document", {"external_id": "lamp", "max_chars": DOC_PAGE_MAX_CHARS + 1}
            ),
            "request.validation_failed",
        )
        assert [e["pointer"] for e in too_much["errors"]] == ["/max_chars"]
        assert "pydantic" not in too_much["detail"]


async def test_personas_are_prompts(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        prompts = (await client.list_prompts()).prompts
        assert [(p.name, p.title) for p in prompts] == [(server.persona_id, "Ava")]
        prompt = await client.get_prompt(server.persona_id)
        roles = [m.role for m in prompt.messages]
        texts = [m.content.text for m in prompt.messages if isinstance(m.content, TextContent)]
        assert roles == ["user", "assistant"]
        assert "Ava" in texts[0] and texts[0].endswith("Be kind.")
        assert texts[1] == "Hi, I am Ava."
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("per_01NOPE")
        assert raised.value.data["code"] == "persona.not_found"


async def test_documents_are_resources(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        listed = await client.list_resources()
        uris = [str(r.uri) for r in listed.resources]
        assert uris == [
            f"personaizer://docs/{d}" for d in ("faq-shipping", "lamp", "returns", "warranty")
        ]
        assert listed.next_cursor is None
        (template,) = (await client.list_resource_templates()).resource_templates
        assert template.uri_template.startswith("personaizer://docs/{external_id}")

        lamp = (await client.read_resource("personaizer://docs/lamp")).contents
        assert len(lamp) == 1 and isinstance(lamp[0], TextResourceContents)
        assert lamp[0].text == DOCS[1]["content"]
        # A long document is read a default page at a time, like get_document.
        first = (await client.read_resource("personaizer://docs/warranty")).contents[0]
        assert isinstance(first, TextResourceContents)
        assert first.text == str(MANUAL["content"])[:DOC_PAGE_DEFAULT_CHARS]
        assert first.meta is not None and first.meta["next_offset"] == DOC_PAGE_DEFAULT_CHARS
        uri = f"personaizer://docs/warranty?offset={first.meta['next_offset']}"
        second = (await client.read_resource(uri)).contents[0]
        assert isinstance(second, TextResourceContents)
        assert (
            second.text == str(MANUAL["content"])[DOC_PAGE_DEFAULT_CHARS:][:DOC_PAGE_DEFAULT_CHARS]
        )

        for bad, code in [
            ("personaizer://docs/nope", "knowledge.not_found"),
            ("personaizer://docs/bad%20id", "knowledge.invalid_external_id"),
            ("personaizer://docs/lamp?offset=-1", "request.validation_failed"),
            ("personaizer://people/lamp", "request.not_found"),
        ]:
            with pytest.raises(MCPError) as raised:
                await client.read_resource(bad)
            assert raised.value.data["code"] == code, (bad, raised.value.data)


async def test_documents_are_listed_by_metadata_and_prefix(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:

        async def listed(**arguments: Any) -> list[str]:
            page = data(await client.call_tool("list_documents", arguments))
            assert page["total"] == len(page["items"])
            return [d["external_id"] for d in page["items"]]

        assert await listed(metadata={"lang": "en"}) == ["lamp"]
        assert await listed(metadata={"kind": "legal"}) == ["warranty"]
        assert await listed(metadata={"kind": "other"}) == []
        assert await listed(external_id_prefix="faq-") == ["faq-shipping"]
        assert await listed(external_id_prefix="l", metadata={"lang": "en"}) == ["lamp"]
        assert await listed(external_id_prefix="w", metadata={"lang": "en"}) == []
        # A cursor says where the last page ended, so it goes on under the filter.
        first = data(
            await client.call_tool("list_documents", {"limit": 1, "metadata": {"kind": "legal"}})
        )
        assert [d["external_id"] for d in first["items"]] == ["warranty"]
        assert first["next_cursor"] is None
        after_lamp = data(await client.call_tool("list_documents", {"limit": 2}))["next_cursor"]
        rest = data(
            await client.call_tool(
                "list_documents", {"cursor": after_lamp, "metadata": {"lang": "en"}}
            )
        )
        assert (rest["items"], rest["total"]) == ([], 1)


async def test_list_filters_are_refused_as_rest_refuses_them(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        bad_prefix = problem(
            await client.call_tool("list_documents", {"external_id_prefix": "bad prefix"}),
            "knowledge.invalid_external_id",
        )
        rest = _rest_problem(
            server, "GET", "/api/knowledge/docs", params={"external_id_prefix": "bad prefix"}
        )
        assert rest["code"] == "knowledge.invalid_external_id"
        assert [e["pointer"] for e in bad_prefix["errors"]] == ["/external_id_prefix"]
        assert [e["parameter"] for e in rest["errors"]] == ["external_id_prefix"]
        assert bad_prefix["errors"][0]["message"] == rest["errors"][0]["message"]

        many = {f"k{i}": i for i in range(SEARCH_METADATA_KEYS_MAX + 1)}
        too_many = problem(
            await client.call_tool("list_documents", {"metadata": many}),
            "request.validation_failed",
        )
        rest = _rest_problem(
            server,
            "GET",
            "/api/knowledge/docs",
            params={f"metadata.{k}": v for k, v in many.items()},
        )
        assert [e["pointer"] for e in too_many["errors"]] == ["/metadata"]
        assert too_many["errors"][0]["message"] == rest["errors"][0]["message"]
        # Both at once: each is named.
        both = problem(
            await client.call_tool(
                "list_documents", {"metadata": many, "external_id_prefix": "bad prefix"}
            ),
            "request.validation_failed",
        )
        assert {e["pointer"] for e in both["errors"]} == {"/metadata", "/external_id_prefix"}


async def test_a_hit_is_read_with_its_neighbours(server: Server) -> None:
    whole = str(MANUAL["content"])
    async with connect(f"{server.base}/mcp", server.key) as client:
        found = data(
            await client.call_tool(
                "search_knowledge",
                {"query": "Clause 0200", "mode": "keyword", "external_ids": ["warranty"]},
            )
        )
        (hit,) = found["results"]
        index = hit["chunk_index"]
        doc = data(await client.call_tool("get_document", {"external_id": "warranty"}))
        assert doc["chunk_count"] > index + 1 > 1  # a hit inside the document, not at an end

        alone = data(
            await client.call_tool(
                "get_document", {"external_id": "warranty", "around_chunk": index, "neighbours": 0}
            )
        )
        assert alone["content"] == hit["text"] and alone["chunks"] == [index]
        assert whole[alone["offset"] :].startswith(hit["text"])

        around = data(
            await client.call_tool(
                "get_document", {"external_id": "warranty", "around_chunk": index}
            )
        )
        assert around["chunks"] == [index - 1, index, index + 1]
        start, text = around["offset"], around["content"]
        assert text == whole[start : start + len(text)]
        assert start < alone["offset"] and hit["text"] in text
        assert around["next_offset"] == start + len(text) < len(whole)
        # Reading on from next_offset continues the document where the passage ends.
        after = data(
            await client.call_tool(
                "get_document",
                {"external_id": "warranty", "offset": around["next_offset"], "max_chars": 50},
            )
        )
        assert after["content"] == whole[start + len(text) :][:50] and after["chunks"] is None

        # Bounded by max_chars; the neighbours before the hit give way first.
        short = data(
            await client.call_tool(
                "get_document",
                {"external_id": "warranty", "around_chunk": index, "max_chars": len(hit["text"])},
            )
        )
        assert short["content"] == hit["text"] and index in short["chunks"]
        # The first and last chunks have neighbours on one side only.
        first = data(
            await client.call_tool(
                "get_document",
                {"external_id": "warranty", "around_chunk": 0, "neighbours": DOC_NEIGHBOURS_MAX},
            )
        )
        assert first["offset"] == 0 and first["chunks"] == list(range(DOC_NEIGHBOURS_MAX + 1))
        last = doc["chunk_count"] - 1
        end = data(
            await client.call_tool(
                "get_document", {"external_id": "warranty", "around_chunk": last}
            )
        )
        assert end["chunks"] == [last - 1, last] and end["next_offset"] is None
        assert whole.endswith(end["content"])


async def test_reading_around_a_chunk_refuses_what_it_cannot_do(server: Server) -> None:
    async with connect(f"{server.base}/mcp", server.key) as client:
        past = problem(
            await client.call_tool("get_document", {"external_id": "lamp", "around_chunk": 1}),
            "request.validation_failed",
        )
        assert [e["pointer"] for e in past["errors"]] == ["/around_chunk"]
        assert "1 chunk(s), 0 to 0" in past["detail"]
        both = problem(
            await client.call_tool(
                "get_document", {"external_id": "lamp", "around_chunk": 0, "offset": 5}
            ),
            "request.validation_failed",
        )
        assert [e["pointer"] for e in both["errors"]] == ["/offset"]
        wide = problem(
            await client.call_tool(
                "get_document",
                {"external_id": "lamp", "around_chunk": 0, "neighbours": DOC_NEIGHBOURS_MAX + 1},
            ),
            "request.validation_failed",
        )
        assert [e["pointer"] for e in wide["errors"]] == ["/neighbours"]
        problem(
            await client.call_tool("get_document", {"external_id": "lamp", "around_chunk": -1}),
            "request.validation_failed",
        )
        problem(
            await client.call_tool("get_document", {"external_id": "nope", "around_chunk": 0}),
            "knowledge.not_found",
        )
        problem(
            await client.call_tool("get_document", {"external_id": "bad id", "around_chunk": 0}),
            "knowledge.invalid_external_id",
        )
