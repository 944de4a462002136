"""SQLite's index internals: a query's terms, and the bit scan checked against
sqlite-vec's own quantizer and KNN (this fails first should an upgrade of sqlite-vec change its
storage layout)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import sqlean
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select
from starlette.applications import Starlette

from app.embedding.embedder import DIMS
from app.models import Chunk, KnowledgeDocItem
from app.services import accounts, knowledge
from app.services.runtime import Runtime
from app.storage.index import Ranked, sqlite_vectors
from app.storage.index import sqlite as sqlite_index
from app.storage.index.sqlite_vectors import nearest_bits, quantize, similarities, to_blob
from app.storage.index.words import MAX_QUERY_TERMS, query_terms
from app.storage.sqlite_driver import run_on_connection
from tests.conftest import new_key
from tests.services.test_search import QUERIES, TOPICS, long_text, run_search, setup_corpus

pytestmark = [pytest.mark.anyio, pytest.mark.engines("sqlite")]


# --- the query's terms ----------------------------------------------------------------------


def test_query_terms_are_every_word_folded_and_stemmed() -> None:
    assert query_terms("Hello, world!") == ["hello", "world"]
    assert query_terms('NEAR(x y) AND "c" OR d* col:e ^f') == [
        "near", "x", "y", "c", "d", "col", "e", "f"
    ]  # fmt: skip
    assert query_terms("snake_case x") == ["snake", "case", "x"]
    # Folded (case, diacritics, compatibility forms) and stemmed: `words.terms`.
    assert query_terms("Straße ÜBER 42 ﬁnding") == ["strass", "uber", "42", "find"]


def test_query_terms_leave_out_stopwords_unless_they_are_all() -> None:
    assert query_terms("What is the flow of a gas in the nozzle?") == ["flow", "ga", "nozzl"]
    assert query_terms("The Who") == ["the", "who"]
    assert query_terms("OR OR AND") == ["or", "and"]


def test_query_terms_drop_repeats_and_are_capped() -> None:
    assert query_terms("x X x b") == ["x", "b"]
    assert query_terms("connected connections") == ["connect"]  # one stem, asked once
    assert query_terms("cat's") == ["cat", "s"]  # a lone "s" stays a term (Porter: "")
    assert len(query_terms(" ".join(f"w{i}" for i in range(200)))) == MAX_QUERY_TERMS


@pytest.mark.parametrize("query", ["", "   ", "?!", '"" ()', "___", "*:^"])
def test_a_query_without_words_has_no_terms(query: str) -> None:
    assert query_terms(query) == []


def test_equal_vectors_score_equal_wherever_they_sit() -> None:
    """Exact scores are a function of the two vectors alone, not of the row a chunk takes in the
    matrix scored (copies of a text must tie, then rank by chunk id); and cosine similarity."""
    rng = np.random.default_rng(7)
    for n in range(1, 70):
        matrix = rng.standard_normal((n, DIMS)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        query = rng.standard_normal(DIMS).astype(np.float32)
        query /= np.linalg.norm(query)
        matrix[rng.permutation(n)[: min(n, 5)]] = matrix[0].copy()
        scores = similarities(matrix, query)
        copies = (matrix == matrix[0]).all(axis=1)
        assert len(set(scores[copies].tolist())) == 1, n
        assert np.allclose(scores, matrix.astype(np.float64) @ query.astype(np.float64), atol=1e-6)
    # A float64 query, or one as a row: the same float32 scores.
    assert np.array_equal(similarities(matrix, query.astype(np.float64)), scores)
    assert np.array_equal(similarities(matrix, query[None, :]), scores)


async def test_quantize_matches_sqlite_vec(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    vectors = np.random.default_rng(3).standard_normal((5, DIMS)).astype(np.float32)
    vectors[0, :10] = 0.0  # zero is not positive
    async with runtime.db.read() as session:
        for vector, bits in zip(vectors, quantize(vectors), strict=True):
            theirs = (
                await session.execute(
                    text("SELECT vec_quantize_binary(:v)"), {"v": to_blob(vector)}
                )
            ).scalar_one()
            assert bits.tobytes() == theirs


async def test_the_bit_scan_agrees_with_vec0_knn(app: Starlette) -> None:
    """The coarse pass (`read_all_bits`, `nearest_bits`) reads vec0's blocks itself: same distances
    as vec0's own KNN (this fails first should an upgrade of sqlite-vec change its layout)."""
    runtime, principal = await setup_corpus(app)
    other = await accounts.authenticate(
        runtime=runtime, api_key=await new_key(app, email="o@example.com", plan="unlimited")
    )
    await knowledge.upsert_many(
        runtime=runtime,
        principal=other,
        items=[KnowledgeDocItem(external_id="x", title=None, content=long_text(TOPICS[0], 20))],
    )
    await knowledge.delete_doc(runtime=runtime, principal=principal, external_id="doc-3")
    vector = (await runtime.embedder.embed(["rocket propulsion"]))[0]
    async with runtime.db.read() as session:
        total = await runtime.index.vectors.count(session, user_id=principal.user_id)
        ids, eligible = await coarse_pass(session, principal.user_id, vector, n=total)
        rows = await session.execute(
            text(
                "SELECT chunk_id, distance FROM chunk_vectors"
                " WHERE embedding MATCH vec_bit(:q) AND k = :k AND user_id = :u"
            ),
            {"q": quantize(vector)[0].tobytes(), "k": total, "u": principal.user_id},
        )
        theirs = sorted((int(d), int(c)) for c, d in rows)
        user_chunks = set(
            (
                await session.execute(select(Chunk.id).where(Chunk.user_id == principal.user_id))
            ).scalars()
        )
        # Restricted to a set of chunks, then cut to the best 5.
        within = np.array(sorted(user_chunks)[::2], dtype=np.int64)
        some, some_eligible = await coarse_pass(
            session, principal.user_id, vector, n=5, within=within
        )
    assert eligible == total == len(user_chunks) and set(ids) == user_chunks
    assert ids == [c for _, c in theirs]
    assert some_eligible == len(within)
    assert some == [c for _, c in theirs if c in set(within.tolist())][:5]


