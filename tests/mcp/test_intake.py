"""The MCP door's edge in process: what it refuses before the SDK sees a byte (the shared
intake, with the same problem+json codes REST answers), and what every message costs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.mcp import edge
from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8000"  # a host name the MCP door answers
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}
INITIALIZE = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"},
}
RATELIMIT_RE = re.compile(r'^"(reads|search)";r=(\d+);t=\d+$')


def mcp_client(app: Starlette, key: str | None = None) -> httpx.AsyncClient:
    headers = {**MCP_HEADERS, **({"X-Api-Key": key} if key else {})}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


def message(method: str, params: dict[str, Any] | None = None, id: int | None = 1) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        body["id"] = id
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


def call(arguments: bytes, tool: str = "search_knowledge") -> bytes:
    """A `tools/call` whose arguments are these raw bytes (which may be anything)."""
    return (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "'
        + tool.encode()
        + b'", "arguments": '
        + arguments
        + b"}}"
    )


def charged(response: httpx.Response) -> tuple[str, int]:
    """The policy charged and the units left, from the RateLimit field."""
    match = RATELIMIT_RE.match(response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    return match[1], int(match[2])


def tool_result(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result: dict[str, Any] = response.json()["result"]
    return result


@pytest.fixture
async def tight(make_app: AppFactory) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """An app and an MCP client of a user whose plan allows 4 reads and 2 searches a minute."""
    app = await make_app(
        plans={"tight": plan_config("tight", reads_per_minute=4, searches_per_minute=2)}
    )
    key = await new_key(app, plan="tight")
    async with mcp_client(app, key) as client:
        yield app, client


async def test_an_oversize_body_is_refused_before_anything_runs(
    tight: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, client = tight
    query = json.dumps("lamp " * 60_000).encode()  # 300 KB, over the 256 KiB default
    big = call(b'{"query": ' + query + b"}")
    body = assert_problem(await client.post("/mcp", content=big), 413, "request.too_large")
    assert "limit is 262144" in body["detail"]

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    r = await client.post("/mcp", content=streamed())
    assert_problem(r, 413, "request.too_large")
    # Small in bytes, but more values than any real message holds (REST's bound is 1,000,000).
    ids = call(b'{"query": "x", "external_ids": [' + b'"a",' * edge.MAX_VALUES + b'"a"]}')
    assert len(ids) < 64 * 1024
    r = await client.post("/mcp", content=ids)
    assert "values" in assert_problem(r, 413, "request.too_large")["detail"]
    arrays = call(b'{"query": "x", "metadata": {"a": [' + b"[]," * edge.MAX_ARRAYS + b"[]]}}")
    r = await client.post("/mcp", content=arrays)
    assert "arrays" in assert_problem(r, 413, "request.too_large")["detail"]
    # Each refusal was charged as a read, as REST charges one; none reached the search.
    assert charged(r) == ("reads", 0)
    found = tool_result(await client.post("/mcp", content=call(b'{"query": "lamp"}')))
    assert not found["isError"] and found["structuredContent"]["results"] == []


async def test_the_largest_real_call_fits_the_default_bound(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="unlimited")
    ids = ["i" * 127 + str(n % 10) for n in range(1000)]
    # Every character escaped as `\uXXXX`: the most bytes a query and a filter can take.
    escaped = "".join(f"\\u{ord(c):04x}" for c in "é" * 1000)
    filter_value = "".join(f"\\u{ord(c):04x}" for c in "A" * 8000)
    arguments = (
        f'{{"query": "{escaped}", "external_ids": {json.dumps(ids)}, '
        f'"metadata": {{"k": "{filter_value}"}}}}'
    ).encode()
    body = call(arguments)
    assert len(body) > 180_000
    async with mcp_client(app, key) as client:
        found = tool_result(await client.post("/mcp", content=body))
    assert not found["isError"], found
    assert found["structuredContent"]["results"] == []


async def test_the_bound_is_a_setting(make_app: AppFactory) -> None:
    app = await make_app(mcp_max_body_bytes=4096)
    key = await new_key(app, plan="unlimited")
    async with mcp_client(app, key) as client:
        body = call(json.dumps({"query": "x" * 1000, "external_ids": ["a"] * 1000}).encode())
        r = await client.post("/mcp", content=body)
        assert "limit is 4096" in assert_problem(r, 413, "request.too_large")["detail"]
        assert (await client.post("/mcp", content=message("ping"))).json()["result"] == {}


# The argument objects of a search: each bad in a way the intake refuses, so REST's
# `POST /api/knowledge/search` and MCP's `search_knowledge` must answer it with the same code.
BAD_ARGUMENTS = [
    pytest.param(b'{"query": "x", "metadata": {"a": ' + b"[" * 70 + b"]" * 70 + b"}}", id="deep"),
    pytest.param(b'{"query": "x\\ud800"}', id="lone-surrogate"),
    pytest.param(b'{"query": "\\udc00\\ud800"}', id="reversed-pair"),
    pytest.param(b'{"query": "x", "min_score": NaN}', id="nan"),
    pytest.param(b'{"query": "x", "metadata": {"a": Infinity}}', id="infinity"),
    pytest.param(b'{"query": "x", "metadata": {"a": 1e999}}', id="beyond-a-float"),
    pytest.param(b'{"query": "\xff"}', id="not-utf8"),
    pytest.param(b'{"query": "x"', id="truncated"),
]


@pytest.mark.parametrize("arguments", BAD_ARGUMENTS)
async def test_malformed_json_gets_the_code_rest_gives(
    make_app: AppFactory, arguments: bytes
) -> None:
    app = await make_app()
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as rest, mcp_client(app, key) as door:
        r = await rest.post(
            "/api/knowledge/search",
            content=arguments,
            headers={"content-type": "application/json"},
        )
        rest_code = assert_problem(r, 400, "request.malformed_json")["code"]
        r = await door.post("/mcp", content=call(arguments))
        assert assert_problem(r, 400, "request.malformed_json")["code"] == rest_code
        assert charged(r)[0] == "reads"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("text/plain", b'{"query": "x"}', 415, "request.unsupported_media_type"),
        (None, b'{"query": "x"}', 415, "request.unsupported_media_type"),
        ("application/json", b"", 400, "request.malformed_json"),
        ("application/json", b"  \n", 400, "request.malformed_json"),
    ],
)
async def test_media_type_and_empty_bodies_like_rest(
    make_app: AppFactory, content_type: str | None, body: bytes, status: int, code: str
) -> None:
    app = await make_app()
    key = await new_key(app, plan="unlimited")
    headers = {"content-type": content_type} if content_type else {}
    async with client_for(app, **{"X-Api-Key": key}) as rest, mcp_client(app, key) as door:
        if content_type is None:
            del door.headers["content-type"]
        r = await rest.post("/api/knowledge/search", content=body, headers=headers)
        assert_problem(r, status, code)
        mcp_body = call(body) if body.strip() else body
        r = await door.post("/mcp", content=mcp_body, headers=headers)
        assert_problem(r, status, code)


async def test_only_application_json_and_only_post(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="unlimited")
    async with mcp_client(app, key) as client, mcp_client(app) as anonymous:
        # REST takes application/*+json; MCP's transport is application/json alone.
        r = await client.post(
            "/mcp", content=message("ping"), headers={"content-type": "application/vnd.x+json"}
        )
        assert_problem(r, 415, "request.unsupported_media_type")
        # Stateless: no stream to GET (the SDK would hold one open, empty), no session to
        # DELETE. Refused before the key, as REST refuses a method a route does not take.
        for method in ("GET", "DELETE", "PUT"):
            for c in (client, anonymous):
                r = await c.request(method, "/mcp")
                assert_problem(r, 405, "request.method_not_allowed")
                assert r.headers["allow"] == "POST"


async def test_every_message_is_charged(tight: tuple[Starlette, httpx.AsyncClient]) -> None:
    _, client = tight
    r = await client.post("/mcp", content=message("initialize", INITIALIZE))
    assert r.status_code == 200 and "result" in r.json()
    assert r.headers["ratelimit-policy"] == '"reads";q=4;w=60'
    assert charged(r) == ("reads", 3)
    r = await client.post("/mcp", content=message("notifications/initialized", id=None))
    assert r.status_code == 202 and charged(r) == ("reads", 2)
    r = await client.post("/mcp", content=message("ping"))
    assert r.json()["result"] == {} and charged(r) == ("reads", 1)
    r = await client.post("/mcp", content=message("tools/list"))
    assert len(r.json()["result"]["tools"]) == 5 and charged(r) == ("reads", 0)
    for refused in (message("tools/list"), message("initialize", INITIALIZE), message("ping")):
        r = await client.post("/mcp", content=refused)
        body = assert_problem(r, 429, "limits.rate_exceeded")
        assert int(r.headers["retry-after"]) >= 1 and charged(r) == ("reads", 0)
        assert "reads" in body["detail"]
    # A body refused for itself is charged too: the 429 comes first, as in REST.
    assert_problem(await client.post("/mcp", content=b"{"), 429, "limits.rate_exceeded")

    # Searches have their own count; a tool call over it is a tool result with `retry_after`.
    for left in (1, 0):
        r = await client.post("/mcp", content=call(b'{"query": "lamp"}'))
        assert not tool_result(r)["isError"] and charged(r) == ("search", left)
    r = await client.post("/mcp", content=call(b'{"query": "lamp"}'))
    result = tool_result(r)
    assert result["isError"] and result["structuredContent"]["code"] == "limits.rate_exceeded"
    assert result["structuredContent"]["retry_after"] >= 1
    assert charged(r) == ("search", 0) and "retry-after" not in r.headers
    r = await client.post("/mcp", content=call(b"{}", tool="list_personas"))
    result = tool_result(r)
    assert result["structuredContent"]["code"] == "limits.rate_exceeded"
    assert r.headers["ratelimit-policy"] == '"reads";q=4;w=60'


async def test_unknown_tools_are_charged_as_reads(
    tight: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, client = tight
    for name in (b'"no_such_tool"', b"7", b'["search_knowledge"]'):
        r = await client.post(
            "/mcp",
            content=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
            + name
            + b', "arguments": {}}}',
        )
        assert charged(r)[0] == "reads", r.text


async def test_failed_keys_are_counted_per_address(make_app: AppFactory) -> None:
    app = await make_app(auth_failures_per_minute=2)
    key = await new_key(app, plan="unlimited")
    async with mcp_client(app, "pa_live_" + "0" * 40) as wrong, mcp_client(app, key) as right:
        for status in (401, 401, 429):
            r = await wrong.post("/mcp", content=message("ping"))
            assert r.status_code == status
            assert "ratelimit" not in r.headers  # no user to charge
        # Past the limit only failures are refused: a valid key from the address goes through.
        assert (await right.post("/mcp", content=message("ping"))).json()["result"] == {}
