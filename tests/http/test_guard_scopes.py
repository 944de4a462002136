"""The guard's scope rules in the doors other than REST: GraphQL checks scopes per field
(tests/graphql/test_scopes.py) and MCP per tool (tests/mcp/test_scopes.py), so a search-only key
or token gets in; a browser Origin outside a key's allowed origins is refused everywhere."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette

from app.client import Client
from app.services import accounts
from app.services.runtime import Runtime
from tests.conftest import AppFactory, assert_problem, client_for, new_key
from tests.mcp.test_edge import HEADERS, LIST_TOOLS

pytestmark = pytest.mark.anyio
EMAIL = "owner@example.com"
QUERY = {"query": '{ search(query: "x") { results { externalId } } }'}


async def test_graphql_and_mcp_admit_restricted_callers_to_what_they_may_do(
    make_app: AppFactory,
) -> None:
    app = await make_app(allowed_hosts=["testserver"])
    full = await new_key(app, EMAIL, plan="unlimited")
    runtime: Runtime = app.state.runtime
    limited = await accounts.create_key(runtime=runtime, email=EMAIL, scopes=["search"])
    assert limited.signing_secret
    token = Client.mint_token(key=limited.key, signing_secret=limited.signing_secret)
    async with client_for(app, **{"X-Api-Key": full}) as api:
        assert (await api.post("/graphql", json=QUERY)).status_code == 200
        assert (await api.post("/mcp", json=LIST_TOOLS, headers=HEADERS)).status_code == 200
    for credential in (limited.key, token):
        async with client_for(app, **{"X-Api-Key": credential}) as api:
            # A search-only credential may search through GraphQL now.
            r = await api.post("/graphql", json=QUERY)
            assert r.status_code == 200 and "errors" not in r.json(), r.text
            r = await api.post("/mcp", json=LIST_TOOLS, headers=HEADERS)
            assert r.status_code == 200, r.text
            names = {t["name"] for t in r.json()["result"]["tools"]}
            assert names == {"search_knowledge"}


async def test_an_origin_outside_the_keys_list_is_refused(app: Starlette) -> None:
    await new_key(app, EMAIL)
    runtime: Runtime = app.state.runtime
    key = await accounts.create_key(
        runtime=runtime, email=EMAIL, allowed_origins=["https://shop.example"]
    )
    async with client_for(app, **{"X-Api-Key": key.key}) as api:
        assert (await api.get("/api/personas")).status_code == 200  # no Origin: not a browser
        ok = await api.get("/api/personas", headers={"Origin": "https://shop.example"})
        assert ok.status_code == 200
        other = await api.get("/api/personas", headers={"Origin": "https://evil.example"})
        assert_problem(other, 403, "auth.origin_not_allowed")
