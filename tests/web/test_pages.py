"""The dashboard's reading pages through the full ASGI stack on both engines: what they show is
what the API holds for the signed-in user, and nothing of anyone else's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from app.web.common import readable_time
from app.web.pages import PAGE_SIZE
from tests.conftest import assert_problem, client_for

pytestmark = pytest.mark.anyio

EMAIL = "pages@example.com"
PASSWORD = "correct horse battery"

DOCS = [
    {
        "external_id": "faq:shipping",
        "title": "Shipping times",
        "content": "Orders ship within two business days. Delivery takes three to five days.",
    },
    {
        "external_id": "faq:returns",
        "title": "Returns policy",
        "content": "You can return any item within 30 days for a full refund.",
    },
    {
        "external_id": "guide_setup",
        "title": "Setting up the espresso machine",
        "content": "Fill the water tank, grind the beans finely and tamp them firmly.",
    },
]


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


async def seed(api: httpx.AsyncClient, docs: list[dict[str, str]]) -> str:
    """Upload `docs` and a persona with the first two attached; returns the persona's id."""
    r = await api.put("/api/knowledge/docs", json={"items": docs})
    assert r.status_code == 200, r.text
    r = await api.post(
        "/api/personas",
        json={"name": "Support bot", "description": "Answers orders", "instructions": "Be kind."},
    )
    assert r.status_code == 201, r.text
    persona_id: str = r.json()["id"]
    r = await api.put(
        f"/api/personas/{persona_id}/knowledge",
        json={"external_ids": [d["external_id"] for d in docs[:2]]},
    )
    assert r.status_code == 200, r.text
    return persona_id


