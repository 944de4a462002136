"""The search service on both engines: rank fusion, and the strategies a scope or a large
account takes (exact scoring, a coarse pass then exact scoring, deeper passes), checked to agree.

The strategies switch on sizes (thousands of chunks) that are slow to build with the real model,
so these tests shrink the thresholds with monkeypatch and compare the paths on a small corpus."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette

from app.index import Ranked, sqlite_keywords
from app.index import postgres as pg_index
from app.index import sqlite as sqlite_index
from app.models import KnowledgeDocItem, SearchRequest, SearchResponse
from app.services import accounts, knowledge
from app.services import search as search_service
from app.services.core import Core, Principal
from tests.conftest import new_key

pytestmark = pytest.mark.anyio


def index_module(core: Core) -> ModuleType:
    """The engine's index module, whose thresholds the tests shrink."""
    return sqlite_index if core.db.dialect == "sqlite" else pg_index


# --- fusion --------------------------------------------------------------------------------


def _r(doc: str, chunk: int = 0, score: float = 0.0) -> Any:
    return Ranked(doc, chunk, score)


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


def long_text(topic: str, n: int) -> str:
    return " ".join(f"Note {i}: {topic}, case {i} of the series." for i in range(n))


async def setup_corpus(app: Starlette) -> tuple[Core, Principal]:
    core: Core = app.state.core
    key = await new_key(app, plan="unlimited")
    principal = await accounts.authenticate(core=core, api_key=key)
    items = [
        KnowledgeDocItem(
            external_id=f"doc-{i}",
            title=None,
            content=long_text(topic, 40 if i % 2 else 1),
            metadata={"even": i % 2 == 0},
        )
        for i, topic in enumerate(TOPICS)
    ]
    await knowledge.upsert_many(core=core, principal=principal, items=items)
    return core, principal


async def run_search(core: Core, principal: Principal, **body: Any) -> SearchResponse:
    request = SearchRequest.model_validate(body)
    return await search_service.search(core=core, principal=principal, request=request)


def pairs(response: SearchResponse) -> list[tuple[str, int, float]]:
    return [(h.external_id, h.chunk_index, round(h.score, 5)) for h in response.results]


QUERIES = ["rocket propulsion", "bread dough", "animal behaviour", "money"]


async def test_multi_chunk_documents_exist(app: Starlette) -> None:
    core, principal = await setup_corpus(app)
    doc = await knowledge.get_doc(core=core, principal=principal, external_id="doc-1")
    assert doc.chunk_count >= 4


async def test_two_stage_ranking_agrees_with_exact(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, principal = await setup_corpus(app)
    scopes: list[dict[str, Any]] = [
        {},
        {"metadata": {"even": False}},
        {"external_ids": ["doc-0", "doc-1", "doc-5"]},
    ]
    for scope in scopes:
        for query in QUERIES:
            body = {"query": query, "k": 3, "mode": "semantic", **scope}
            exact = await run_search(core, principal, **body)  # scopes below 400 chunks: exact
            if not scope:
                everything = [f"doc-{i}" for i in range(len(TOPICS))]
                exact = await run_search(core, principal, **body, external_ids=everything)
            with monkeypatch.context() as m:
                m.setattr(index_module(core), "CANDIDATES_MIN", 0)
                m.setattr(index_module(core), "CANDIDATES_PER_DOC", 8)
                two_stage = await run_search(core, principal, **body)
            assert pairs(two_stage) == pairs(exact)
            assert len(exact.results) == 3


async def test_keyword_deepens_until_it_has_enough_documents(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unscoped keyword search reads the best chunks only, deeper while they hold too few
    documents; scoped, it filters every match. Both give the same ranking."""
    core, principal = await setup_corpus(app)
    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    queries = ["bread chess money", "magnetic field printing press", "puppy magma budget"]
    for query in queries:
        body = {"query": query, "k": 2, "mode": "keyword"}
        scoped = await run_search(core, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            m.setattr(sqlite_keywords, "CHUNKS_PER_DOC", 1)
            shallow = await run_search(core, principal, **body)
        assert pairs(shallow) == pairs(scoped)
        assert len(scoped.results) == 2


async def test_hybrid_fuses_the_two_modes(app: Starlette) -> None:
    core, principal = await setup_corpus(app)
    for query in QUERIES:
        hybrid = await run_search(core, principal, query=query, k=8)
        semantic = await run_search(core, principal, query=query, k=8, mode="semantic")
        keyword = await run_search(core, principal, query=query, k=8, mode="keyword")
        k = search_service.RRF_K
        expected: dict[str, float] = {}
        for ranking in (semantic, keyword):
            for rank, hit in enumerate(ranking.results, start=1):
                expected[hit.external_id] = expected.get(hit.external_id, 0) + 1 / (k + rank)
        assert {h.external_id: h.score for h in hybrid.results} == pytest.approx(expected)


async def test_a_shallow_first_pass_deepens_to_the_exact_ranking(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, principal = await setup_corpus(app)
    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    for query in QUERIES:
        body = {"query": query, "k": 6, "mode": "semantic"}
        exact = await run_search(core, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            # The first pass keeps 6 chunks: the long documents fill it with repeats.
            m.setattr(index_module(core), "CANDIDATES_MIN", 0)
            m.setattr(index_module(core), "CANDIDATES_PER_DOC", 1)
            grown = await run_search(core, principal, **body)
        # The same documents; a shallow pass may show a document's second-best chunk.
        assert [h.external_id for h in grown.results] == [h.external_id for h in exact.results]
        assert len(grown.results) == 6
