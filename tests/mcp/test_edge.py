"""The MCP door's edge in process: which host names it answers, following the settings."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import AppFactory, new_key

pytestmark = pytest.mark.anyio

LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


async def post(app: Any, base: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=base, headers={"X-Api-Key": key}
    ) as client:
        return await client.post("/mcp", json=LIST_TOOLS, headers=HEADERS)


async def test_hosts_follow_the_settings(make_app: AppFactory) -> None:
    app = await make_app(host="10.0.0.7", allowed_hosts=["kb.example.com"])
    key = await new_key(app)
    for base in (
        "http://kb.example.com",
        "http://10.0.0.7:8000",
        "http://localhost:8000",
        "http://[::1]:9",
    ):
        r = await post(app, base, key)
        assert r.status_code == 200, (base, r.text)
        assert {t["name"] for t in r.json()["result"]["tools"]} >= {"search_knowledge"}
    r = await post(app, "http://kb.example.com.evil.test", key)
    assert r.status_code == 421 and r.json()["code"] == "request.misdirected"


async def test_a_wildcard_listen_address_is_not_a_host_name(make_app: AppFactory) -> None:
    app = await make_app(host="0.0.0.0")
    key = await new_key(app)
    assert (await post(app, "http://0.0.0.0:8000", key)).status_code == 421
    assert (await post(app, "http://127.0.0.1:8000", key)).status_code == 200
