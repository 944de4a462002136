"""app.client against the real stack: the asyncio client over ASGI (the app in this process),
the blocking client against a real server process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlean
from starlette.applications import Starlette

from app.client import (
    ApiError,
    AsyncClient,
    BatchDone,
    Client,
    ConnectionFailed,
    DocInput,
    RetryEvent,
    RetryPolicy,
    plan_batches,
)
from tests.conftest import AppFactory, new_key
from tests.support.live import LiveServer, free_port

pytestmark = pytest.mark.anyio


def asgi_client(app: Starlette, key: str, **options: Any) -> AsyncClient:
    return AsyncClient(
        "http://testserver",
        key,
        transport=httpx.ASGITransport(app=app),
        **options,  # type: ignore[arg-type]
    )


async def test_documents_round_trip_typed(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    async with asgi_client(app, key) as api:
        created = await api.upsert_doc(
            "faq", content="Orders ship within two days.", title="FAQ", metadata={"lang": "en"}
        )
        assert created.status == "created"
        assert created.document.chunk_count >= 1 and created.document.content is None
        again = await api.upsert_doc(
            "faq", content="Orders ship within two days.", title="FAQ", metadata={"lang": "en"}
        )
        assert again.status == "no_op"
        doc = await api.get_doc("faq")
        assert (doc.title, doc.metadata, doc.char_count) == ("FAQ", {"lang": "en"}, 28)

        result = await api.upsert_docs(
            [{"external_id": f"d{i:02d}", "content": f"document number {i}"} for i in range(5)]
        )
        assert result.summary.created == 5 and [r.status for r in result.results] == ["created"] * 5

        page = await api.list_docs(limit=2)
        assert page.total == 6 and len(page.items) == 2 and page.next_cursor is not None
        # The iterator walks every page (200 per page; `total` is the whole list).
        ids = [d.external_id async for d in api.iter_docs(include_content=True)]
        assert ids == ["d00", "d01", "d02", "d03", "d04", "faq"]

        hits = await api.search("how long does shipping take", k=2)
        assert hits.results[0].external_id == "faq" and hits.mode == "hybrid"

        await api.delete_doc("d00")
        await api.delete_doc("d00")  # idempotent: no error when already gone
        with pytest.raises(ApiError) as caught:
            await api.get_doc("d00")
        assert caught.value.status == 404 and caught.value.code == "knowledge.not_found"
        assert caught.value.request_id and caught.value.request_id.startswith("pzc-")
        assert "knowledge.not_found" in str(caught.value)


async def test_validation_errors_carry_fields(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    async with asgi_client(app, key) as api:
        with pytest.raises(ApiError) as caught:
            await api.upsert_docs([{"external_id": "bad id", "content": "x"}])
        err = caught.value
        assert (err.status, err.code) == (422, "knowledge.invalid_external_id")
        assert err.errors[0]["pointer"] == "/items/0/external_id"
        assert (await api.list_docs()).total == 0  # nothing changed


async def test_personas_and_subscription(app: Starlette) -> None:
    key = await new_key(app, plan="pro")
    async with asgi_client(app, key) as api:
        await api.upsert_docs([{"external_id": "lamp", "content": "The lamp has USB-C."}])
        ava = await api.create_persona(name="Ava", instructions="Be kind.")
        leo = await api.create_persona(name="Leo")
        attached = await api.set_persona_knowledge(ava.id, ["lamp", "lamp"])
        assert (attached.external_ids, attached.added) == (["lamp"], 1)
        renamed = await api.update_persona(ava.id, greeting="Hi")
        assert renamed.greeting == "Hi" and renamed.knowledge_external_ids == ["lamp"]
        assert [p.name async for p in api.iter_personas()] == ["Ava", "Leo"]
        await api.delete_persona(leo.id)
        with pytest.raises(ApiError) as caught:
            await api.get_persona(leo.id)
        assert caught.value.code == "persona.not_found"

        sub = await api.subscription()
        assert sub.plan.id == "pro" and sub.limits.batch_items == 100
        usage = await api.usage()
        assert usage.usage.knowledge_docs.used == 1 and usage.usage.personas.used == 1


def test_plan_batches_cuts_by_count_and_characters() -> None:
    docs = [
        DocInput(external_id=f"d{i}", content="x" * size)
        for i, size in enumerate([40, 40, 40, 500, 10, 10, 10, 10])
    ]
    by_count = [len(b) for b in plan_batches(docs, max_items=3, max_chars=10_000)]
    assert by_count == [3, 3, 2]
    by_size = [[d.external_id for d in b] for b in plan_batches(docs, max_items=100, max_chars=100)]
    # 40+40 fit, a third 40 would not; 500 goes alone; the small ones share one.
    assert by_size == [["d0", "d1"], ["d2"], ["d3"], ["d4", "d5", "d6", "d7"]]
    assert [d for b in by_size for d in b] == [d.external_id for d in docs]  # order kept


async def test_batched_upsert_follows_the_plan(make_app: AppFactory) -> None:
    plans = {
        "tiny": {
            "id": "tiny",
            "name": "Tiny",
            "limits": {
                "knowledge_docs": 100,
                "knowledge_chars": 1_000_000,
                "doc_chars": 10_000,
                "personas": 1,
                "batch_items": 3,
                "reads_per_minute": 1000,
                "writes_per_minute": 1000,
                "searches_per_minute": 1000,
            },
        }
    }
    app = await make_app(plans=plans)
    key = await new_key(app, plan="tiny")
    items = [{"external_id": f"n{i}", "content": f"note {i} " * 30} for i in range(8)]
    seen: list[BatchDone] = []
    async with asgi_client(app, key) as api:
        # batch_items comes from the plan (3): one request of 8 would be refused.
        result = await api.upsert_docs_batched(items, on_batch=seen.append)
        assert [len(b.items) for b in seen] == [3, 3, 2]
        assert result.summary.created == 8 and len(result.results) == 8
        seen.clear()
        # A character budget cuts further; a replay is all no_op (safe to run again).
        result = await api.upsert_docs_batched(items, max_chars=500, on_batch=seen.append)
        assert all(len(b.items) <= 2 for b in seen) and len(seen) == 4
        assert result.summary.no_op == 8
        assert (await api.list_docs()).total == 8


@pytest.mark.engines("sqlite")  # a second connection holds SQLite's one write lock
async def test_waits_out_503_as_retry_after_says(make_app: AppFactory, tmp_path: Path) -> None:
    """Another process holds the write lock: the server answers 503 with Retry-After, the
    client waits that long and sends the upsert again, which then succeeds."""
    app = await make_app(busy_timeout_s=0.05)
    key = await new_key(app, plan="unlimited")
    holder = sqlean.connect(str(tmp_path / "data" / "personaizer.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    events: list[RetryEvent] = []
    released = threading.Event()

    def release(event: RetryEvent) -> None:
        events.append(event)
        if not released.is_set():
            holder.execute("ROLLBACK")
            released.set()

    try:
        async with asgi_client(app, key, on_retry=release) as api:
            result = await api.upsert_doc("held", content="written after the lock is gone")
    finally:
        if not released.is_set():
            holder.execute("ROLLBACK")
        holder.close()
    assert result.status == "created"
    assert [(e.status, e.delay, e.method) for e in events] == [(503, 1.0, "PUT")]


async def test_rate_limit_longer_than_max_wait_is_raised(make_app: AppFactory) -> None:
    plans = {
        "slow": {
            "id": "slow",
            "name": "Slow",
            "limits": {
                "knowledge_docs": 10,
                "knowledge_chars": 10_000,
                "doc_chars": 1_000,
                "personas": 1,
                "batch_items": 10,
                "reads_per_minute": 100,
                "writes_per_minute": 1,
                "searches_per_minute": 1,
            },
        }
    }
    app = await make_app(plans=plans)
    key = await new_key(app, plan="slow")
    events: list[RetryEvent] = []
    async with asgi_client(app, key, max_wait=5, on_retry=events.append) as api:
        await api.upsert_doc("one", content="first write of the minute")
        with pytest.raises(ApiError) as caught:
            await api.upsert_doc("two", content="second write")
    err = caught.value
    assert (err.status, err.code) == (429, "limits.rate_exceeded")
    assert err.retry_after is not None and err.retry_after > 5
    assert events == []  # a minute's wait is the caller's decision, not a silent block


def test_transport_retries_only_where_replay_is_safe() -> None:
    policy = RetryPolicy(max_retries=2, backoff=0.5)
    refused = httpx.ConnectError("refused")
    dropped = httpx.RemoteProtocolError("server disconnected")
    slow = httpx.ReadTimeout("timed out")
    assert policy.for_transport(refused, 0, idempotent=False) == 0.5  # nothing was sent
    assert policy.for_transport(dropped, 1, idempotent=True) == 1.0  # an upsert replays
    assert policy.for_transport(dropped, 0, idempotent=False) is None  # a create does not
    assert policy.for_transport(slow, 0, idempotent=True) is None  # still working: no replay
    assert policy.for_transport(refused, 2, idempotent=True) is None  # bounded


def test_blocking_client_against_a_live_server(live_server: LiveServer) -> None:
    key = live_server.new_key("client-live@example.com")
    with Client(live_server.url, key) as api:
        done = api.upsert_docs_batched(
            [DocInput(external_id=f"live-{i}", content=f"live document {i}") for i in range(3)],
            max_chars=40,
        )
        assert done.summary.created == 3
        assert [d.external_id for d in api.iter_docs()] == ["live-0", "live-1", "live-2"]
        assert api.get_doc("live-1").content == "live document 1"
        assert api.search("live document 2", mode="keyword").results[0].external_id == "live-2"
    with Client(live_server.url, "pa_live_" + "x" * 40) as bad, pytest.raises(ApiError) as caught:
        bad.list_docs()
    assert (caught.value.status, caught.value.code) == (401, "auth.unauthorized")
    assert caught.value.request_id


async def test_async_iter_changes_follows_the_feed(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    async with asgi_client(app, key) as api:
        pages = [page async for page in api.iter_changes()]
        assert len(pages) == 1 and pages[0].changes == [] and not pages[0].has_more
        since = pages[0].next_since
        await api.upsert_docs(
            [{"external_id": f"c{i}", "content": f"change {i}"} for i in range(5)]
        )
        await api.delete_doc("c1")
        pages = [page async for page in api.iter_changes(since, limit=2)]
        changes = [c for page in pages for c in page.changes]
        assert [(c.external_id, c.op) for c in changes] == [
            ("c0", "upsert"),
            ("c2", "upsert"),
            ("c3", "upsert"),
            ("c4", "upsert"),
            ("c1", "delete"),
        ]
        assert changes[0].document is not None and changes[-1].document is None
        assert [p.has_more for p in pages] == [True, True, False]
        # The last page's token: nothing new after it.
        one = await api.list_changes(since=pages[-1].next_since)
        assert one.changes == [] and one.next_since == pages[-1].next_since
        with pytest.raises(ApiError) as caught:
            await api.list_changes(since="not-a-token")
        assert (caught.value.status, caught.value.code) == (400, "request.invalid_cursor")


def test_blocking_iter_changes_against_a_live_server(live_server: LiveServer) -> None:
    key = live_server.new_key("client-changes@example.com")
    with Client(live_server.url, key) as api:
        api.upsert_docs([{"external_id": f"c{i}", "content": f"change {i}"} for i in range(3)])
        saved = None
        seen: list[str] = []
        for page in api.iter_changes(saved, limit=2):
            seen += [c.external_id for c in page.changes]
            saved = page.next_since
        assert seen == ["c0", "c1", "c2"]
        api.delete_doc("c0")
        later = list(api.iter_changes(saved))
        assert [(c.external_id, c.op) for p in later for c in p.changes] == [("c0", "delete")]


def test_unreachable_server_is_one_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        Client(url, "pa_live_" + "x" * 40, max_retries=1) as api,
        pytest.raises(ConnectionFailed) as caught,
    ):
        api.subscription()
    message = str(caught.value)
    assert message.startswith(f"cannot reach {url}: ") and len(message) > len(url) + 16


async def test_search_min_score_leaves_out_weaker_hits(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    async with asgi_client(app, key) as api:
        await api.upsert_docs(
            [
                {"external_id": "ship", "content": "Orders ship within two days."},
                {"external_id": "cat", "content": "Our office cat is named Biscuit."},
            ]
        )
        every = await api.search("how long does shipping take", k=5)
        scores = [hit.score for hit in every.results]
        assert len(scores) == 2 and scores[0] > scores[1]
        # A threshold between the two scores keeps the first hit only.
        middle = (scores[0] + scores[1]) / 2
        kept = await api.search("how long does shipping take", k=5, min_score=middle)
        assert [hit.external_id for hit in kept.results] == ["ship"]
        with pytest.raises(ApiError) as caught:
            await api.search("shipping", min_score=1.5)
        assert caught.value.status == 422
        assert caught.value.errors[0]["pointer"] == "/min_score"


def test_blocking_search_min_score_against_a_live_server(live_server: LiveServer) -> None:
    key = live_server.new_key("client-min-score@example.com")
    with Client(live_server.url, key) as api:
        api.upsert_docs(
            [
                {"external_id": "ship", "content": "Orders ship within two days."},
                {"external_id": "cat", "content": "Our office cat is named Biscuit."},
            ]
        )
        every = api.search("how long does shipping take", k=5).results
        assert [hit.external_id for hit in every] == ["ship", "cat"]
        kept = api.search("how long does shipping take", k=5, min_score=every[0].score)
        assert [hit.external_id for hit in kept.results] == ["ship"]


async def test_list_filters_and_persona_rules(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    async with asgi_client(app, key) as api:
        await api.upsert_docs(
            [
                {"external_id": "a", "content": "one", "metadata": {"flag": True, "s": "true"}},
                {"external_id": "b", "content": "two", "metadata": {"flag": 1, "s": "007"}},
                {"external_id": "kb-c", "content": "three", "metadata": {"s": "true"}},
            ]
        )
        # Values go as JSON text: the string "true" stays a string, True stays a boolean.
        assert [d.external_id for d in (await api.list_docs(metadata={"flag": True})).items] == [
            "a"
        ]
        strings = [d.external_id async for d in api.iter_docs(metadata={"s": "true"})]
        assert strings == ["a", "kb-c"]
        assert (await api.list_docs(metadata={"s": "007"})).total == 1
        assert (await api.list_docs(external_id_prefix="kb-")).total == 1
        persona = await api.create_persona(
            name="Rule", knowledge_filter={"external_id_prefixes": ["kb-"]}
        )
        assert persona.knowledge_filter is not None and persona.knowledge_count == 1
        assert persona.knowledge_filter.external_id_prefixes == ["kb-"]
        await api.set_persona_knowledge(persona.id, ["a"])
        page = await api.list_persona_knowledge(persona.id, limit=1)
        assert [(d.external_id, d.via) for d in page.items] == [("a", "attached")]
        assert page.total == 2 and page.next_cursor is not None
        every = [(d.external_id, d.via) async for d in api.iter_persona_knowledge(persona.id)]
        assert every == [("a", "attached"), ("kb-c", "filter")]
        with pytest.raises(ApiError) as raised:
            await api.list_persona_knowledge("per_01NOPE")
        assert (raised.value.status, raised.value.code) == (404, "persona.not_found")
        cleared = await api.update_persona(persona.id, knowledge_filter=None)
        assert cleared.knowledge_filter is None and cleared.knowledge_count == 1
