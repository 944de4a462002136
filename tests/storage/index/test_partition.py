"""Large users' bit vectors in lists (app/storage/index/partition.py), forced on here for small
users: on data small enough that every list gets probed the answers are the full pass's; on a
clustered set larger than the probes the nearest chunks are still found; writes, deletes and
other users never leak into a kept partition, and a write through another server process on
the same file is searchable at once."""

from __future__ import annotations

import gc
import uuid
import weakref
from typing import Any

import numpy as np
import pytest
import sqlean

from app.embedding.embedder import DIMS
from app.models import Chunk, KnowledgeDoc, KnowledgeDocItem, utcnow
from app.services import accounts, feed, knowledge
from app.services.runtime import Principal, Runtime
from app.storage.index import IndexedChunk, codes
from app.storage.index import partition as partition_module
from app.storage.index import sqlite as sqlite_index
from app.storage.index.partition import Partition, PartitionStore
from app.storage.index.resident import ResidentStore
from app.storage.index.sqlite import SqliteIndex, SqliteRanker
from app.storage.index.sqlite_vectors import Bits, quantize, read_floats
from app.storage.sqlite_driver import run_on_connection
from tests.conftest import AppFactory, new_key
from tests.services.test_search import TOPICS, long_text, run_search, setup_corpus
from tests.storage.index.test_vector_cache import Hit, answers, rewrite_corpus

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]


@pytest.fixture(autouse=True)
def no_resident(monkeypatch: pytest.MonkeyPatch) -> None:
    """The users here would be kept whole (resident.py): off, as for a user past its bound."""
    monkeypatch.setattr(ResidentStore, "current", lambda *_args: None)
    monkeypatch.setattr(ResidentStore, "latest", lambda *_args: None)


@pytest.fixture(autouse=True)
def inline_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions built inside the search that needs them, so that each test knows which
    search uses one (the background build has its own test)."""
    monkeypatch.setattr(PartitionStore, "background", False)


def store_of(runtime: Runtime) -> PartitionStore:
    assert isinstance(runtime.index, SqliteIndex)
    return runtime.index.partitions


async def full_pass(
    runtime: Runtime, principal: Principal, monkeypatch: pytest.MonkeyPatch, **body: Any
) -> list[list[Hit]]:
    """The same searches with no partition: the coarse pass over all the user's bits."""
    with monkeypatch.context() as m:
        m.setattr(store_of(runtime), "min_chunks", 10**9)
        m.setattr(PartitionStore, "kept", lambda *_args: None)
        return await answers(runtime, principal, **body)


