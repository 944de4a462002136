"""Persona knowledge by rule (API.md section 13): a persona's `knowledge_filter`, and the
knowledge list's own metadata and prefix filters, through HTTP on both engines."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from tests.conftest import assert_problem, client_for, new_key
from tests.graphql.conftest import gql_data

pytestmark = pytest.mark.anyio

PERSONAS = "/api/personas"
DOCS = "/api/knowledge/docs"
SEARCH = "/api/knowledge/search"

KNOWLEDGE = """
query($id: ID!, $first: Int) {
  persona(id: $id) {
    knowledgeCount
    knowledgeFilter { metadata externalIdPrefixes }
    knowledge(first: $first) { total nextCursor items { externalId via } }
  }
}
"""


@pytest.fixture
async def api(app: Starlette) -> Any:
    key = await new_key(app, plan="pro")
    async with client_for(app, **{"X-Api-Key": key}) as client:
        yield client


async def put_docs(api: httpx.AsyncClient, *docs: tuple[str, dict[str, Any]]) -> None:
    items = [
        {"external_id": e, "content": f"Shipping answers in {e}.", "metadata": m} for e, m in docs
    ]
    r = await api.put(DOCS, json={"items": items})
    assert r.status_code == 200, r.text


async def create(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await api.post(PERSONAS, json={"name": "Ava", **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def searched(api: httpx.AsyncClient, persona_id: str) -> list[str]:
    r = await api.post(SEARCH, json={"query": "shipping", "k": 50, "persona_id": persona_id})
    assert r.status_code == 200, r.text
    return sorted(h["external_id"] for h in r.json()["results"])


async def listed(api: httpx.AsyncClient, persona_id: str) -> dict[str, str]:
    data = await gql_data(api, KNOWLEDGE, {"id": persona_id, "first": 100})
    return {i["externalId"]: i["via"].lower() for i in data["persona"]["knowledge"]["items"]}


async def count(api: httpx.AsyncClient, persona_id: str) -> int:
    n: int = (await api.get(f"{PERSONAS}/{persona_id}")).json()["knowledge_count"]
    return n


async def test_a_document_written_later_joins_by_filter(api: httpx.AsyncClient) -> None:
    await put_docs(api, ("att", {}), ("old", {"source": "support"}), ("other", {"source": "x"}))
    p = await create(api, knowledge_filter={"metadata": {"source": "support"}})
    assert p["knowledge_filter"] == {"metadata": {"source": "support"}, "external_id_prefixes": []}
    assert p["knowledge_count"] == 1
    r = await api.put(f"{PERSONAS}/{p['id']}/knowledge", json={"external_ids": ["att", "old"]})
    assert r.status_code == 200
    # Written after the rule: joins with no further call.
    await put_docs(api, ("new", {"source": "support", "lang": "en"}))
    assert await searched(api, p["id"]) == ["att", "new", "old"]
    # `old` is attached and matches: `attached` wins.
    assert await listed(api, p["id"]) == {"att": "attached", "new": "filter", "old": "attached"}
    assert await count(api, p["id"]) == 3
    items = (await api.get(PERSONAS)).json()["items"]
    assert [i["knowledge_count"] for i in items] == [3]
    # The attached set is what PUT .../knowledge set, as before.
    got = (await api.get(f"{PERSONAS}/{p['id']}")).json()
    assert got["knowledge_external_ids"] == ["att", "old"]


async def test_metadata_is_type_strict(api: httpx.AsyncClient) -> None:
    await put_docs(
        api,
        ("int", {"flag": 1}),
        ("str", {"flag": "true"}),
        ("yes", {"flag": True}),
        ("float", {"n": 1.0}),
        ("big", {"n": 2**60}),
    )
    p = await create(api, knowledge_filter={"metadata": {"flag": True}})
    assert await searched(api, p["id"]) == ["yes"]
    assert await listed(api, p["id"]) == {"yes": "filter"}
    n = await create(api, knowledge_filter={"metadata": {"n": 1}})
    assert await searched(api, n["id"]) == ["float"]  # numbers by value: 1 is 1.0
    big = await create(api, knowledge_filter={"metadata": {"n": 2**60}})
    assert await listed(api, big["id"]) == {"big": "filter"}


async def test_prefixes_and_metadata_combine(api: httpx.AsyncClient) -> None:
    await put_docs(
        api,
        ("faq-a", {"lang": "en"}),
        ("faq-b", {"lang": "de"}),
        ("FAQ-c", {"lang": "en"}),
        ("faq_d", {"lang": "en"}),
        ("guide-e", {"lang": "en"}),
        ("guidf", {"lang": "en"}),
    )
    p = await create(api, knowledge_filter={"external_id_prefixes": ["faq-", "guide"]})
    # Case-sensitive, `_` is no wildcard, prefixes OR'ed.
    assert await searched(api, p["id"]) == ["faq-a", "faq-b", "guide-e"]
    r = await api.patch(
        f"{PERSONAS}/{p['id']}",
        json={"knowledge_filter": {"metadata": {"lang": "en"}, "external_id_prefixes": ["faq-"]}},
    )
    assert r.status_code == 200 and r.json()["knowledge_count"] == 1
    assert await listed(api, p["id"]) == {"faq-a": "filter"}


async def test_patch_to_null_removes_the_rule(api: httpx.AsyncClient) -> None:
    await put_docs(api, ("a", {"source": "s"}), ("b", {"source": "s"}))
    p = await create(api, knowledge_filter={"metadata": {"source": "s"}})
    assert await count(api, p["id"]) == 2
    r = await api.patch(f"{PERSONAS}/{p['id']}", json={"name": "Bea"})
    assert r.json()["knowledge_filter"] == {"metadata": {"source": "s"}, "external_id_prefixes": []}
    r = await api.patch(f"{PERSONAS}/{p['id']}", json={"knowledge_filter": None})
    assert r.status_code == 200, r.text
    assert r.json()["knowledge_filter"] is None and r.json()["knowledge_count"] == 0
    assert await searched(api, p["id"]) == []
    assert await listed(api, p["id"]) == {}


@pytest.mark.parametrize(
    ("rule", "pointer"),
    [
        ({}, "/knowledge_filter"),
        ({"metadata": {}, "external_id_prefixes": []}, "/knowledge_filter"),
        ({"external_id_prefixes": ["bad prefix"]}, "/knowledge_filter/external_id_prefixes/0"),
        ({"external_id_prefixes": [""]}, "/knowledge_filter/external_id_prefixes/0"),
        (
            {"external_id_prefixes": [f"p{i}" for i in range(21)]},
            "/knowledge_filter/external_id_prefixes",
        ),
        ({"metadata": {f"k{i}": 1 for i in range(33)}}, "/knowledge_filter/metadata"),
        ({"metadata": {"n": 2**64}}, "/knowledge_filter/metadata"),
        ({"metadata": "source=x"}, "/knowledge_filter/metadata"),
        ("support", "/knowledge_filter"),
    ],
)
async def test_bad_filters_are_refused(api: httpx.AsyncClient, rule: Any, pointer: str) -> None:
    r = await api.post(PERSONAS, json={"name": "Ava", "knowledge_filter": rule})
    assert r.status_code == 422, r.text
    assert pointer in [e["pointer"] for e in r.json()["errors"]], r.json()
    p = await create(api)
    r = await api.patch(f"{PERSONAS}/{p['id']}", json={"knowledge_filter": rule})
    assert r.status_code == 422
    assert pointer in [e["pointer"] for e in r.json()["errors"]]
    assert (await api.get(f"{PERSONAS}/{p['id']}")).json()["knowledge_filter"] is None


async def test_graphql_sets_the_filter(api: httpx.AsyncClient) -> None:
    await put_docs(api, ("a", {"team": "x"}))
    data = await gql_data(
        api,
        'mutation { createPersona(input: {name: "G", knowledgeFilter: {metadata: {team: "x"}}})'
        " { id knowledgeCount knowledgeFilter { metadata externalIdPrefixes } } }",
    )
    created = data["createPersona"]
    assert created["knowledgeCount"] == 1
    assert created["knowledgeFilter"] == {"metadata": {"team": "x"}, "externalIdPrefixes": []}
    data = await gql_data(
        api,
        "mutation($id: ID!) { updatePersona(id: $id, input: {knowledgeFilter: null})"
        " { knowledgeCount knowledgeFilter { metadata } } }",
        {"id": created["id"]},
    )
    assert data["updatePersona"] == {"knowledgeCount": 0, "knowledgeFilter": None}


async def test_listing_pages_through_filtered_knowledge(api: httpx.AsyncClient) -> None:
    await put_docs(api, *((f"d{i}", {"s": 1}) for i in range(5)), ("z", {}))
    p = await create(api, knowledge_filter={"metadata": {"s": 1}})
    await api.put(f"{PERSONAS}/{p['id']}/knowledge", json={"external_ids": ["z"]})
    query = """query($id: ID!, $after: String) { persona(id: $id) {
      knowledge(first: 2, after: $after) { total nextCursor items { externalId via } } } }"""
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        page = (await gql_data(api, query, {"id": p["id"], "after": after}))["persona"]["knowledge"]
        assert page["total"] == 6
        seen += [(i["externalId"], i["via"]) for i in page["items"]]
        after = page["nextCursor"]
        if after is None:
            break
    assert seen == [*((f"d{i}", "FILTER") for i in range(5)), ("z", "ATTACHED")]


# --- the knowledge list's filters ----------------------------------------------------------


async def ids(api: httpx.AsyncClient, query: str) -> list[str]:
    r = await api.get(f"{DOCS}?{query}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(body["items"])
    return [d["external_id"] for d in body["items"]]


async def test_list_filters_by_metadata_and_prefix(api: httpx.AsyncClient) -> None:
    await put_docs(
        api,
        ("a1", {"lang": "en", "flag": True}),
        ("a2", {"lang": "en", "flag": 1}),
        ("a3", {"lang": "de", "flag": "true"}),
        ("b1", {"lang": "en", "n": 1.0, "code": "007"}),
        ("b_2", {"lang": None}),
    )
    assert await ids(api, "metadata.lang=en") == ["a1", "a2", "b1"]
    assert await ids(api, "metadata.flag=true") == ["a1"]
    assert await ids(api, "metadata.flag=1") == ["a2"]
    assert await ids(api, 'metadata.flag="true"') == ["a3"]
    assert await ids(api, "metadata.flag=%22true%22") == ["a3"]
    assert await ids(api, "metadata.n=1") == ["b1"]
    assert await ids(api, "metadata.code=007") == ["b1"]  # not JSON: the string
    assert await ids(api, "metadata.lang=null") == ["b_2"]
    assert await ids(api, "metadata.lang=en&metadata.flag=true") == ["a1"]
    assert await ids(api, "external_id_prefix=a") == ["a1", "a2", "a3"]
    assert await ids(api, "external_id_prefix=b_") == ["b_2"]
    assert await ids(api, "external_id_prefix=a&metadata.lang=en") == ["a1", "a2"]
    assert await ids(api, "metadata.missing=x") == []


async def test_list_filters_keep_cursors_working(api: httpx.AsyncClient) -> None:
    await put_docs(api, *((f"d{i}", {"k": i % 2}) for i in range(7)))
    seen: list[str] = []
    url = f"{DOCS}?metadata.k=0&limit=2"
    while True:
        body = (await api.get(url)).json()
        assert body["total"] == 4
        seen += [d["external_id"] for d in body["items"]]
        if body["next_cursor"] is None:
            break
        url = f"{DOCS}?metadata.k=0&limit=2&cursor={body['next_cursor']}"
    assert seen == ["d0", "d2", "d4", "d6"]
    # A cursor says where the last page ended: with another filter, the list goes on after it.
    first = (await api.get(f"{DOCS}?metadata.k=0&limit=1")).json()
    other = (await api.get(f"{DOCS}?metadata.k=1&cursor={first['next_cursor']}")).json()
    assert [d["external_id"] for d in other["items"]] == ["d1", "d3", "d5"]


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("external_id_prefix=bad%20prefix", "external_id_prefix"),
        ("metadata.=1", "metadata"),
        ("metadata.a=1&metadata.a=2", "metadata"),
        ("metadata.n=99999999999999999999", "metadata"),
    ],
)
async def test_list_filter_errors(api: httpx.AsyncClient, query: str, where: str) -> None:
    r = await api.get(f"{DOCS}?{query}")
    body = assert_problem(
        r,
        422,
        "knowledge.invalid_external_id" if "prefix" in query else "request.validation_failed",
    )
    assert any(where in (e.get("parameter") or e["pointer"]) for e in body["errors"]), body


async def test_graphql_knowledge_docs_filters(api: httpx.AsyncClient) -> None:
    await put_docs(api, ("a", {"flag": True}), ("b", {"flag": 1}), ("kb-c", {"flag": True}))
    query = """query($m: JSON, $p: String) { knowledgeDocs(metadata: $m, externalIdPrefix: $p)
      { total items { externalId via } } }"""
    data = await gql_data(api, query, {"m": {"flag": True}})
    assert [i["externalId"] for i in data["knowledgeDocs"]["items"]] == ["a", "kb-c"]
    assert data["knowledgeDocs"]["items"][0]["via"] is None
    data = await gql_data(api, query, {"m": {"flag": True}, "p": "kb-"})
    assert data["knowledgeDocs"]["total"] == 1
    r = await api.post("/graphql", json={"query": query, "variables": {"p": "bad prefix"}})
    error = r.json()["errors"][0]
    assert error["extensions"]["code"] == "knowledge.invalid_external_id"
    r = await api.post("/graphql", json={"query": query, "variables": {"m": "flag"}})
    assert r.json()["errors"][0]["extensions"]["code"] == "request.validation_failed"


async def test_a_key_limited_to_a_persona_searches_its_knowledge_by_filter(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    await put_docs(api, ("att", {}), ("rule", {"team": "a"}), ("outside", {"team": "b"}))
    p = await create(api, knowledge_filter={"metadata": {"team": "a"}})
    await api.put(f"{PERSONAS}/{p['id']}/knowledge", json={"external_ids": ["att"]})
    key = await accounts.create_key(
        runtime=app.state.runtime,
        email="owner@example.com",
        scopes=["search"],
        persona_ids=[p["id"]],
    )
    async with client_for(app, **{"X-Api-Key": key.key}) as limited:
        r = await limited.post(SEARCH, json={"query": "shipping", "k": 50})
        assert r.status_code == 200, r.text
        assert sorted(h["external_id"] for h in r.json()["results"]) == ["att", "rule"]
        r = await limited.post(
            SEARCH, json={"query": "shipping", "k": 50, "external_ids": ["rule", "outside"]}
        )
        assert [h["external_id"] for h in r.json()["results"]] == ["rule"]


# --- the persona's knowledge listing -------------------------------------------------------


async def test_rest_lists_a_personas_knowledge_as_graphql_does(api: httpx.AsyncClient) -> None:
    await put_docs(api, *((f"d{i}", {"s": 1}) for i in range(5)), ("z", {}), ("out", {"s": 2}))
    p = await create(api, knowledge_filter={"metadata": {"s": 1}})
    r = await api.put(f"{PERSONAS}/{p['id']}/knowledge", json={"external_ids": ["z", "d1"]})
    assert r.status_code == 200, r.text
    seen: list[tuple[str, str]] = []
    url = f"{PERSONAS}/{p['id']}/knowledge?limit=3"
    while True:
        r = await api.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["ratelimit-policy"].startswith('"reads"')
        body = r.json()
        assert body["total"] == 6 and len(body["items"]) <= 3
        assert all("content" not in d for d in body["items"])
        assert all(d["char_count"] > 0 and d["content_sha256"] for d in body["items"])
        seen += [(d["external_id"], d["via"]) for d in body["items"]]
        if body["next_cursor"] is None:
            break
        url = f"{PERSONAS}/{p['id']}/knowledge?limit=3&cursor={body['next_cursor']}"
    # Attached wins when the filter matches too; "out" matches neither.
    assert seen == [
        ("d0", "filter"),
        ("d1", "attached"),
        ("d2", "filter"),
        ("d3", "filter"),
        ("d4", "filter"),
        ("z", "attached"),
    ]
    data = await gql_data(api, KNOWLEDGE, {"id": p["id"], "first": 50})
    graphql = [(i["externalId"], i["via"].lower()) for i in data["persona"]["knowledge"]["items"]]
    assert graphql == seen
    # A document synced later joins at once; a persona with nothing has an empty page.
    await put_docs(api, ("d9", {"s": 1}))
    body = (await api.get(f"{PERSONAS}/{p['id']}/knowledge")).json()
    assert body["total"] == 7 and body["items"][-2]["external_id"] == "d9"
    empty = await create(api)
    body = (await api.get(f"{PERSONAS}/{empty['id']}/knowledge")).json()
    assert body == {"items": [], "next_cursor": None, "total": 0}


async def test_persona_knowledge_listing_refusals(app: Starlette, api: httpx.AsyncClient) -> None:
    await put_docs(api, ("a", {}))
    p = await create(api)
    await api.put(f"{PERSONAS}/{p['id']}/knowledge", json={"external_ids": ["a"]})
    other = await create(api)
    knowledge = f"{PERSONAS}/{p['id']}/knowledge"
    assert_problem(await api.get(f"{PERSONAS}/per_01NOPE/knowledge"), 404, "persona.not_found")
    assert_problem(await api.get(f"{knowledge}?cursor=%%%"), 400, "request.invalid_cursor")
    body = assert_problem(await api.get(f"{knowledge}?limit=0"), 422, "request.validation_failed")
    assert body["errors"][0]["parameter"] == "limit"
    # Another user's persona is not found, exactly as if it did not exist.
    stranger = await new_key(app, email="stranger@example.com")
    async with client_for(app, **{"X-Api-Key": stranger}) as them:
        assert_problem(await them.get(knowledge), 404, "persona.not_found")
    runtime = app.state.runtime
    cases = [
        (dict(scopes=["personas:read"]), 403, "auth.insufficient_scope"),  # no docs:read
        (dict(scopes=["docs:read"]), 403, "auth.insufficient_scope"),  # no personas:read
        (dict(persona_ids=[other["id"]]), 403, "auth.insufficient_scope"),  # another persona
        (dict(scopes=["personas:read", "docs:read"], persona_ids=[p["id"]]), 200, None),
    ]
    for restrictions, status, code in cases:
        key = await accounts.create_key(runtime=runtime, email="owner@example.com", **restrictions)
        async with client_for(app, **{"X-Api-Key": key.key}) as limited:
            r = await limited.get(knowledge)
            if code is None:
                assert r.status_code == status, r.text
                assert [d["external_id"] for d in r.json()["items"]] == ["a"]
            else:
                assert_problem(r, status, code)
