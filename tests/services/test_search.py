"""The search service: the safe FTS expression, rank fusion, and the strategies a scope or a
large account takes (exact scoring, KNN then filter, growing KNN passes), checked to agree.

The strategies switch on sizes (thousands of chunks) that are slow to build with the real model,
so these tests shrink the thresholds with monkeypatch and compare the paths on a small corpus."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette

from app.fts import MAX_QUERY_TERMS, match_expression
from app.models import KnowledgeDocItem, SearchRequest, SearchResponse
from app.services import accounts, knowledge
from app.services import search as search_service
from app.services.core import Core, Principal
from tests.conftest import new_key

pytestmark = pytest.mark.anyio


# --- the FTS expression --------------------------------------------------------------------


def test_match_expression_quotes_and_ors_every_word() -> None:
    assert match_expression("Hello, world!") == '"hello" OR "world"'
    assert match_expression('NEAR(a b) AND "c" OR d* col:e ^f') == (
        '"near" OR "a" OR "b" OR "and" OR "c" OR "or" OR "d" OR "col" OR "e" OR "f"'
    )
    assert match_expression("snake_case x") == '"snake" OR "case" OR "x"'
    assert match_expression("Straße ÜBER 42") == '"straße" OR "über" OR "42"'


def test_match_expression_drops_repeats_and_caps_terms() -> None:
    assert match_expression("a A a b") == '"a" OR "b"'
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


async def test_large_scope_knn_then_filter_agrees_with_exact(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, principal = await _setup(app)
    scopes: list[dict[str, Any]] = [
        {"metadata": {"even": False}},
        {"external_ids": ["doc-0", "doc-1", "doc-5"]},
    ]
    for scope in scopes:
        for query in QUERIES:
            body = {"query": query, "k": 3, "mode": "semantic", **scope}
            exact = await _search(core, principal, **body)
            with monkeypatch.context() as m:
                m.setattr(search_service, "EXACT_MAX", 0)
                m.setattr(search_service, "KNN_SCOPE_SHARE", 0.0)
                knn = await _search(core, principal, **body)
                # KNN too shallow for the scope: falls back to exact scoring.
                m.setattr(search_service, "MAX_K", 2)
                fallback = await _search(core, principal, **body)
            assert _pairs(knn) == _pairs(exact) == _pairs(fallback)
            assert len(exact.results) == 3


async def test_unscoped_knn_grows_until_it_has_enough_documents(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, principal = await _setup(app)
    grew = 0
    passes: list[int] = []
    nearest = core.vectors.nearest

    async def spy(session: Any, **kwargs: Any) -> list[tuple[int, float]]:
        passes.append(kwargs["k"])
        return await nearest(session, **kwargs)

    for query in QUERIES:
        body = {"query": query, "k": 6, "mode": "semantic"}
        exact = await _search(core, principal, external_ids=[f"doc-{i}" for i in range(8)], **body)
        with monkeypatch.context() as m:
            # The first pass fetches 6 chunks: the long documents fill it with repeats.
            m.setattr(search_service, "KNN_MIN", 1)
            m.setattr(search_service, "KNN_CHUNKS_PER_DOC", 1)
            passes.clear()
            m.setattr(core.vectors, "nearest", spy)
            grown = await _search(core, principal, **body)
        assert passes[0] == 6
        assert _pairs(grown) == _pairs(exact)
        assert len(grown.results) == 6
        grew += len(passes) > 1
    assert grew  # at least one query needed a second, deeper pass


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