async def test_a_partition_probing_every_list_answers_as_the_full_pass(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await make_app(partition_min_chunks=1)
    runtime, principal = await setup_corpus(app)
    store = store_of(runtime)
    # A handful of chunks in 32 lists: a pass probes lists until it has its candidates, all.
    got = await answers(runtime, principal)
    assert len(store) == 1 and store.builds == 1 and store.hits > 0
    assert got == await full_pass(runtime, principal, monkeypatch)
    for scope in ({"external_ids": ["doc-1", "doc-3"]}, {"metadata": {"even": True}}):
        assert await answers(runtime, principal, **scope) == await full_pass(
            runtime, principal, monkeypatch, **scope
        )
    assert store.builds == 1  # no write: the kept partition served every pass


async def test_writes_update_the_partition_and_never_rank_what_is_gone(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await make_app(partition_min_chunks=1)
    runtime, principal = await setup_corpus(app)
    await answers(runtime, principal)
    store = store_of(runtime)
    old = store.kept(principal.user_id, store._entries[principal.user_id].key)
    assert old is not None
    # Another user with the same texts: never in this user's answers.
    other = await accounts.authenticate(
        runtime=runtime, api_key=await new_key(app, email="o@example.com", plan="unlimited")
    )
    await knowledge.upsert_many(
        runtime=runtime,
        principal=other,
        items=[
            KnowledgeDocItem(external_id=f"other-{i}", title=None, content=long_text(t, 3))
            for i, t in enumerate(TOPICS)
        ],
    )
    await rewrite_corpus(runtime, principal)  # a document replaced, one deleted, one added
    after = await answers(runtime, principal)
    assert store.builds == 2  # updated once, from the kept one
    assert after == await full_pass(runtime, principal, monkeypatch)
    shown = {hit[0] for answer in after for hit in answer}
    assert "doc-2" not in shown and "new" in shown
    assert not any(name.startswith("other-") for name in shown)
    new = store._entries[principal.user_id]
    assert new.centroids is old.centroids  # the lists were kept, not trained again
    assert new.quantizer is old.quantizer
    async with runtime.db.read() as session:
        chunks = await runtime.index.count(session, user_id=principal.user_id)
    assert len(new) == chunks
    # The codes kept for the chunks still there and made for the new ones are those of each
    # row's own float vector: none is left over from a deleted chunk.
    await assert_codes_of_own_vectors(runtime, new)


async def assert_codes_of_own_vectors(runtime: Runtime, partition: Partition) -> None:
    assert partition.codes is not None and partition.quantizer is not None
    ids = np.sort(partition.bits.ids)

    async with runtime.db.read() as session:
        found, matrix = await run_on_connection(session, lambda conn: read_floats(conn, ids))
    assert found.tolist() == ids.tolist()
    rows = np.argsort(partition.bits.ids)
    assert np.array_equal(partition.codes[rows], codes.encode(partition.quantizer, matrix))


async def test_a_write_through_another_process_is_searchable_at_once(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """Two servers on one SQLite file, each with its own partitions: what one writes or
    deletes, the other's next search sees (the snapshot's key changed)."""
    first = await make_app(partition_min_chunks=1)
    runtime, principal = await setup_corpus(first)
    second = await make_app(data_dir=tmp_path / "data", partition_min_chunks=1)
    other: Runtime = second.state.runtime
    query = {"query": "violin concerto for orchestra", "mode": "semantic", "k": 3}
    before = await run_search(runtime, principal, **query)
    assert "music" not in [h.external_id for h in before.results]
    content = long_text("a violin concerto for a soloist and a symphony orchestra", 3)
    await knowledge.upsert_many(
        runtime=other,
        principal=principal,
        items=[KnowledgeDocItem(external_id="music", title=None, content=content)],
    )
    found = await run_search(runtime, principal, **query)
    assert found.results[0].external_id == "music"
    await knowledge.delete_doc(runtime=other, principal=principal, external_id="music")
    gone = await run_search(runtime, principal, **query)
    assert "music" not in [h.external_id for h in gone.results]
    assert store_of(runtime).builds == 3


async def add_clustered(
    runtime: Runtime, user_id: int, vectors: np.ndarray, per_doc: int = 4
) -> None:
    """Documents of `per_doc` chunks with these vectors, written as the bench writes them
    (rows and index entries, a change seq per document: app/services/feed.py)."""
    now = utcnow()
    async with runtime.db.write() as session:
        count = len(vectors) // per_doc
        await feed.take_seqs(session, user_id=user_id, count=count)
        docs = [
            KnowledgeDoc(
                id=uuid.uuid4().hex,
                user_id=user_id,
                external_id=f"c-{i}",
                title=None,
                content="(synthetic)",
                metadata_={"quarter": i % 4 == 0},
                content_sha256="-",
                char_count=0,
                chunk_count=per_doc,
                created_at=now,
                updated_at=now,
            )
            for i in range(count)
        ]
        session.add_all(docs)
        await session.flush()
        chunks = [
            Chunk(
                doc_id=doc.id,
                user_id=user_id,
                chunk_index=c,
                text=f"chunk {i} {c}",
                embed_sha256="-",
                embedding=vectors[i * per_doc + c],
            )
            for i, doc in enumerate(docs)
            for c in range(per_doc)
        ]
        session.add_all(chunks)
        await session.flush()
        await runtime.index.put_many(
            session,
            user_id=user_id,
            docs=[(None, [IndexedChunk(c.id, c.text, c.embedding) for c in chunks if c.id])],
        )


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


async def test_the_probed_lists_hold_the_nearest_chunks_of_a_clustered_set(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24,000 chunks around 300 directions, in 32 lists of which a pass probes 12 (and ranks
    about three eighths of the bits): the partition's top 10 documents are the full pass's, but for a
    few, scoped to a quarter of the documents or not."""
    rng = np.random.default_rng(3)
    centers = unit(rng.standard_normal((300, DIMS)))
    labels = rng.integers(0, len(centers), 24_000)
    vectors = unit(centers[labels] + 0.03 * rng.standard_normal((24_000, DIMS)))
    app = await make_app(partition_min_chunks=20_000)
    runtime: Runtime = app.state.runtime
    principal = await accounts.authenticate(
        runtime=runtime, api_key=await new_key(app, plan="unlimited")
    )
    await add_clustered(runtime, principal.user_id, vectors)
    ranked: list[int] = []
    original = sqlite_index.nearest_positions

    def counting(bits: Any, vector: np.ndarray, n: int) -> Any:
        ranked.append(len(bits.ids))
        return original(bits, vector, n)

    monkeypatch.setattr(sqlite_index, "nearest_positions", counting)
    scored: list[int] = []
    exact_of = SqliteRanker._exact

    def scoring(self: SqliteRanker, conn: Any, ids: np.ndarray, *args: Any) -> Any:
        scored.append(len(ids))
        return exact_of(self, conn, ids, *args)

    monkeypatch.setattr(SqliteRanker, "_exact", scoring)
    memberships: list[int] = []
    membership_of = partition_module._membership

    def membership(within: np.ndarray) -> Any:
        memberships.append(len(within))
        return membership_of(within)

    monkeypatch.setattr(partition_module, "_membership", membership)
    queries = unit(centers[rng.integers(0, len(centers), 20)] + 0.03 * rng.standard_normal(DIMS))
    store = store_of(runtime)
    for scope in ({}, {"metadata": {"quarter": True}}):
        found = total = 0
        for q in queries:
            body = {"query": "x", "mode": "semantic", "k": 10, **scope}
            with monkeypatch.context() as m:
                m.setattr(runtime.embedder, "embed", _fixed(q))
                ranked.clear()
                scored.clear()
                approximate = await run_search(runtime, principal, **body)
                assert store.builds == 1 and 0 < max(ranked) < 24_000 // 2
                # Of the 400 candidates, only the best estimates' float vectors are read.
                assert scored == [sqlite_index.RESCORED_MIN]
                m.setattr(store, "min_chunks", 10**9)
                m.setattr(PartitionStore, "kept", lambda *_args: None)
                exact = await run_search(runtime, principal, **body)
            want = {h.external_id for h in exact.results}
            found += len(want & {h.external_id for h in approximate.results})
            total += len(want)
        assert found / total >= 0.95, scope
    # The scope was resolved once (no write), and its chunks looked up in the partition once
    # for its 20 passes.
    assert memberships == [6_000]
    await assert_codes_of_own_vectors(runtime, store._entries[principal.user_id])


def _fixed(vector: np.ndarray) -> Any:
    async def embed(texts: list[str], **_kwargs: Any) -> np.ndarray:
        return np.stack([vector] * len(texts))

    return embed


def test_lists_are_sized_from_the_number_of_chunks() -> None:
    assert partition_module.list_count(1_000) == partition_module.MIN_LISTS
    assert partition_module.list_count(1_000_000) == 1_000_000 // partition_module.LIST_SIZE


async def test_a_resolved_scope_is_kept_until_a_write_changes_the_snapshot(
    make_app: AppFactory,
) -> None:
    """Metadata scopes are resolved once per snapshot (app/storage/index/scope_cache.py): the
    same scope again is served from the cache, and a document whose metadata changed is in
    (or out of) the scope at the next search."""
    app = await make_app()
    runtime, principal = await setup_corpus(app)
    assert isinstance(runtime.index, SqliteIndex)
    scopes = runtime.index.scopes
    body = {"query": "bread dough", "mode": "hybrid", "k": 20, "metadata": {"even": True}}
    first = await run_search(runtime, principal, **body)
    again = await run_search(runtime, principal, **body)
    assert scopes.hits == 1 and len(scopes) == 1
    assert [h.external_id for h in again.results] == [h.external_id for h in first.results]
    assert "doc-1" not in {h.external_id for h in first.results}
    await knowledge.upsert_many(
        runtime=runtime,
        principal=principal,
        items=[
            KnowledgeDocItem(
                external_id="doc-1",
                title=None,
                content=long_text(TOPICS[1], 40),
                metadata={"even": True},
            )
        ],
    )
    moved = await run_search(runtime, principal, **body)
    assert "doc-1" in {h.external_id for h in moved.results}
    assert scopes.hits == 1  # resolved again: the snapshot's key changed


async def test_a_partition_is_built_in_the_background_while_searches_go_on(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PartitionStore, "background", True)
    app = await make_app(partition_min_chunks=1)
    runtime, principal = await setup_corpus(app)
    store = store_of(runtime)
    first = await answers(runtime, principal)  # the full pass, while the partition is built
    store.wait()
    assert store.builds == 1 and len(store) == 1
    hits_before = store.hits
    assert await answers(runtime, principal) == first
    assert store.hits > hits_before


@pytest.mark.parametrize("span", [1_000, 10**12])
def test_scope_membership_by_bitmap_or_by_search_agrees(span: int) -> None:
    rng = np.random.default_rng(span % 97)
    within = np.unique(rng.integers(5, 5 + span, 3_000)).astype(np.int64)
    ids = np.concatenate([within[::3], rng.integers(0, 10 + span, 2_000)]).astype(np.int64)
    got = partition_module._membership(within)(ids)
    assert got.tolist() == np.isin(ids, within).tolist()
    assert not partition_module._membership(within[:0])(ids).any()


def test_the_best_estimates_of_the_codes_hold_the_best_candidates() -> None:
    """On vectors of unequal spread per dimension, as a model's are: of 400 candidates, the 64
    best estimated from sign and magnitude codes hold the 10 best by exact score, but for a
    few; the sign bits alone hold fewer."""
    rng = np.random.default_rng(11)
    spread = rng.uniform(0.3, 2.0, DIMS)
    vectors = unit(rng.standard_normal((20_000, DIMS)) * spread)
    quantizer = codes.fit(vectors[rng.choice(len(vectors), 4_000, replace=False)])
    packed = codes.encode(quantizer, vectors)
    words = np.packbits(vectors > 0, axis=1, bitorder="little").view(np.uint64)
    held = held_by_signs = total = 0
    for q in unit(vectors[:20] + 0.6 * unit(rng.standard_normal((20, DIMS)) * spread)):
        candidates = np.argsort(-(vectors @ q))[:400]
        rng.shuffle(candidates)
        best = set(np.argsort(-(vectors[candidates] @ q))[:10].tolist())
        guess = codes.estimates(quantizer, words[candidates], packed[candidates], q)
        held += len(best & set(np.argsort(-guess)[:64].tolist()))
        signs = np.where(vectors[candidates] > 0, 1.0, -1.0) @ q
        held_by_signs += len(best & set(np.argsort(-signs)[:64].tolist()))
        total += len(best)
    assert held / total >= 0.98
    assert held_by_signs < held


def test_a_scope_is_gathered_from_its_rows_of_the_partition() -> None:
    """The rows a store keeps for a scope are the partition's rows of the scope's chunks; a
    pass gathers exactly the scope's chunks of the probed lists; and a partition made for
    another snapshot (after a write) gets its own rows, not the kept ones."""
    rng = np.random.default_rng(5)
    ids = rng.permutation(np.arange(1, 6_001, dtype=np.int64))
    bits = Bits(ids, quantize(rng.standard_normal((len(ids), DIMS))).view(np.uint64))
    part = partition_module.build(bits, (1, 6_000), None, seed=1)
    within = np.sort(rng.choice(ids, 1_500, replace=False))
    store = PartitionStore(max_bytes=1 << 30, min_chunks=1)
    rows = store.scope_rows(part, within)
    assert store.scope_rows(part, within) is rows
    assert sorted(part.bits.ids[rows].tolist()) == within.tolist()
    vector = rng.standard_normal(DIMS).astype(np.float32)
    everywhere, _, _ = part.gather(vector, part.probes, 1, None)
    scoped, scoped_rows, _ = part.gather(vector, part.probes, 1, rows)
    assert scoped.ids.tolist() == [i for i in everywhere.ids.tolist() if i in set(within.tolist())]
    assert part.bits.ids[scoped_rows].tolist() == scoped.ids.tolist()
    assert np.array_equal(part.bits.words[scoped_rows], scoped.words)
    rewritten = partition_module.build(Bits(ids[:5_000], bits.words[:5_000]), (2, 6_000), part, 1)
    replaced = weakref.ref(part)
    del part
    gc.collect()
    assert replaced() is None  # the kept scope rows do not keep a replaced partition alive
    again = store.scope_rows(rewritten, within)
    assert sorted(rewritten.bits.ids[again].tolist()) == sorted(
        set(within.tolist()) & set(ids[:5_000].tolist())
    )


async def test_a_partition_whose_floats_cannot_be_read_serves_without_codes(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build reads every float vector on a connection of its own; when the file cannot be
    opened so, the partition is kept without codes and ranks as the full pass."""

    def unopenable(path: str) -> Any:
        raise sqlean.OperationalError(f"unable to open database file {path}")

    monkeypatch.setattr(sqlite_index, "floats_of_file", unopenable)
    app = await make_app(partition_min_chunks=1)
    runtime, principal = await setup_corpus(app)
    got = await answers(runtime, principal)
    store = store_of(runtime)
    assert store.builds == 1 and store._entries[principal.user_id].codes is None
    assert got == await full_pass(runtime, principal, monkeypatch)
