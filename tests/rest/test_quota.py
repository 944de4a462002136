"""Knowledge quotas at their edge, concurrency included (API.md sections 3 and 7).

Documents here share one short content where the test is about counts, so the (real) embedder
embeds it once and the tests stay fast.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config
from tests.support.index_rows import index_counts

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
USAGE = "/api/subscription/usage"


def items(prefix: str, n: int, content: str = "Same short text.") -> dict[str, Any]:
    return {"items": [{"external_id": f"{prefix}{i}", "content": content} for i in range(n)]}


async def usage(api: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(USAGE)).json()["usage"]
    return body


@pytest.fixture
async def free(make_app: AppFactory) -> tuple[Starlette, str]:
    app = await make_app()
    return app, await new_key(app, plan="free")


async def test_parallel_batches_at_the_edge_never_overshoot(free: tuple[Starlette, str]) -> None:
    app, key = free
    async with client_for(app, **{"X-Api-Key": key}) as api:
        assert (await api.put(DOCS, json=items("base", 90))).status_code == 200
        responses = await asyncio.gather(
            *(api.put(DOCS, json=items(f"batch{b}-", 5)) for b in range(5))
        )
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert len(ok) == 2 and len(refused) == 3
        for r in refused:
            problem = assert_problem(r, 403, "knowledge.quota_exceeded")
            assert problem["limit"] == "knowledge_docs" and problem["allowed"] == 100
        page = (await api.get(DOCS, params={"limit": 200})).json()
        assert page["total"] == len(page["items"]) == 100
        winners = {r.json()["results"][0]["external_id"].split("-")[0] for r in ok}
        assert {d["external_id"].split("-")[0] for d in page["items"]} == {*winners} | {
            f"base{i}" for i in range(90)
        }
        assert (await usage(api))["knowledge_docs"] == {"used": 100, "limit": 100}
        assert await index_counts(app) == {
            "knowledge_docs": 100,
            "chunks": 100,
            "vectors": 100,
            "keywords": 100,
        }


async def test_at_full_quota(free: tuple[Starlette, str]) -> None:
    app, key = free
    async with client_for(app, **{"X-Api-Key": key}) as api:
        await api.put(DOCS, json=items("d", 100))
        before = await usage(api)
        # A new document is refused, alone or beside updates; nothing of the batch is written.
        r = await api.put(f"{DOCS}/by-external-id/new", json={"content": "new"})
        assert_problem(r, 403, "knowledge.quota_exceeded")
        mixed = {
            "items": [
                {"external_id": "d0", "content": "Changed text."},
                {"external_id": "new", "content": "new"},
            ]
        }
        assert_problem(await api.put(DOCS, json=mixed), 403, "knowledge.quota_exceeded")
        assert (await api.get(f"{DOCS}/by-external-id/d0")).json()["content"] == "Same short text."
        assert (await api.get(f"{DOCS}/by-external-id/new")).status_code == 404
        after = await usage(api)
        # Refused writes embed for nothing: not counted (requests aside).
        assert after["embedded_chunks"] == before["embedded_chunks"]
        assert after["knowledge_docs"] == {"used": 100, "limit": 100}

        # Updates of existing documents still work at the limit, batch or single.
        r = await api.put(DOCS, json={"items": [{"external_id": "d0", "content": "Changed."}]})
        assert r.json()["summary"]["updated"] == 1
        r = await api.put(f"{DOCS}/by-external-id/d1", json={"content": "Also changed."})
        assert r.status_code == 200 and r.json()["status"] == "updated"
        assert (await api.put(DOCS, json=items("d", 3))).json()["summary"] == {
            "created": 0,
            "updated": 2,
            "no_op": 1,
        }

        # Deleting frees the place at once.
        assert (await api.delete(f"{DOCS}/by-external-id/d99")).status_code == 204
        r = await api.put(f"{DOCS}/by-external-id/new", json={"content": "new"})
        assert r.status_code == 201
        assert (
            (await api.get(DOCS)).json()["total"]
            == 100
            == (await usage(api))["knowledge_docs"]["used"]
        )


async def test_character_quota(make_app: AppFactory) -> None:
    plan = plan_config("tiny", knowledge_docs=10, knowledge_chars=100, doc_chars=80, personas=1)
    app = await make_app(plans={"tiny": plan})
    key = await new_key(app, plan="tiny")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        assert (
            await api.put(f"{DOCS}/by-external-id/a", json={"content": "a" * 60})
        ).status_code == 201
        r = await api.put(f"{DOCS}/by-external-id/b", json={"content": "b" * 41})
        problem = assert_problem(r, 403, "knowledge.quota_exceeded")
        assert problem["limit"] == "knowledge_chars" and problem["used"] == 60
        # Growing an existing document past the limit is refused too; shrinking is fine.
        r = await api.put(
            DOCS,
            json={
                "items": [
                    {"external_id": "a", "content": "a" * 80},
                    {"external_id": "b", "content": "b" * 21},
                ]
            },
        )
        assert_problem(r, 403, "knowledge.quota_exceeded")
        assert (await api.get(f"{DOCS}/by-external-id/b")).status_code == 404
        r = await api.put(
            DOCS,
            json={
                "items": [
                    {"external_id": "a", "content": "a" * 70},
                    {"external_id": "b", "content": "b" * 30},
                ]
            },
        )
        assert r.status_code == 200
        assert (await usage(api))["knowledge_chars"] == {"used": 100, "limit": 100}
        # Exactly at the limit, a title change (no growth) still works.
        r = await api.put(f"{DOCS}/by-external-id/b", json={"content": "b" * 30, "title": "B"})
        assert r.json()["status"] == "updated"
        docs = (await api.get(DOCS)).json()["items"]
        assert sum(d["char_count"] for d in docs) == 100


async def test_a_write_over_the_character_quota_is_refused_before_anything_is_embedded(
    make_app: AppFactory,
) -> None:
    """The model is shared by every tenant: text the character quota refuses never reaches it,
    through the single upsert or the batch, alone or beside a document that would fit."""
    plan = plan_config("chars", knowledge_chars=5000, doc_chars=20_000, personas=1)
    app = await make_app(plans={"chars": plan})
    key = await new_key(app, plan="chars")
    stats = app.state.runtime.embedder.stats
    # Many distinct sentences: several chunks, each a text the model would embed.
    big = " ".join(f"Sentence {i} is about item {i * 7} in the catalogue." for i in range(300))
    assert 5000 < len(big) <= 20_000
    async with client_for(app, **{"X-Api-Key": key}) as api:
        fits = await api.put(f"{DOCS}/by-external-id/small", json={"content": "Fits well."})
        assert fits.status_code == 201
        before = stats.texts
        assert before > 0  # what fits was embedded: the counter counts
        r = await api.put(f"{DOCS}/by-external-id/big", json={"content": big})
        problem = assert_problem(r, 403, "knowledge.quota_exceeded")
        assert problem["limit"] == "knowledge_chars"
        batch = {
            "items": [
                {"external_id": "other", "content": "Another short one."},
                {"external_id": "big", "content": big},
            ]
        }
        problem = assert_problem(await api.put(DOCS, json=batch), 403, "knowledge.quota_exceeded")
        assert problem["limit"] == "knowledge_chars"
        # Growing the document that exists past the quota: refused alike.
        r = await api.put(f"{DOCS}/by-external-id/small", json={"content": big})
        assert_problem(r, 403, "knowledge.quota_exceeded")
        assert stats.texts == before
        assert (await api.get(DOCS)).json()["total"] == 1
