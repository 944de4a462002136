"""The GraphQL explorer works offline: its page and every asset it references are this server's."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import AppFactory, client_for

pytestmark = pytest.mark.anyio

_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


async def test_page_and_assets_are_served_locally(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/graphql", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "://" not in r.text  # no external URL, not even protocol-relative ones below
    references = _REFERENCE.findall(r.text)
    assert len(references) == 5  # the stylesheet, React, ReactDOM, GraphiQL, our start script
    for ref in references:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        asset = await anon.get(ref)
        assert asset.status_code == 200, ref
        kind = "text/css" if ref.endswith(".css") else "javascript"
        assert kind in asset.headers["content-type"], (ref, asset.headers["content-type"])
        assert len(asset.content) > 500
    # The scripts the page starts with define what the next ones use.
    js = {ref: (await anon.get(ref)).text for ref in references if ref.endswith(".js")}
    start = next(text for ref, text in js.items() if ref.endswith("explorer.js"))
    assert "GraphiQL.createFetcher" in start and "X-Api-Key" in start


async def test_licences_ship_with_the_assets(anon: httpx.AsyncClient) -> None:
    for name in ("LICENSE.graphiql", "LICENSE.react", "LICENSE.react-dom"):
        r = await anon.get(f"/static/graphiql/{name}")
        assert r.status_code == 200 and "MIT License" in r.text


async def test_no_explorer_in_production(make_app: AppFactory) -> None:
    app = await make_app(environment="production", session_secret="s" * 32)
    async with client_for(app) as client:
        assert (await client.get("/static/graphiql/explorer.js")).status_code == 404
        landing = await client.get("/")
        assert 'href="/graphql"' not in landing.text


async def test_an_operator_can_turn_it_on_in_production(make_app: AppFactory) -> None:
    app = await make_app(environment="production", session_secret="s" * 32, graphiql=True)
    async with client_for(app) as client:
        assert (await client.get("/graphql", headers={"Accept": "text/html"})).status_code == 200
        assert (await client.get("/static/graphiql/explorer.js")).status_code == 200
