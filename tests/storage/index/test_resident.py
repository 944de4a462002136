"""Whole users kept in memory (app/storage/index/resident.py): searches answer exactly as the per-chunk
path does, bit for bit, scoped or not, before and after documents are replaced, deleted and
added (the matrix is rebuilt from the kept one), and the store keeps to its bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sqlean
from starlette.applications import Starlette

from app.embedding.embedder import DIMS
from app.services.runtime import Principal, Runtime
from app.storage.index import resident as resident_module
from app.storage.index.resident import PER_CHUNK_OVERHEAD, ResidentStore
from app.storage.index.sqlite import SqliteIndex
from app.storage.index.sqlite_vectors import read_all_bits
from app.storage.sqlite_driver import run_on_connection
from tests.services.test_search import QUERIES, TOPICS, run_search, setup_corpus
from tests.storage.index.test_vector_cache import Hit, answers, hits, rewrite_corpus

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]


def store_of(runtime: Runtime) -> ResidentStore:
    assert isinstance(runtime.index, SqliteIndex)
    return runtime.index.residents


async def per_chunk(
    runtime: Runtime, principal: Principal, monkeypatch: pytest.MonkeyPatch, **body: Any
) -> list[list[Hit]]:
    """The same searches with no user kept whole (nor its documents named from the kept matrix
    for the keyword ranking)."""
    with monkeypatch.context() as m:
        m.setattr(ResidentStore, "current", lambda *_args: None)
        m.setattr(ResidentStore, "latest", lambda *_args: None)
        return await answers(runtime, principal, **body)


async def test_a_kept_user_ranks_exactly_as_the_per_chunk_path(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, principal = await setup_corpus(app)
    store = store_of(runtime)
    kept = await answers(runtime, principal)
    assert len(store) == 1 and store.builds == 1  # built once, then served
    assert store.hits > 0
    assert kept == await per_chunk(runtime, principal, monkeypatch)
    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    for scope in (["doc-1", "doc-3"], everything):
        assert await answers(runtime, principal, external_ids=scope) == await per_chunk(
            runtime, principal, monkeypatch, external_ids=scope
        )
    # Deep passes (every chunk a candidate) rank the same too.
    monkeypatch.setattr("app.storage.index.sqlite.CANDIDATES_MIN", 10_000)
    assert await answers(runtime, principal) == await per_chunk(runtime, principal, monkeypatch)
    assert store.builds == 1


async def test_writes_rebuild_the_kept_matrix_from_the_old_one(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document replaced by other text (new chunk rows), one deleted, one added, after the
    user was kept: the next search sees other chunk ids, rebuilds (reading only the new chunks)
    and answers as the per-chunk path does."""
    runtime, principal = await setup_corpus(app)
    await answers(runtime, principal)
    store = store_of(runtime)
    builds = store.builds
    await rewrite_corpus(runtime, principal)
    last = len(TOPICS) - 1
    read: list[int] = []
    original = resident_module.read_entries

    def counting(conn: sqlean.Connection, chunk_ids: list[int]) -> Any:
        read.extend(chunk_ids)
        return original(conn, chunk_ids)

    monkeypatch.setattr(resident_module, "read_entries", counting)
    after = await answers(runtime, principal)
    assert store.builds == builds + 1
    async with runtime.db.read() as session:
        new = await run_on_connection(
            session,
            lambda conn: [
                int(r[0])
                for r in conn.execute(
                    "SELECT c.id FROM chunks c JOIN knowledge_docs d ON d.id = c.doc_id"
                    " WHERE d.external_id IN (?, ?)",
                    (f"doc-{last}", "new"),
                )
            ],
        )
    assert sorted(read) == sorted(new)  # only the new chunks were read
    assert after == await per_chunk(runtime, principal, monkeypatch)
    assert not any(hit[0] == "doc-2" for answer in after for hit in answer)


async def test_keyword_rankings_name_documents_from_a_kept_matrix_of_any_snapshot(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keyword ranking takes its chunks' documents from the user's kept matrix instead of a
    join, even a matrix older than the search's snapshot (documents written since): the chunks
    it holds map right in every snapshot, the new ones are looked up. The same answers as the
    join, bit for bit."""
    runtime, principal = await setup_corpus(app)
    await answers(runtime, principal)
    store = store_of(runtime)
    old = store.latest(principal.user_id)
    assert old is not None
    await rewrite_corpus(runtime, principal)  # new chunks the kept matrix lacks; no search since

    async def keyword() -> list[list[Hit]]:
        return [
            hits(await run_search(runtime, principal, query=q, mode="keyword", k=10, **body))
            for q in (*QUERIES, TOPICS[0], TOPICS[2], "doc")
            for body in ({}, {"external_ids": ["new", "doc-1", "doc-3"]})
        ]

    named = await keyword()
    assert store.latest(principal.user_id) is old  # keyword searches do not rebuild it
    with monkeypatch.context() as m:
        m.setattr(ResidentStore, "latest", lambda *_args: None)
        joined = await keyword()
    assert named == joined
    found = {hit[0] for answer in named for hit in answer}
    # "new" and the rewritten last document exist only in chunks written after the matrix.
    assert {"new", f"doc-{len(TOPICS) - 1}"} <= found
    assert "doc-2" not in found


async def test_the_store_keeps_to_its_bounds(app: Starlette) -> None:
    runtime, principal = await setup_corpus(app)

    async def chunk_ids() -> np.ndarray:
        async with runtime.db.read() as session:
            return await run_on_connection(
                session, lambda conn: read_all_bits(conn, principal.user_id).ids
            )

    ids = await chunk_ids()
    one_user = len(ids) * (DIMS * 4 + PER_CHUNK_OVERHEAD)

    async def current(store: ResidentStore, user_id: int) -> Any:
        async with runtime.db.read() as session:
            return await run_on_connection(session, lambda conn: store.current(conn, user_id, ids))

    assert await current(ResidentStore(0), principal.user_id) is None
    assert await current(ResidentStore(one_user - 1), principal.user_id) is None
    store = ResidentStore(one_user)
    kept = await current(store, principal.user_id)
    assert kept is not None and store.bytes == kept.nbytes <= one_user
    assert np.array_equal(kept.ids, ids)
    assert (await current(store, principal.user_id)) is kept  # served, not rebuilt
    # Another user (the same chunks, as far as the store knows) pushes the first one out.
    await current(store, principal.user_id + 1)
    assert len(store) == 1 and store.bytes <= one_user
    assert (await current(store, principal.user_id)) is not kept
    assert store.builds == 3
    # Users above MAX_CHUNKS are never kept, whatever the budget.
    big = ResidentStore(1 << 40)
    original = resident_module.MAX_CHUNKS
    try:
        resident_module.MAX_CHUNKS = len(ids) - 1
        assert await current(big, principal.user_id) is None
    finally:
        resident_module.MAX_CHUNKS = original
    # A kept matrix finds rows by chunk id, unknown ids left out.
    rows = kept.rows_of([int(ids[3]), 10**12, int(ids[0])])
    assert np.array_equal(kept.ids[rows], [ids[3], ids[0]])
