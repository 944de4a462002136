"""Hostile input through REST: each bound of the intake (app/http/intake.py, the request models) answers
a 4xx problem with a stable code and changes nothing, and what it lets through stays readable
everywhere (get, list, search, GraphQL)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from starlette.applications import Starlette

from app.http import intake
from app.models import METADATA_MAX_DEPTH, PERSONA_KNOWLEDGE_MAX, strict_json
from app.models.base import json_depth
from app.models.strict_json import MAX_ARRAYS, MAX_DEPTH, MAX_VALUES
from tests.conftest import AppFactory, assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
JSON = {"content-type": "application/json"}


def by_id(external_id: str) -> str:
    return f"{DOCS}/by-external-id/{external_id}"


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


async def fingerprint(app: Starlette) -> list[tuple[Any, ...]]:
    """Every row a write could touch: equal fingerprints, nothing changed."""
    rows: list[tuple[Any, ...]] = []
    async with app.state.runtime.db.read() as session:
        for table in ("knowledge_docs", "chunks", "personas", "persona_knowledge"):
            result = await session.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))
            # PostgreSQL hands vectors back as numpy arrays, which do not compare as one value.
            rows.extend(
                (table, *(v.tobytes() if isinstance(v, np.ndarray) else v for v in row))
                for row in result.all()
            )
    return rows


async def test_deep_nesting_is_malformed_json_not_a_crash(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    before = await fingerprint(app)
    for depth in (MAX_DEPTH + 1, 100_000):
        body = b'{"items": ' + b"[" * depth + b"]" * depth + b"}"
        r = await api.put(DOCS, content=body, headers=JSON)
        problem = assert_problem(r, 400, "request.malformed_json")
        assert f"limit is {MAX_DEPTH}" in problem["detail"]
    # Brackets inside strings are text, however many there are.
    content = "[" * 100_000 + '"\\'
    r = await api.put(DOCS, json={"items": [{"external_id": "a", "content": content}]})
    assert r.status_code == 200, r.text
    assert (await api.get(by_id("a"))).json()["content"] == content
    assert len(await fingerprint(app)) > len(before)


async def test_a_lone_surrogate_is_malformed_json(app: Starlette, api: httpx.AsyncClient) -> None:
    for body in (
        rb'{"items": [{"external_id": "a", "content": "x\ud800"}]}',
        rb'{"items": [{"external_id": "a", "content": "\udc00 pair reversed \ud800"}]}',
        rb'{"items": [{"external_id": "a", "content": "x", "metadata": {"\udfff": 1}}]}',
    ):
        r = await api.put(DOCS, content=body, headers=JSON)
        assert "surrogate" in assert_problem(r, 400, "request.malformed_json")["detail"]
    assert await fingerprint(app) == []
    # A pair is one character, and an escaped backslash before `ud800` is plain text.
    body = rb'{"items": [{"external_id": "a", "content": "\ud83d\ude00 \\ud800"}]}'
    assert (await api.put(DOCS, content=body, headers=JSON)).status_code == 200
    assert (await api.get(by_id("a"))).json()["content"] == "\U0001f600 \\ud800"


@pytest.mark.parametrize("number", [b"1e309", b"-1e309", b"1" + b"0" * 400 + b".0"])
async def test_numbers_beyond_a_float_are_malformed_json(
    app: Starlette, api: httpx.AsyncClient, number: bytes
) -> None:
    body = b'{"items": [{"external_id": "a", "content": "x", "metadata": {"n": ' + number + b"}}]}"
    assert_problem(await api.put(DOCS, content=body, headers=JSON), 400, "request.malformed_json")
    r = await api.post(
        "/api/personas", content=b'{"name": "A", "metadata": {"n": ' + number + b"}}", headers=JSON
    )
    assert_problem(r, 400, "request.malformed_json")
    assert await fingerprint(app) == []


async def test_bodies_holding_too_many_values_are_too_large(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    arrays = b'{"items": [' + b",".join([b"[]"] * (MAX_ARRAYS + 1)) + b"]}"
    problem = assert_problem(
        await api.put(DOCS, content=arrays, headers=JSON), 413, "request.too_large"
    )
    assert "arrays" in problem["detail"]
    values = b'{"items": [' + b",".join([b"0"] * MAX_VALUES) + b"]}"
    problem = assert_problem(
        await api.put(DOCS, content=values, headers=JSON), 413, "request.too_large"
    )
    assert "values" in problem["detail"]
    assert await fingerprint(app) == []


async def test_metadata_depth_is_bounded_and_what_passes_reads_back_everywhere(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    deepest = nested(METADATA_MAX_DEPTH - 1)  # inside the metadata object itself
    r = await api.put(by_id("a"), json={"content": "deep lamp", "metadata": {"d": deepest}})
    assert r.status_code == 201, r.text
    too_deep = {"d": nested(METADATA_MAX_DEPTH)}
    r = await api.put(by_id("b"), json={"content": "x", "metadata": too_deep})
    assert assert_problem(r, 422, "request.validation_failed")["errors"][0]["pointer"] == (
        "/metadata"
    )
    r = await api.put(
        DOCS, json={"items": [{"external_id": "b", "content": "x", "metadata": too_deep}]}
    )
    assert assert_problem(r, 422, "request.validation_failed")["errors"][0]["pointer"] == (
        "/items/0/metadata"
    )
    persona = (await api.post("/api/personas", json={"name": "P"})).json()
    r = await api.patch(f"/api/personas/{persona['id']}", json={"metadata": too_deep})
    assert_problem(r, 422, "request.validation_failed")
    # 300 deep (what used to be stored and then broke every read) is past the body's own bound.
    r = await api.put(by_id("b"), json={"content": "x", "metadata": {"d": nested(300)}})
    assert_problem(r, 400, "request.malformed_json")
    r = await api.patch(f"/api/personas/{persona['id']}", json={"metadata": nested(300)})
    assert_problem(r, 400, "request.malformed_json")

    # What was stored at the bound reads back through every path that returns metadata.
    assert (await api.get(by_id("a"))).json()["metadata"] == {"d": deepest}
    assert (await api.get(DOCS)).json()["items"][0]["metadata"] == {"d": deepest}
    r = await api.post(f"{DOCS[:-5]}/search", json={"query": "deep lamp", "mode": "keyword"})
    assert r.status_code == 200 and r.json()["results"][0]["metadata"] == {"d": deepest}
    r = await api.post("/graphql", json={"query": '{ knowledgeDoc(externalId: "a") { metadata } }'})
    assert r.json()["data"]["knowledgeDoc"]["metadata"] == {"d": deepest}
    assert (await api.get(f"/api/personas/{persona['id']}")).json()["metadata"] == {}
    assert (await api.get(by_id("b"))).status_code == 404


async def test_a_batch_over_the_plan_is_refused_from_its_count(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")  # batch_items 100
    async with client_for(app, **{"X-Api-Key": key}) as api:
        # Every item is invalid: validated one by one they would answer `validation_failed`
        # with 101 errors. Refused from the count, they are never looked at.
        r = await api.put(DOCS, json={"items": [{"external_id": "bad id"}] * 101})
        problem = assert_problem(r, 422, "knowledge.batch_too_large")
        assert problem["errors"] == [
            {
                "pointer": "/items",
                "code": "knowledge.batch_too_large",
                "message": "at most 100 items on this plan, not 101",
            }
        ]
        r = await api.put(
            DOCS, json={"items": [{"external_id": f"d{i}", "content": "x"} for i in range(240_000)]}
        )
        assert_problem(r, 422, "knowledge.batch_too_large")
        assert (await api.get(DOCS)).json()["total"] == 0


async def test_persona_knowledge_lists_are_bounded(app: Starlette, api: httpx.AsyncClient) -> None:
    persona = (await api.post("/api/personas", json={"name": "P"})).json()
    before = await fingerprint(app)
    ids = [f"doc-{i}" for i in range(PERSONA_KNOWLEDGE_MAX + 1)]
    r = await api.put(f"/api/personas/{persona['id']}/knowledge", json={"external_ids": ids})
    problem = assert_problem(r, 422, "request.validation_failed")
    assert [e["pointer"] for e in problem["errors"]] == ["/external_ids"]
    assert len(r.content) < 2000
    assert await fingerprint(app) == before


async def test_a_problem_lists_at_most_100_field_errors(api: httpx.AsyncClient) -> None:
    r = await api.put(
        DOCS, json={"items": [{"external_id": f"bad id {i}", "content": "x"} for i in range(150)]}
    )
    problem = assert_problem(r, 422, "knowledge.invalid_external_id")
    assert len(problem["errors"]) == 100
    assert problem["errors_total"] == 150
    assert problem["errors"][99]["pointer"] == "/items/99/external_id"


@pytest.mark.parametrize(
    "content",
    ["\u200b", "\u200b\u200c\u200d\u2060\ufeff", "\x00\x01\x1f", " \t\u3000\u00ad"],
)
async def test_invisible_content_is_blank(
    app: Starlette, api: httpx.AsyncClient, content: str
) -> None:
    r = await api.put(by_id("a"), json={"content": content})
    assert_problem(r, 422, "request.validation_failed")
    r = await api.post(f"{DOCS[:-5]}/search", json={"query": content})
    assert_problem(r, 422, "request.validation_failed")
    assert await fingerprint(app) == []
    r = await api.put(by_id("a"), json={"content": "\u200bword\u200b"})
    assert r.status_code == 201


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        cursor_of(rb'{"after": "\ud800"}'),
        cursor_of(b'{"after": "\xed\xa0\x80"}'),  # a surrogate written as (CESU-8) bytes
        cursor_of(b"[" * 5000 + b"]" * 5000),
        cursor_of(b'{"after": ' + b"[" * 100 + b"]" * 100 + b"}"),
        cursor_of(b'{"after": 1e999}'),
        cursor_of(json.dumps({"after": "a" * 1000}).encode()),
        "\u00e9\u00e9\u00e9\u00e9",
        "%%%%",
    ],
)
async def test_cursors_that_do_not_decode(api: httpx.AsyncClient, cursor: str) -> None:
    for path in (DOCS, "/api/personas"):
        r = await api.get(path, params={"cursor": cursor})
        assert_problem(r, 400, "request.invalid_cursor")
    r = await api.post(
        "/graphql",
        json={
            "query": "query($c: String) { personas(after: $c) { total } }",
            "variables": {"c": cursor},
        },
    )
    assert r.json()["errors"][0]["extensions"]["code"] == "request.invalid_cursor"


async def test_updated_since_at_the_ends_of_time(api: httpx.AsyncClient) -> None:
    await api.put(DOCS, json={"items": [{"external_id": "a", "content": "x"}]})
    everything = ["0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "0999-01-01T00:00:00Z"]
    nothing = ["9999-12-31T23:00:00-02:00", "9999-12-31T23:59:59.999Z"]
    for since, total in [*((s, 1) for s in everything), *((s, 0) for s in nothing)]:
        r = await api.get(DOCS, params={"updated_since": since})
        assert r.status_code == 200, (since, r.text)
        assert r.json()["total"] == total, since
        query = "query($s: DateTime) { knowledgeDocs(updatedSince: $s) { total } }"
        r = await api.post("/graphql", json={"query": query, "variables": {"s": since}})
        assert r.json() == {"data": {"knowledgeDocs": {"total": total}}}, since


async def test_an_encoded_slash_in_an_external_id_is_invalid_not_missing(
    api: httpx.AsyncClient,
) -> None:
    for method in ("GET", "DELETE"):
        r = await api.request(method, by_id("a%2Fb"))
        assert_problem(r, 422, "knowledge.invalid_external_id")
    r = await api.put(by_id("a%2Fb"), json={"content": "x"})
    assert_problem(r, 422, "knowledge.invalid_external_id")
    assert_problem(await api.get(by_id("a/b")), 422, "knowledge.invalid_external_id")
    assert (await api.get(DOCS)).json()["total"] == 0


# --- the shape of a body, read from its bytes -----------------------------------------------

nasty_text = st.text(alphabet='ab[]{},:"\\ \u00e9\u200b\U0001f600', max_size=12)
json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | nasty_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, database=None, deadline=None)
@given(value=json_trees, ascii_only=st.booleans(), chunk=st.sampled_from([1, 7, 1 << 20]))
def test_the_shape_is_read_exactly_from_the_bytes(value: Any, ascii_only: bool, chunk: int) -> None:
    """The vectorised scan (which skips brackets inside strings, escaped quotes included) finds
    exactly the nesting and the arrays that parsing finds, however its work is split."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    saved, strict_json._CHUNK = strict_json._CHUNK, chunk
    try:
        kinds = strict_json._structure(raw).tobytes()
    finally:
        strict_json._CHUNK = saved
    depth = running = 0
    for mark in kinds:
        running += {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}.get(mark, 0)
        depth = max(depth, running)
    assert depth == json_depth(value)
    assert kinds.count(b"[") == _arrays(value)
    assert kinds.count(b"{") == _objects(value)


