"""KnowledgeDocs through HTTP, against the real model and a real SQLite file (API.md section 5)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.embedding.embedder import Model
from app.main import create_app
from app.settings import Settings
from tests.conftest import AppFactory, assert_problem, client_for, new_key
from tests.support.index_rows import index_counts

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"


def by_id(external_id: str) -> str:
    return f"{DOCS}/by-external-id/{external_id}"


def item(external_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"external_id": external_id, "content": content, **extra}


async def test_batch_upsert_created_then_no_op_then_updated(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    stats = app.state.runtime.embedder.stats
    body = {
        "items": [
            item("b", "The lamp has a USB-C port."),
            item("a", "Orders ship in 2 days.", title="Shipping"),
        ]
    }
    r = await api.put(DOCS, json=body)
    assert r.status_code == 200
    assert r.json() == {
        "results": [
            {"external_id": "b", "status": "created"},
            {"external_id": "a", "status": "created"},
        ],
        "summary": {"created": 2, "updated": 0, "no_op": 0},
    }
    assert stats.texts == 2

    # Replaying the same batch writes nothing and embeds nothing.
    before = (await api.get(by_id("a"))).json()
    r = await api.put(DOCS, json=body)
    assert r.json()["summary"] == {"created": 0, "updated": 0, "no_op": 2}
    assert stats.texts == 2
    assert (await api.get(by_id("a"))).json()["updated_at"] == before["updated_at"]

    # Title and metadata changes update the document without re-embedding.
    body["items"][1] = item(
        "a", "Orders ship in 2 days.", title="Delivery", metadata={"lang": "en"}
    )
    r = await api.put(DOCS, json=body)
    assert r.json()["results"] == [
        {"external_id": "b", "status": "no_op"},
        {"external_id": "a", "status": "updated"},
    ]
    assert stats.texts == 2
    doc = (await api.get(by_id("a"))).json()
    assert doc["title"] == "Delivery" and doc["metadata"] == {"lang": "en"}
    assert doc["updated_at"] > before["updated_at"]
    assert doc["created_at"] == before["created_at"]

    # A content change re-embeds that document only.
    body["items"][0] = item("b", "The lamp has two USB-C ports.")
    r = await api.put(DOCS, json=body)
    assert r.json()["summary"] == {"created": 0, "updated": 1, "no_op": 1}
    assert stats.texts == 3
    assert await index_counts(app) == {
        "knowledge_docs": 2,
        "chunks": 2,
        "vectors": 2,
        "keywords": 2,
    }


async def test_upsert_replaces_whole_document(api: httpx.AsyncClient) -> None:
    await api.put(by_id("x"), json={"content": "one", "title": "T", "metadata": {"k": 1}})
    r = await api.put(by_id("x"), json={"content": "one"})
    assert r.status_code == 200 and r.json()["status"] == "updated"
    doc = (await api.get(by_id("x"))).json()
    assert doc["title"] is None and doc["metadata"] == {}


async def test_document_object_fields(api: httpx.AsyncClient) -> None:
    content = "Résumé: naïve café. " * 3
    r = await api.put(by_id("product-SKU-9821"), json={"content": content, "title": "Reset guide"})
    assert r.status_code == 201
    assert r.headers["location"] == "/api/knowledge/docs/by-external-id/product-SKU-9821"
    created = r.json()
    assert created["status"] == "created"
    assert "content" not in created["document"]
    doc = (await api.get(by_id("product-SKU-9821"))).json()
    import hashlib

    assert doc["content"] == content
    assert doc["content_sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert doc["char_count"] == len(content)
    assert doc["chunk_count"] == 1
    assert doc["created_at"].endswith("Z") and len(doc["created_at"]) == 24
    assert set(doc) == {
        "external_id",
        "title",
        "content",
        "metadata",
        "content_sha256",
        "char_count",
        "chunk_count",
        "created_at",
        "updated_at",
    }


async def test_long_content_is_chunked_and_indexed(app: Starlette, api: httpx.AsyncClient) -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7}." for i in range(120)]
    r = await api.put(by_id("long"), json={"content": " ".join(sentences)})
    doc = (await api.get(by_id("long"))).json()
    assert r.status_code == 201 and doc["chunk_count"] > 3
    counts = await index_counts(app)
    assert counts["chunks"] == counts["vectors"] == counts["keywords"] == doc["chunk_count"]


async def test_single_upsert_statuses(api: httpx.AsyncClient) -> None:
    r1 = await api.put(by_id("s"), json={"content": "alpha"})
    r2 = await api.put(by_id("s"), json={"content": "alpha"})
    r3 = await api.put(by_id("s"), json={"content": "beta", "external_id": "s"})
    assert (r1.status_code, r1.json()["status"]) == (201, "created")
    assert (r2.status_code, r2.json()["status"]) == (200, "no_op")
    assert (r3.status_code, r3.json()["status"]) == (200, "updated")
    assert "location" not in r2.headers


async def test_body_external_id_must_match_path(api: httpx.AsyncClient) -> None:
    r = await api.put(by_id("s"), json={"content": "x", "external_id": "other"})
    body = assert_problem(r, 422, "request.validation_failed")
    assert body["errors"][0]["pointer"] == "/external_id"
    assert (await api.get(by_id("s"))).status_code == 404


async def test_get_missing_is_404(api: httpx.AsyncClient) -> None:
    body = assert_problem(await api.get(by_id("nope")), 404, "knowledge.not_found")
    assert body["instance"] == "/api/knowledge/docs/by-external-id/nope"


async def test_delete_is_idempotent_and_clears_indexes(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    await api.put(DOCS, json={"items": [item("d1", "to delete"), item("d2", "to keep")]})
    assert (await api.delete(by_id("d1"))).status_code == 204
    assert (await api.delete(by_id("d1"))).status_code == 204
    assert (await api.delete(by_id("never-was"))).status_code == 204
    assert (await api.get(by_id("d1"))).status_code == 404
    assert await index_counts(app) == {
        "knowledge_docs": 1,
        "chunks": 1,
        "vectors": 1,
        "keywords": 1,
    }


async def test_list_pagination_order_and_total(api: httpx.AsyncClient) -> None:
    ids = ["b", "B", "a", "c:1", "a.2", "Z"]
    await api.put(DOCS, json={"items": [item(i, f"doc {i}") for i in ids]})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(DOCS, params=params)).json()
        assert page["total"] == 6
        assert all("content" not in d for d in page["items"])
        seen += [d["external_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)  # byte order: uppercase first
    full = (await api.get(DOCS, params={"include_content": "true", "limit": 1})).json()
    assert full["items"][0]["content"] == "doc B" and full["next_cursor"]


async def test_list_updated_since(api: httpx.AsyncClient) -> None:
    await api.put(DOCS, json={"items": [item("old", "old")]})
    await asyncio.sleep(0.01)
    r = await api.put(by_id("new"), json={"content": "new"})
    since = r.json()["document"]["updated_at"]
    page = (await api.get(DOCS, params={"updated_since": since})).json()
    assert [d["external_id"] for d in page["items"]] == ["new"] and page["total"] == 1


async def test_list_bad_parameters(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get(DOCS, params={"cursor": "!!!"}), 400, "request.invalid_cursor")
    assert_problem(
        await api.get(DOCS, params={"cursor": "eyJ4IjoxfQ"}), 400, "request.invalid_cursor"
    )
    for bad in ({"limit": 0}, {"limit": 201}, {"limit": "ten"}, {"updated_since": "yesterday"}):
        body = assert_problem(await api.get(DOCS, params=bad), 422, "request.validation_failed")
        assert body["errors"][0]["parameter"] == next(iter(bad))


async def test_batch_is_all_or_nothing(app: Starlette, api: httpx.AsyncClient) -> None:
    good = [item(f"g{i}", f"good document {i}") for i in range(3)]
    cases = [
        (
            {"items": [*good, item("bad id", "x")]},
            "knowledge.invalid_external_id",
            "/items/3/external_id",
        ),
        ({"items": [*good, item("g9", "   ")]}, "request.validation_failed", "/items/3/content"),
        (
            {"items": [*good, {"external_id": "g8"}]},
            "request.validation_failed",
            "/items/3/content",
        ),
        (
            {"items": [*good, item("g0", "again")]},
            "knowledge.duplicate_external_id",
            "/items/3/external_id",
        ),
        (
            {"items": [*good, item("g7", "x", title="t" * 513)]},
            "request.validation_failed",
            "/items/3/title",
        ),
        (
            {"items": [*good, item("g6", "x", metadata={"k": "v" * 9000})]},
            "request.validation_failed",
            "/items/3/metadata",
        ),
        (
            {"items": [*good, item("g5", "x", metadata=[1])]},
            "request.validation_failed",
            "/items/3/metadata",
        ),
        # U+0000: PostgreSQL's text cannot hold it, so both engines refuse it (was a 500 there).
        ({"items": [*good, item("g4", "a\x00b")]}, "request.validation_failed", "/items/3/content"),
        (
            {"items": [*good, item("g3", "x", title="t\x00")]},
            "request.validation_failed",
            "/items/3/title",
        ),
        ({"items": []}, "request.validation_failed", "/items"),
        ({"docs": good}, "request.validation_failed", "/items"),
    ]
    for body, code, pointer in cases:
        problem = assert_problem(await api.put(DOCS, json=body), 422, code)
        assert pointer in [e["pointer"] for e in problem["errors"]], problem
    assert (await api.get(DOCS)).json()["total"] == 0
    assert (await index_counts(app))["vectors"] == 0


async def test_batch_and_content_limits_follow_the_plan(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.put(DOCS, json={"items": [item(f"i{i}", "x") for i in range(101)]})
        assert_problem(r, 422, "knowledge.batch_too_large")
        r = await api.put(DOCS, json={"items": [item("big", "x" * 100_001)]})
        body = assert_problem(r, 422, "knowledge.content_too_large")
        assert body["errors"][0]["pointer"] == "/items/0/content"
        r = await api.put(by_id("big"), json={"content": "x" * 100_001})
        assert_problem(r, 422, "knowledge.content_too_large")
        assert (await api.get(DOCS)).json()["total"] == 0


async def test_invalid_external_id_in_path(api: httpx.AsyncClient) -> None:
    long_id = "a" * 129
    for path in (by_id("bad%20id"), by_id(long_id), by_id("%C3%A9")):
        for method in ("GET", "PUT", "DELETE"):
            r = await api.request(method, path, json={"content": "x"} if method == "PUT" else None)
            assert_problem(r, 422, "knowledge.invalid_external_id")
    assert (await api.get(DOCS)).json()["total"] == 0


async def test_concurrent_upserts_of_one_external_id(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    bodies = [{"content": f"version {i} of the same document"} for i in range(6)]
    responses = await asyncio.gather(*(api.put(by_id("race"), json=b) for b in bodies))
    statuses = sorted(r.json()["status"] for r in responses)
    assert [r.status_code for r in responses].count(201) == 1
    assert statuses.count("created") == 1 and all(r.status_code in (200, 201) for r in responses)
    doc = (await api.get(by_id("race"))).json()
    assert doc["content"] in {b["content"] for b in bodies}
    assert await index_counts(app) == {
        "knowledge_docs": 1,
        "chunks": 1,
        "vectors": 1,
        "keywords": 1,
    }


async def test_data_survives_restart(model: Model, tmp_path: Path) -> None:
    settings = Settings.for_tests(tmp_path / "keep")
    app1 = create_app(settings, model=model)
    async with app1.router.lifespan_context(app1):
        key = await new_key(app1)
        async with client_for(app1, **{"X-Api-Key": key}) as api:
            await api.put(by_id("durable"), json={"content": "still here", "title": "T"})
    app2 = create_app(settings, model=model)
    async with app2.router.lifespan_context(app2):
        async with client_for(app2, **{"X-Api-Key": key}) as api:
            doc = (await api.get(by_id("durable"))).json()
        assert doc["content"] == "still here" and doc["title"] == "T"
        assert (await index_counts(app2))["vectors"] == 1


# --- metadata equality (app/models/json_equality.py) -----------------------------------------

#: (stored, sent) metadata that differ as JSON though Python's `==` calls them equal: the second
#: upsert is an update, and the document then holds what was sent.
METADATA_CHANGES = [
    pytest.param({"flag": 1}, {"flag": True}, id="1-true"),
    pytest.param({"flag": True}, {"flag": 1}, id="true-1"),
    pytest.param({"flag": 0}, {"flag": False}, id="0-false"),
    pytest.param({"flag": False}, {"flag": 0.0}, id="false-0.0"),
    pytest.param({"flag": 1.0}, {"flag": True}, id="1.0-true"),
    pytest.param({"a": {"b": [1, 0]}}, {"a": {"b": [True, False]}}, id="nested"),
    pytest.param({"a": [1, 2]}, {"a": [2, 1]}, id="array-order"),
    pytest.param({"a": None}, {"a": False}, id="null-false"),
    pytest.param({"a": 1}, {"a": "1"}, id="1-string"),
    pytest.param({"a": 2**60}, {"a": 2**60 + 1}, id="big-int"),
    pytest.param({"a": "\u00e9"}, {"a": "e\u0301"}, id="unicode-not-normalized"),
]
#: Equal as JSON, however written: the second upsert is a no_op and the stored form stays.
METADATA_SAME = [
    pytest.param({"n": 1}, {"n": 1.0}, id="1-1.0"),
    pytest.param({"n": 0}, {"n": -0.0}, id="0--0.0"),
    pytest.param({"n": 10**30}, {"n": 1e30}, id="1e30"),
    pytest.param({"a": 1, "b": [{"c": 2}]}, {"b": [{"c": 2.0}], "a": 1}, id="key-order"),
]


@pytest.mark.parametrize(("stored", "sent"), METADATA_CHANGES)
async def test_single_upsert_tells_json_types_apart(
    api: httpx.AsyncClient, stored: dict[str, Any], sent: dict[str, Any]
) -> None:
    r = await api.put(by_id("m"), json={"content": "Same text.", "metadata": stored})
    assert r.status_code == 201
    r = await api.put(by_id("m"), json={"content": "Same text.", "metadata": sent})
    assert (r.status_code, r.json()["status"]) == (200, "updated")
    metadata = (await api.get(by_id("m"))).json()["metadata"]
    assert json.dumps(metadata) == json.dumps(sent)


@pytest.mark.parametrize(("stored", "sent"), METADATA_SAME)
async def test_single_upsert_of_equal_json_is_no_op(
    api: httpx.AsyncClient, stored: dict[str, Any], sent: dict[str, Any]
) -> None:
    r = await api.put(by_id("m"), json={"content": "Same text.", "metadata": stored})
    before = (await api.get(by_id("m"))).json()
    r = await api.put(by_id("m"), json={"content": "Same text.", "metadata": sent})
    assert (r.status_code, r.json()["status"]) == (200, "no_op")
    assert (await api.get(by_id("m"))).json() == before


async def test_batch_upsert_tells_json_types_apart(api: httpx.AsyncClient) -> None:
    pairs = [p.values for p in METADATA_CHANGES] + [p.values for p in METADATA_SAME]
    first = [item(f"m{i}", "Same text.", metadata=old) for i, (old, _) in enumerate(pairs)]
    second = [item(f"m{i}", "Same text.", metadata=new) for i, (_, new) in enumerate(pairs)]
    for start in range(0, len(pairs), 10):  # within the plan's batch_items
        r = await api.put(DOCS, json={"items": first[start : start + 10]})
        assert r.status_code == 200, r.text
    statuses = []
    for start in range(0, len(pairs), 10):
        r = await api.put(DOCS, json={"items": second[start : start + 10]})
        statuses += [x["status"] for x in r.json()["results"]]
    assert statuses == ["updated"] * len(METADATA_CHANGES) + ["no_op"] * len(METADATA_SAME)
    for i, (old, new) in enumerate(pairs):
        metadata = (await api.get(by_id(f"m{i}"))).json()["metadata"]
        assert json.dumps(metadata) == json.dumps(new if i < len(METADATA_CHANGES) else old)


async def test_title_and_content_compare_exactly(api: httpx.AsyncClient) -> None:
    """Title and content are strings compared code point by code point: a title differing only
    in Unicode normalization, case or trailing space is a change, as is such content."""
    await api.put(by_id("t"), json={"content": "Caf\u00e9 menu.", "title": "Caf\u00e9"})
    for body in (
        {"content": "Caf\u00e9 menu.", "title": "Cafe\u0301"},
        {"content": "Caf\u00e9 menu.", "title": "cafe\u0301"},
        {"content": "Caf\u00e9 menu.", "title": "cafe\u0301 "},
        {"content": "Cafe\u0301 menu.", "title": "cafe\u0301 "},
        {"content": "Cafe\u0301 menu. ", "title": "cafe\u0301 "},
    ):
        r = await api.put(by_id("t"), json=body)
        assert r.json()["status"] == "updated", body
        doc = (await api.get(by_id("t"))).json()
        assert (doc["content"], doc["title"]) == (body["content"], body["title"])
    assert (await api.put(by_id("t"), json=body)).json()["status"] == "no_op"
