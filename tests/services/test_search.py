"""The search service: the safe FTS expression, rank fusion, and the strategies a scope or a
large account takes (exact scoring, a coarse bit-vector pass then exact rescoring, deeper passes),
checked to agree; and the bit scan checked against sqlite-vec's own quantizer and KNN.

The strategies switch on sizes (thousands of chunks) that are slow to build with the real model,
so these tests shrink the thresholds with monkeypatch and compare the paths on a small corpus."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlmodel import select
from starlette.applications import Starlette

from app import fts
from app.embedding import DIMS
from app.fts import MAX_QUERY_TERMS, match_expression
from app.models import Chunk, KnowledgeDocItem, SearchRequest, SearchResponse
from app.services import accounts, knowledge
from app.services import search as search_service
from app.services.core import Core, Principal
from app.vectors import quantize, to_blob
from tests.conftest import new_key

pytestmark = pytest.mark.anyio


# --- the FTS expression --------------------------------------------------------------------


def test_match_expression_quotes_and_ors_every_word() -> None:
    assert match_expression("Hello, world!") == '"hello" OR "world"'
    assert match_expression('NEAR(x y) AND "c" OR d* col:e ^f') == (
        '"near" OR "x" OR "y" OR "c" OR "d" OR "col" OR "e" OR "f"'
    )
    assert match_expression("snake_case x") == '"snake" OR "case" OR "x"'
    assert match_expression("Straße ÜBER 42") == '"straße" OR "über" OR "42"'


def test_match_expression_leaves_out_stopwords_unless_they_are_all() -> None:
    assert match_expression("What is the flow of a gas in the nozzle?") == (
        '"flow" OR "gas" OR "nozzle"'
    )
    assert match_expression("The Who") == '"the" OR "who"'
    assert match_expression("OR OR AND") == '"or" OR "and"'


def test_match_expression_drops_repeats_and_caps_terms() -> None:
    assert match_expression("x X x b") == '"x" OR "b"'
    many = match_expression(" ".join(f"w{i}" for i in range(200)))
    assert many is not None and many.count(" OR ") == MAX_QUERY_TERMS - 1


@pytest.mark.parametrize("query", ["", "   ", "?!", '"" ()', "___", "*:^"])
def test_match_expression_without_words_is_none(query: str) -> None:
    assert match_expression(query) is None


# --- fusion --------------------------------------------------------------------------------


def _r(doc: str, chunk: int = 0, score: float = 0.0) -> Any:
    return search_service._Ranked(doc, chunk, score)


def test_rrf_sums_reciprocal_ranks() -> None:
    semantic = [_r("a", 1), _r("b", 2), _r("c", 3)]
    keyword = [_r("c", 30), _r("d", 40), _r("a", 10)]
    fused = search_service._fuse(semantic, keyword)
    k = search_service.RRF_K
    scores = {r.doc_id: r.score for r in fused}
    assert scores == pytest.approx(
        {
            "a": 1 / (k + 1) + 1 / (k + 3),
            "c": 1 / (k + 3) + 1 / (k + 1),
            "b": 1 / (k + 2),
            "d": 1 / (k + 2),
        }
    )
    # Equal scores: the better single rank first, then the document id.
    assert [r.doc_id for r in fused] == ["a", "c", "b", "d"]
    # A document's chunk is the one of the ranking that placed it highest.
    assert {r.doc_id: r.chunk_id for r in fused} == {"a": 1, "c": 30, "b": 2, "d": 40}


def test_rrf_of_one_ranking_keeps_its_order() -> None:
    assert [r.doc_id for r in search_service._fuse([_r("x"), _r("y")], [])] == ["x", "y"]
    assert search_service._fuse([], []) == []


# --- strategies ----------------------------------------------------------------------------

TOPICS = [
    "how jet engines produce thrust by burning fuel",
    "baking sourdough bread with a starter culture",
    "the rules of chess and how pieces move",
    "migrating birds navigate using the magnetic field",
    "saving money with a monthly household budget",
    "volcanoes erupt when magma reaches the surface",
    "training a puppy to sit and stay",
    "the history of the printing press in Europe",
]


def _long(topic: str, n: int) -> str:
    return " ".join(f"Note {i}: {topic}, case {i} of the series." for i in range(n))


async def _setup(app: Starlette) -> tuple[Core, Principal]:
    core: Core = app.state.core
    key = await new_key(app, plan="unlimited")
    principal = await accounts.authenticate(core=core, api_key=key)
    items = [
        KnowledgeDocItem(
            external_id=f"doc-{i}",
            title=None,
            content=_long(topic, 40 if i % 2 else 1),
            metadata={"even": i % 2 == 0},
        )
        for i, topic in enumerate(TOPICS)
    ]
    await knowledge.upsert_many(core=core, principal=principal, items=items)
    return core, principal


async def _search(core: Core, principal: Principal, **body: Any) -> SearchResponse:
    request = SearchRequest.model_validate(body)
    return await search_service.search(core=core, principal=principal, request=request)


def _pairs(response: SearchResponse) -> list[tuple[str, int, float]]:
    return [(h.external_id, h.chunk_index, round(h.score, 5)) for h in response.results]


QUERIES = ["rocket propulsion", "bread dough", "animal behaviour", "money"]


async def test_multi_chunk_documents_exist(app: Starlette) -> None:
    core, principal = await _setup(app)
    doc = await knowledge.get_doc(core=core, principal=principal, external_id="doc-1")
    assert doc.chunk_count >= 4


async def test_quantize_matches_sqlite_vec(app: Starlette) -> None:
    core: Core = app.state.core
    vectors = np.random.default_rng(3).standard_normal((5, DIMS)).astype(np.float32)
    vectors[0, :10] = 0.0  # zero is not positive
    async with core.db.read() as session:
        for vector, bits in zip(vectors, quantize(vectors), strict=True):
            theirs = (
                await session.execute(
                    text("SELECT vec_quantize_binary(:v)"), {"v": to_blob(vector)}
                )
            ).scalar_one()
            assert bits.tobytes() == theirs


async def test_the_bit_scan_agrees_with_vec0_knn(app: Starlette) -> None:
    """`VectorIndex.candidates` reads vec0's blocks itself: same distances as vec0's own KNN
    (this fails first should an upgrade of sqlite-vec change its storage layout)."""
    core, principal = await _setup(app)
    other = await accounts.authenticate(
        core=core, api_key=await new_key(app, email="o@example.com", plan="unlimited")
    )
    await knowledge.upsert_many(
        core=core,
        principal=other,
        items=[KnowledgeDocItem(external_id="x", title=None, content=_long(TOPICS[0], 20))],
    )
    await knowledge.delete_doc(core=core, principal=principal, external_id="doc-3")
    vector = (await core.embedder.embed(["rocket propulsion"]))[0]
    async with core.db.read() as session:
        total = await core.vectors.count(session, user_id=principal.user_id)
        ids, eligible = await core.vectors.candidates(
            session, user_id=principal.user_id, vector=vector, n=total
        )
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
        some, some_eligible = await core.vectors.candidates(
            session, user_id=principal.user_id, vector=vector, n=5, within=within
        )
    assert eligible == total == len(user_chunks) and set(ids) == user_chunks
    assert ids == [c for _, c in theirs]
    assert some_eligible == len(within)
    assert some == [c for _, c in theirs if c in set(within.tolist())][:5]


async def test_two_stage_ranking_agrees_with_exact(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, principal = await _setup(app)
    scopes: list[dict[str, Any]] = [
        {},
        {"metadata": {"even": False}},
        {"external_ids": ["doc-0", "doc-1", "doc-5"]},
    ]
    for scope in scopes:
        for query in QUERIES:
            body = {"query": query, "k": 3, "mode": "semantic", **scope}
            exact = await _search(core, principal, **body)  # scopes below 400 chunks: exact
            if not scope:
                everything = [f"doc-{i}" for i in range(len(TOPICS))]
                exact = await _search(core, principal, **body, external_ids=everything)
            with monkeypatch.context() as m:
                m.setattr(search_service, "CANDIDATES_MIN", 0)
                m.setattr(search_service, "CANDIDATES_PER_DOC", 8)
                two_stage = await _search(core, principal, **body)
            assert _pairs(two_stage) == _pairs(exact)
            assert len(exact.results) == 3


async def test_the_coarse_pass_grows_until_it_has_enough_documents(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, principal = await _setup(app)
    grew = 0
    passes: list[int] = []
    candidates = core.vectors.candidates

    async def spy(session: Any, **kwargs: Any) -> tuple[list[int], int]:
        passes.append(kwargs["n"])
        return await candidates(session, **kwargs)

    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    for query in QUERIES:
        body = {"query": query, "k": 6, "mode": "semantic"}
        exact = await _search(core, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            # The first pass keeps 6 chunks: the long documents fill it with repeats.
            m.setattr(search_service, "CANDIDATES_MIN", 0)
            m.setattr(search_service, "CANDIDATES_PER_DOC", 1)
            passes.clear()
            m.setattr(core.vectors, "candidates", spy)
            grown = await _search(core, principal, **body)
        assert passes[0] == 6
        # The same documents; a shallow pass may show a document's second-best chunk.
        assert [h.external_id for h in grown.results] == [h.external_id for h in exact.results]
        assert len(grown.results) == 6
        grew += len(passes) > 1
    assert grew  # at least one query needed a second, deeper pass


async def test_keyword_deepens_until_it_has_enough_documents(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unscoped keyword search reads the best chunks only, deeper while they hold too few
    documents; scoped, it filters every match. Both give the same ranking."""
    core, principal = await _setup(app)
    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    queries = ["bread chess money", "magnetic field printing press", "puppy magma budget"]
    for query in queries:
        body = {"query": query, "k": 2, "mode": "keyword"}
        scoped = await _search(core, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            m.setattr(fts, "CHUNKS_PER_DOC", 1)
            shallow = await _search(core, principal, **body)
        assert _pairs(shallow) == _pairs(scoped)
        assert len(scoped.results) == 2


async def test_hybrid_fuses_the_two_modes(app: Starlette) -> None:
    core, principal = await _setup(app)
    for query in QUERIES:
        hybrid = await _search(core, principal, query=query, k=8)
        semantic = await _search(core, principal, query=query, k=8, mode="semantic")
        keyword = await _search(core, principal, query=query, k=8, mode="keyword")
        k = search_service.RRF_K
        expected: dict[str, float] = {}
        for ranking in (semantic, keyword):
            for rank, hit in enumerate(ranking.results, start=1):
                expected[hit.external_id] = expected.get(hit.external_id, 0) + 1 / (k + rank)
        assert {h.external_id: h.score for h in hybrid.results} == pytest.approx(expected)
