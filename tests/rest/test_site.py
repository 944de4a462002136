"""The pages a person opens: `/` (the landing page) and `/docs` (the OpenAPI document rendered,
its Markdown as HTML)."""

from __future__ import annotations

import re

import httpx
import pytest

from app.rest.system import markdown
from tests.conftest import AppFactory, client_for

pytestmark = pytest.mark.anyio


async def test_landing_page_links_docs_graphql_and_login(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "PersonAIzer" in r.text
    links = set(re.findall(r'href="([^"]+)"', r.text))
    assert {"/docs", "/graphql", "/login", "/healthz", "/metrics"} <= links
    assert "http://testserver/mcp" in r.text  # how an agent connects, with this server's address
    for link in links:  # every link leads somewhere
        page = await anon.get(link, headers={"Accept": "text/html"})
        assert page.status_code == 200, link


async def test_landing_page_leaves_out_what_is_off(make_app: AppFactory) -> None:
    app = await make_app(metrics=False, graphiql=False)
    async with client_for(app) as client:
        r = await client.get("/")
    links = set(re.findall(r'href="([^"]+)"', r.text))
    assert "/metrics" not in links and "/graphql" not in links
    assert "/docs" in links and "/login" in links


async def test_docs_render_the_descriptions_markdown(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/docs")
    assert r.status_code == 200
    page = r.text
    search = page[page.index('id="searchKnowledge"') :]
    search = search[: search.index("</section>")]
    # Backticks, bullets and emphasis of the search description become HTML.
    assert "<code>persona.not_found</code>" in search
    assert "<li><code>semantic</code>" in search
    assert "`" not in search
    # The rate-limit policy sentence the OpenAPI builder appends is Markdown too.
    assert "Rate-limit policy: <code>search</code>" in search


def test_markdown_escapes_html() -> None:
    html = markdown("A <script>alert(1)</script> and <b>bold</b> and `x < y`")
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "<code>x &lt; y</code>" in html


async def test_min_score_is_validated(api: httpx.AsyncClient) -> None:
    for bad in (-0.1, 1.5, "high"):
        r = await api.post("/api/knowledge/search", json={"query": "x", "min_score": bad})
        assert r.status_code == 422
        assert r.json()["errors"][0]["pointer"] == "/min_score"