@settings(max_examples=300, database=None, deadline=None)
@given(
    value=json_trees,
    max_values=st.integers(1, 40),
    max_arrays=st.integers(0, 12),
    max_depth=st.integers(0, 8),
)
def test_the_quick_count_passes_exactly_the_bodies_the_scan_passes(
    value: Any, max_values: int, max_arrays: int, max_depth: int
) -> None:
    """Small bodies skip the scan when their raw marks (strings' bytes included) are within
    every bound; whatever the bounds, a body passes exactly when its real marks are within
    them."""
    raw = json.dumps(value).encode()
    kinds = strict_json._structure(raw).tobytes()
    arrays, objects = kinds.count(b"["), kinds.count(b"{")
    within = (
        json_depth(value) <= max_depth
        and arrays <= max_arrays
        and kinds.count(b",") + arrays + objects + 1 <= max_values
    )
    saved, strict_json.MAX_DEPTH = strict_json.MAX_DEPTH, max_depth
    try:
        strict_json._check_shape(raw, max_values=max_values, max_arrays=max_arrays)
    except (intake.MalformedJson, intake.TooLarge):
        passed = False
    else:
        passed = True
    finally:
        strict_json.MAX_DEPTH = saved
    assert passed == within


def _arrays(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_arrays(v) for v in value)
    if isinstance(value, dict):
        return sum(_arrays(v) for v in value.values())
    return 0


def _objects(value: Any) -> int:
    if isinstance(value, list):
        return sum(_objects(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(_objects(v) for v in value.values())
    return 0