async def coarse_pass(
    session: AsyncSession,
    user_id: int,
    vector: np.ndarray,
    *,
    n: int,
    within: np.ndarray | None = None,
) -> tuple[list[int], int]:
    """The search's coarse pass alone, as the ranker runs it: the ids of the (at most) `n`
    chunks nearest by Hamming distance, nearest first, and how many were eligible."""

    def run(conn: sqlean.Connection) -> tuple[list[int], int]:
        bits = sqlite_vectors.read_all_bits(conn, user_id)
        if within is not None:
            bits = sqlite_vectors.restrict_bits(bits, within)[0]
        return nearest_bits(bits, vector, n).tolist(), len(bits.ids)

    return await run_on_connection(session, run)


async def test_the_coarse_pass_grows_until_it_has_enough_documents(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, principal = await setup_corpus(app)
    grew = 0
    passes: list[int] = []

    def spy(bits: sqlite_vectors.Bits, vector: np.ndarray, n: int) -> np.ndarray:
        passes.append(n)
        return sqlite_vectors.nearest_positions(bits, vector, n)

    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    for query in QUERIES:
        body = {"query": query, "k": 6, "mode": "semantic"}
        exact = await run_search(runtime, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            # The first pass keeps 6 chunks: the long documents fill it with repeats.
            m.setattr(sqlite_index, "CANDIDATES_MIN", 0)
            m.setattr(sqlite_index, "CANDIDATES_PER_DOC", 1)
            passes.clear()
            m.setattr(sqlite_index, "nearest_positions", spy)
            grown = await run_search(runtime, principal, **body)
        assert passes[0] == 6
        # The same documents; a shallow pass may show a document's second-best chunk.
        assert [h.external_id for h in grown.results] == [h.external_id for h in exact.results]
        assert len(grown.results) == 6
        grew += len(passes) > 1
    assert grew  # at least one query needed a second, deeper pass


async def test_a_pass_over_more_candidates_than_kept_ranks_the_same_in_batches(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `KEEP_MAX` candidates a pass reads their vectors a batch at a time and keeps none:
    the same documents, chunks and scores as the pass that keeps them, deepened or not, and
    the feedback vectors are still read."""
    runtime, principal = await setup_corpus(app)
    monkeypatch.setattr(sqlite_vectors, "_BATCH", 7)  # several batches over the corpus
    monkeypatch.setattr(sqlite_index, "CANDIDATES_MIN", 5)  # a first pass of 5 chunks, kept
    monkeypatch.setattr(sqlite_index, "CANDIDATES_PER_DOC", 0)

    async def rank(vector: np.ndarray, depth: int) -> tuple[list[Ranked], list[Ranked], int]:
        async with runtime.db.read() as session:
            ranker = runtime.index.ranker(session, user_id=principal.user_id, within=None)
            assert isinstance(ranker, sqlite_index.SqliteRanker)
            first = await ranker.rank(vector, depth)
            again = await ranker.rank(vector, depth)
            feedback = await ranker.vectors([r.chunk_id for r in first[:3]])
            assert len(feedback) == min(3, len(first))
            return first, again, len(ranker._vectors.rows)

    for query in QUERIES:
        vector = (await runtime.embedder.embed([query], lane="query"))[0]
        for depth in (1, 3, 6, 100):
            expected, _, _ = await rank(vector, depth)
            with monkeypatch.context() as m:
                m.setattr(sqlite_index, "KEEP_MAX", 5)
                got, again, held = await rank(vector, depth)
            assert got == again == expected, (query, depth)
            # Only the first pass's 5 and the feedback chunks were kept, not the deeper passes.
            assert held <= 5 + 3


async def test_the_bit_vectors_are_read_while_the_query_is_embedded(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search reads its bit vectors (and finds the kept matrix) beside the embedding of its
    query, not after it: here the embedding cannot finish until they are read. Once per
    search, in every mode that ranks by meaning; not at all for a scope scored whole."""
    runtime, principal = await setup_corpus(app)
    read = asyncio.Event()
    reads = 0
    read_all_bits = sqlite_index.read_all_bits

    def reading(conn: sqlean.Connection, user_id: int) -> sqlite_vectors.Bits:
        nonlocal reads
        reads += 1
        bits = read_all_bits(conn, user_id)
        core_loop.call_soon_threadsafe(read.set)
        return bits

    embed = runtime.embedder.embed

    async def embed_after_the_read(texts: Any, **kwargs: Any) -> Any:
        await asyncio.wait_for(read.wait(), timeout=10)
        return await embed(texts, **kwargs)

    core_loop = asyncio.get_running_loop()
    monkeypatch.setattr(sqlite_index, "read_all_bits", reading)
    monkeypatch.setattr(runtime.embedder, "embed", embed_after_the_read)
    for mode in ("hybrid", "semantic"):
        read.clear()
        reads = 0
        answer = await run_search(runtime, principal, query=QUERIES[0], mode=mode, k=3)
        assert answer.results and reads == 1, mode
    read.set()
    reads = 0
    await run_search(runtime, principal, query=QUERIES[0], external_ids=["doc-1"], k=3)
    assert reads == 0


@pytest.mark.parametrize("n", [0, 1, 400, 4_999, 5_000, 6_000])
def test_the_nearest_bits_are_the_first_by_distance_then_id(n: int) -> None:
    """The cut to `n` (a histogram of the distances, not a partial sort) keeps exactly the first
    `n` by (distance, id), ties at the cut included."""
    rng = np.random.default_rng(n)
    # Few distinct vectors: many chunks at each distance, so the cut falls among ties.
    distinct = rng.standard_normal((40, DIMS)).astype(np.float32)
    ids = rng.permutation(50_000)[:5_000].astype(np.int64)
    words = quantize(distinct[rng.integers(0, 40, len(ids))]).view(np.uint64)
    bits = sqlite_vectors.Bits(ids, words)
    vector = rng.standard_normal(DIMS).astype(np.float32)
    query = quantize(vector).view(np.uint64)[0]
    distance = np.bitwise_count(words ^ query).sum(axis=1)
    expected = ids[np.lexsort((ids, distance))][:n]
    assert nearest_bits(bits, vector, n).tolist() == expected.tolist()