@pytest.fixture
async def signed_in(app: Starlette) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(a signed-in browser, an API client of the same user)."""
    runtime = app.state.runtime
    await accounts.create_user(runtime=runtime, email=EMAIL, password=PASSWORD, plan_id="unlimited")
    key = (await accounts.create_key(runtime=runtime, email=EMAIL)).key
    async with client_for(app) as browser, client_for(app, **{"X-Api-Key": key}) as api:
        token = csrf_of(await browser.get("/login"))
        r = await browser.post(
            "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}
        )
        assert r.status_code == 303
        yield browser, api


def test_readable_time() -> None:
    shown = readable_time(datetime(2026, 11, 29, 10, 0, 5, 123000, tzinfo=UTC))
    assert shown == (
        '<time datetime="2026-11-29T10:00:05.123Z" title="2026-11-29T10:00:05.123Z">'
        "29 Nov 2026, 10:00 UTC</time>"
    )
    assert readable_time(None) == "never"


async def test_pages_need_a_session_and_refuse_api_keys(app: Starlette) -> None:
    paths = ["/dashboard", "/dashboard/documents", "/dashboard/personas", "/dashboard/search"]
    async with client_for(app) as anon:
        for path in paths:
            r = await anon.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/login", path
        for path in paths:
            r = await anon.get(path, headers={"X-Api-Key": "pa_live_" + "a" * 40})
            assert_problem(r, 403, "auth.forbidden")


async def test_usage_shows_the_plans_limits_with_bars(
    signed_in: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    browser, api = signed_in
    await seed(api, DOCS)
    usage = (await api.get("/api/subscription/usage")).json()["usage"]
    page = await browser.get("/dashboard")
    assert page.status_code == 200
    for name in ("knowledge_docs", "knowledge_chars", "personas"):
        part = usage[name]
        meter = re.search(rf'id="limit-{name}".*?<meter ([^>]*)>', page.text, re.S)
        assert meter, name
        assert f'max="{part["limit"]}"' in meter[1] and f'value="{part["used"]}"' in meter[1]
    assert 'value="3"' in re.search(r'id="limit-knowledge_docs".*?</meter>', page.text, re.S)[0]
    assert "<time datetime=" in page.text


async def test_documents_list_find_and_view(
    signed_in: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    browser, api = signed_in
    await seed(api, DOCS)
    page = await browser.get("/dashboard/documents")
    assert page.status_code == 200
    assert all(d["external_id"] in page.text for d in DOCS) and "3 in all" in page.text

    async def found(q: str) -> list[str]:
        r = await browser.get("/dashboard/documents", params={"q": q})
        assert r.status_code == 200
        return re.findall(r'<td data-label="external_id"><a [^>]*><code>([^<]+)</code>', r.text)

    assert await found("faq:") == ["faq:returns", "faq:shipping"]  # an external_id prefix
    assert await found("ESPRESSO") == ["guide_setup"]  # words of the title, any case
    assert await found("FAQ:") == []  # external_ids are case-sensitive
    assert await found("guide%") == []  # `%` and `_` are not wildcards
    assert await found("faq_") == []

    doc = await browser.get("/dashboard/documents/faq:shipping")
    assert doc.status_code == 200
    assert DOCS[0]["content"] in doc.text and "Shipping times" in doc.text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+Z" title=', doc.text)
    assert_problem(await browser.get("/dashboard/documents/nope"), 404, "knowledge.not_found")


async def test_documents_are_paged(signed_in: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    browser, api = signed_in
    many = [
        {"external_id": f"doc-{i:03d}", "title": f"Note {i}", "content": f"note number {i}"}
        for i in range(PAGE_SIZE + 3)
    ]
    assert (await api.put("/api/knowledge/docs", json={"items": many})).status_code == 200
    first = await browser.get("/dashboard/documents")
    assert "doc-000" in first.text and f"doc-{PAGE_SIZE:03d}" not in first.text
    following = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    assert following
    second = await browser.get(following[1].replace("&amp;", "&"))
    assert f"doc-{PAGE_SIZE:03d}" in second.text and "doc-000" not in second.text
    assert 'rel="next"' not in second.text and "First page" in second.text
    # A cursor that does not decode is the API's 400, not a 500.
    r = await browser.get("/dashboard/documents", params={"cursor": "garbage"})
    assert_problem(r, 400, "request.invalid_cursor")


async def test_personas_and_their_documents(
    app: Starlette, signed_in: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    browser, api = signed_in
    persona_id = await seed(api, DOCS)
    listed = await browser.get("/dashboard/personas")
    assert listed.status_code == 200 and "Support bot" in listed.text
    assert f'href="/dashboard/personas/{persona_id}"' in listed.text
    page = await browser.get(f"/dashboard/personas/{persona_id}")
    assert page.status_code == 200 and "Be kind." in page.text
    attached = re.findall(r'<td data-label="external_id"><a [^>]*><code>([^<]+)</code>', page.text)
    assert attached == ["faq:returns", "faq:shipping"]

    # Knowledge by rule shows beside the attached documents, each saying how it is there.
    r = await api.patch(
        f"/api/personas/{persona_id}",
        json={"knowledge_filter": {"external_id_prefixes": ["guide"]}},
    )
    assert r.status_code == 200, r.text
    page = await browser.get(f"/dashboard/personas/{persona_id}")
    rows = re.findall(
        r'<code>([^<]+)</code></a></td>\s*<td data-label="title">[^<]*</td>\s*'
        r'<td data-label="via">(\w+)</td>',
        page.text,
    )
    assert dict(rows) == {
        "faq:returns": "attached", "faq:shipping": "attached", "guide_setup": "filter"
    }  # fmt: skip
    assert "external_id starts with <code>guide</code>" in page.text

    # Another user's persona is not found, exactly like a missing one.
    runtime = app.state.runtime
    await accounts.create_user(runtime=runtime, email="else@example.com", plan_id="unlimited")
    other_key = (await accounts.create_key(runtime=runtime, email="else@example.com")).key
    async with client_for(app, **{"X-Api-Key": other_key}) as other:
        theirs = (await other.post("/api/personas", json={"name": "Theirs"})).json()["id"]
    r = await browser.get(f"/dashboard/personas/{theirs}")
    assert_problem(r, 404, "persona.not_found")


async def test_search_playground(signed_in: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    browser, api = signed_in
    persona_id = await seed(api, DOCS)
    empty = await browser.get("/dashboard/search")
    assert empty.status_code == 200 and 'id="results"' not in empty.text
    assert f'<option value="{persona_id}">Support bot</option>' in empty.text

    query = "how long does delivery take"
    for mode in ("hybrid", "semantic", "keyword"):
        expected = (
            await api.post("/api/knowledge/search", json={"query": query, "mode": mode, "k": 10})
        ).json()["results"]
        page = await browser.get("/dashboard/search", params={"q": query, "mode": mode})
        assert page.status_code == 200
        shown = re.findall(r'<code class="muted">([^<]+)</code>', page.text)
        scores = re.findall(r'<strong class="score">([\d.]+)</strong>', page.text)
        assert shown == [h["external_id"] for h in expected], mode
        assert scores == [f"{h['score']:.4f}" for h in expected], mode
        assert shown[0] == "faq:shipping" and DOCS[0]["content"] in page.text

    # Scoped to the persona: the espresso guide is not attached, so never a hit.
    page = await browser.get(
        "/dashboard/search",
        params={"q": "espresso beans", "mode": "semantic", "persona": persona_id},
    )
    shown = re.findall(r'<code class="muted">([^<]+)</code>', page.text)
    assert "guide_setup" not in shown and set(shown) <= {"faq:shipping", "faq:returns"}

    r = await browser.get("/dashboard/search", params={"q": "x", "mode": "fuzzy"})
    assert_problem(r, 422, "request.validation_failed")
    r = await browser.get("/dashboard/search", params={"q": "x", "persona": "per_nope"})
    assert_problem(r, 404, "persona.not_found")
    r = await browser.get("/dashboard/search", params={"q": "x" * 1001})
    assert_problem(r, 422, "request.validation_failed")
