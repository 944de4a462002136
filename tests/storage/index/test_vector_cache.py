"""SQLite's float vector cache: it serves repeated searches, stays exact when documents are
replaced or deleted (ids are never reused), keeps to its byte bound, can be turned off, and is
shared safely by searches running on several reader connections at once."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette

from app.models import KnowledgeDocItem, SearchResponse
from app.services import knowledge
from app.services.runtime import Principal, Runtime
from app.storage.index import Ranked
from app.storage.index.resident import ResidentStore
from app.storage.index.sqlite import SqliteIndex
from app.storage.index.vector_cache import ENTRY_OVERHEAD, VectorCache
from tests.conftest import AppFactory
from tests.services.test_search import QUERIES, TOPICS, long_text, run_search, setup_corpus

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]


@pytest.fixture(autouse=True)
def per_chunk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users here are small enough to be kept whole (app/storage/index/resident.py, its own tests):
    turned off, so that the searches take the per-chunk path this cache serves (that of users
    too large to keep whole)."""
    monkeypatch.setattr(ResidentStore, "current", lambda *_args: None)


VECTOR = 384 * 4
Hit = tuple[str, int, float, float | None, float | None]


def hits(response: SearchResponse) -> list[Hit]:
    """A search's answer, scores and their parts unrounded: neither the cache nor keeping a
    user whole (tests/storage/index/test_resident.py) may change a bit of them."""
    return [
        (h.external_id, h.chunk_index, h.score, h.semantic_score, h.keyword_score)
        for h in response.results
    ]


def cache_of(runtime: Runtime) -> VectorCache:
    assert isinstance(runtime.index, SqliteIndex)
    return runtime.index.vector_cache


async def answers(runtime: Runtime, principal: Principal, **body: Any) -> list[list[Hit]]:
    return [
        hits(await run_search(runtime, principal, query=q, mode=mode, k=5, **body))
        for q in QUERIES
        for mode in ("hybrid", "semantic")
    ]


async def uncached(
    runtime: Runtime, principal: Principal, monkeypatch: pytest.MonkeyPatch, **body: Any
) -> list[list[Hit]]:
    """The same searches with no cache at all: every vector read from the database."""
    with monkeypatch.context() as m:
        m.setattr(runtime.index, "vector_cache", VectorCache(0))
        return await answers(runtime, principal, **body)


async def rewrite_corpus(runtime: Runtime, principal: Principal) -> None:
    """The document holding the largest chunk ids (the last) replaced by other text (its chunks
    deleted, new rows written), "doc-2" deleted, "new" added."""
    await knowledge.upsert_many(
        runtime=runtime,
        principal=principal,
        items=[
            KnowledgeDocItem(
                external_id=f"doc-{len(TOPICS) - 1}",
                title=None,
                content=long_text(TOPICS[0], 40),
            ),
            KnowledgeDocItem(external_id="new", title=None, content=long_text(TOPICS[2], 5)),
        ],
    )
    await knowledge.delete_doc(runtime=runtime, principal=principal, external_id="doc-2")


def entry(n: int) -> tuple[int, tuple[str, bytes]]:
    return n, ("doc", bytes([n]) * VECTOR)


def test_the_lru_keeps_to_its_bound_and_evicts_the_least_recently_used() -> None:
    cache = VectorCache(3 * (VECTOR + ENTRY_OVERHEAD))
    cache.put_many([entry(1), entry(2), entry(3)])
    found, missing = cache.get_many([1, 9])  # 1 is now the most recently used
    assert list(found) == [1] and missing == [9]
    cache.put_many([entry(4)])
    assert len(cache) == 3 and cache.bytes == 3 * (VECTOR + ENTRY_OVERHEAD)
    found, missing = cache.get_many([1, 2, 3, 4])
    assert sorted(found) == [1, 3, 4] and missing == [2]
    assert found[4] == entry(4)[1]
    assert (cache.hits, cache.misses) == (4, 2)
    cache.put_many([entry(3)])  # held already: counted once
    assert len(cache) == 3 and cache.bytes == 3 * (VECTOR + ENTRY_OVERHEAD)
    too_small = VectorCache(VECTOR)
    too_small.put_many([entry(1)])
    assert len(too_small) == 0 and too_small.bytes == 0


async def test_repeated_searches_read_their_vectors_from_the_cache(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, principal = await setup_corpus(app)
    cache = cache_of(runtime)
    assert cache.max_bytes == runtime.settings.vector_cache_mb * 1024 * 1024 > 0
    first = await answers(runtime, principal)
    read = cache.misses
    assert read > 0 and len(cache) == read  # each vector read once, then served from memory
    hits_before = cache.hits
    again = await answers(runtime, principal)
    assert cache.misses == read  # nothing read from the database the second time
    assert cache.hits > hits_before
    assert again == first == await uncached(runtime, principal, monkeypatch)
    # A scope scored exactly at once reads through the same cache.
    scoped = await answers(runtime, principal, external_ids=["doc-1", "doc-3"])
    assert cache.misses == read
    assert scoped == await uncached(
        runtime, principal, monkeypatch, external_ids=["doc-1", "doc-3"]
    )


async def test_replaced_and_deleted_documents_never_rank_by_their_old_vectors(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document holding the largest chunk ids is replaced by other text (its chunks
    deleted, new rows written), another deleted and one added, all after every vector was
    cached: searches answer exactly as with no cache. (Were ids reused, the new chunks would
    take the old ones' ids and rank by the old, cached vectors.)"""
    runtime, principal = await setup_corpus(app)
    await answers(runtime, principal)
    held = len(cache_of(runtime))
    await rewrite_corpus(runtime, principal)
    assert len(cache_of(runtime)) == held  # the old vectors are still cached
    after = await answers(runtime, principal)
    assert after == await uncached(runtime, principal, monkeypatch)
    assert any(h[0] == f"doc-{len(TOPICS) - 1}" for answer in after for h in answer)
    assert not any(h[0] == "doc-2" for answer in after for h in answer)


async def test_a_small_cache_evicts_and_ranks_the_same(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, principal = await setup_corpus(app)
    small = VectorCache(10 * (VECTOR + ENTRY_OVERHEAD))
    monkeypatch.setattr(runtime.index, "vector_cache", small)
    first = await answers(runtime, principal)
    assert len(small) == 10 and small.bytes <= small.max_bytes
    assert small.misses > 10  # vectors evicted were read again
    assert first == await answers(runtime, principal)
    assert first == await uncached(runtime, principal, monkeypatch)


async def test_a_cache_of_0_mb_keeps_nothing(make_app: AppFactory) -> None:
    app = await make_app(vector_cache_mb=0)
    runtime, principal = await setup_corpus(app)
    cache = cache_of(runtime)
    first = await answers(runtime, principal)
    read = cache.misses
    assert read > 0 and len(cache) == 0 and cache.hits == 0
    assert await answers(runtime, principal) == first
    assert cache.misses == 2 * read  # every vector read from the database again


async def test_concurrent_searches_share_the_cache_correctly(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches at once run on several reader connections, each on its own thread, loading
    into and reading from the one cache: each ranks exactly as it does alone without a cache.
    (Ranked from query vectors embedded beforehand: queries embedded together, in one batch,
    differ from those embedded alone in their last bits.)"""
    runtime, principal = await setup_corpus(app)
    vectors = [(await runtime.embedder.embed([q], lane="query"))[0] for q in QUERIES]

    async def rank(i: int) -> tuple[list[Ranked], list[Ranked]]:
        async with runtime.db.read() as session:
            ranker = runtime.index.ranker(session, user_id=principal.user_id, within=None)
            first = await ranker.rank(vectors[i % len(vectors)], 3 + i % 4)
            feedback = await ranker.vectors([r.chunk_id for r in first])
            return first, await ranker.rank(np.mean(feedback, axis=0), 3 + i % 4)

    with monkeypatch.context() as m:
        m.setattr(runtime.index, "vector_cache", VectorCache(0))
        expected = [await rank(i) for i in range(24)]
    small = VectorCache(12 * (VECTOR + ENTRY_OVERHEAD))  # evicting while others read
    for cache in (cache_of(runtime), small):
        with monkeypatch.context() as m:
            m.setattr(runtime.index, "vector_cache", cache)
            for _ in range(2):
                together = await asyncio.gather(*(rank(i) for i in range(24)))
                assert together == expected
        assert cache.hits > 0
