"""The search service on both engines: rank fusion, and the strategies a scope or a large
account takes (exact scoring, a coarse pass then exact scoring, deeper passes), checked to agree.

The strategies switch on sizes (thousands of chunks) that are slow to build with the real model,
so these tests shrink the thresholds with monkeypatch and compare the paths on a small corpus."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette

from app.models import KnowledgeDocItem, SearchRequest, SearchResponse
from app.models.json_equality import json_equal
from app.services import accounts, knowledge
from app.services import search as search_service
from app.services.runtime import Principal, Runtime
from app.storage.index import Ranked, keywords
from app.storage.index import postgres as pg_index
from app.storage.index import sqlite as sqlite_index
from tests.conftest import new_key

pytestmark = pytest.mark.anyio


def index_module(runtime: Runtime) -> ModuleType:
    """The engine's index module, whose thresholds the tests shrink."""
    return sqlite_index if runtime.db.dialect == "sqlite" else pg_index


def shallow_keyword_pass(runtime: Runtime, m: pytest.MonkeyPatch) -> None:
    """The engine's unscoped keyword search reads one best chunk per wanted document first."""
    m.setattr(keywords, "CHUNKS_PER_DOC", 1)


# --- scores and fusion ---------------------------------------------------------------------


def _s(doc: str, score: float, chunk: int = 0, kind: str = "semantic") -> search_service.Scored:
    if kind == "semantic":
        return search_service.semantic_scored(Ranked(doc, chunk, score))
    return search_service.Scored(doc, chunk, score, semantic=None, keyword=score)


def test_semantic_scores_are_cosine_within_0_and_1() -> None:
    assert search_service.semantic_scored(Ranked("a", 1, 0.62)).score == pytest.approx(0.62)
    assert search_service.semantic_scored(Ranked("a", 1, -0.3)).score == 0.0
    assert search_service.semantic_scored(Ranked("a", 1, 1.0000002)).score == 1.0


def test_keyword_scores_are_bm25_per_word_saturated() -> None:
    half = search_service.KEYWORD_HALF

    def score(bm25: float, words: int) -> float:
        return search_service.keyword_scored(Ranked("a", 1, bm25), words).score

    assert score(half, 1) == pytest.approx(0.5)
    # The same match spread over more query words is a weaker answer to the longer query.
    assert score(2 * half, 2) == pytest.approx(0.5)
    assert score(2 * half, 4) < 0.5
    values = [score(x, 3) for x in (0.0, 0.5, 3.0, 30.0, 3000.0)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] < 1.0
    hit = search_service.keyword_scored(Ranked("a", 7, 4.0), 1)
    assert (hit.chunk_id, hit.semantic, hit.keyword) == (7, None, hit.score)


def test_query_word_count_is_what_the_keyword_index_looks_for() -> None:
    assert search_service.query_word_count("how does the lamp work") == 2  # stopwords left out
    assert search_service.query_word_count("the") == 1
    assert search_service.query_word_count("?!") == 1


def test_fusion_is_a_convex_combination_of_the_two_scores() -> None:
    w = search_service.SEMANTIC_WEIGHT
    semantic = [_s("a", 0.8, 1), _s("b", 0.6, 2), _s("c", 0.3, 3)]
    keyword = [_s("c", 0.9, 30, "k"), _s("d", 0.5, 40, "k"), _s("a", 0.2, 10, "k")]
    # Both rankings cut at their depth: a document one left out gets its lowest kept score.
    fused = {s.doc_id: s for s in search_service.fuse(semantic, keyword, depth=3)}
    assert fused["a"].score == pytest.approx(w * 0.8 + (1 - w) * 0.2)
    assert fused["c"].score == pytest.approx(w * 0.3 + (1 - w) * 0.9)
    assert fused["b"].score == pytest.approx(w * 0.6 + (1 - w) * 0.2)
    assert fused["d"].score == pytest.approx(w * 0.3 + (1 - w) * 0.5)
    assert (fused["b"].semantic, fused["b"].keyword) == (0.6, None)
    assert (fused["d"].semantic, fused["d"].keyword) == (None, 0.5)
    assert (fused["a"].semantic, fused["a"].keyword) == (0.8, 0.2)
    # The chunk shown is the one of the part weighing more in the document's score.
    assert {d: s.chunk_id for d, s in fused.items()} == {"a": 1, "b": 2, "c": 30, "d": 40}
    # Rankings shorter than the depth hold every document they score: the others get 0.
    short = {s.doc_id: s for s in search_service.fuse(semantic, keyword, depth=10)}
    assert short["b"].score == pytest.approx(w * 0.6)
    assert short["d"].score == pytest.approx((1 - w) * 0.5)
    ranked = search_service.fuse(semantic, keyword, depth=10)
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)
    assert all(0.0 <= s.score <= 1.0 for s in ranked)


def test_fusion_with_no_keyword_match_is_the_weighted_semantic_score() -> None:
    """A query none of whose words is in any document: the meaning alone, weighed down, so an
    off-topic query stays below the junk threshold."""
    fused = search_service.fuse([_s("x", 0.5), _s("y", 0.4)], [], depth=100)
    w = search_service.SEMANTIC_WEIGHT
    assert [(s.doc_id, s.score, s.keyword) for s in fused] == [
        ("x", pytest.approx(w * 0.5), None),
        ("y", pytest.approx(w * 0.4), None),
    ]
    assert search_service.fuse([], [], depth=5) == []


def test_equal_scores_rank_by_chunk_id() -> None:
    fused = search_service.fuse([_s("late", 0.5, 9), _s("early", 0.5, 4)], [], depth=5)
    assert [s.doc_id for s in fused] == ["early", "late"]


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


async def setup_corpus(app: Starlette) -> tuple[Runtime, Principal]:
    runtime: Runtime = app.state.runtime
    key = await new_key(app, plan="unlimited")
    principal = await accounts.authenticate(runtime=runtime, api_key=key)
    items = [
        KnowledgeDocItem(
            external_id=f"doc-{i}",
            title=None,
            content=long_text(topic, 40 if i % 2 else 1),
            metadata={"even": i % 2 == 0},
        )
        for i, topic in enumerate(TOPICS)
    ]
    await knowledge.upsert_many(runtime=runtime, principal=principal, items=items)
    return runtime, principal


async def run_search(runtime: Runtime, principal: Principal, **body: Any) -> SearchResponse:
    request = SearchRequest.model_validate(body)
    return await search_service.search(runtime=runtime, principal=principal, request=request)


def pairs(response: SearchResponse) -> list[tuple[str, int, float]]:
    return [(h.external_id, h.chunk_index, round(h.score, 5)) for h in response.results]


QUERIES = ["rocket propulsion", "bread dough", "animal behaviour", "money"]


async def test_multi_chunk_documents_exist(app: Starlette) -> None:
    runtime, principal = await setup_corpus(app)
    doc = await knowledge.get_doc(runtime=runtime, principal=principal, external_id="doc-1")
    assert doc.chunk_count >= 4


async def test_two_stage_ranking_agrees_with_exact(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, principal = await setup_corpus(app)
    scopes: list[dict[str, Any]] = [
        {},
        {"metadata": {"even": False}},
        {"external_ids": ["doc-0", "doc-1", "doc-5"]},
    ]
    for scope in scopes:
        for query in QUERIES:
            body = {"query": query, "k": 3, "mode": "semantic", **scope}
            exact = await run_search(runtime, principal, **body)  # scopes below 400 chunks: exact
            if not scope:
                everything = [f"doc-{i}" for i in range(len(TOPICS))]
                exact = await run_search(runtime, principal, **body, external_ids=everything)
            with monkeypatch.context() as m:
                m.setattr(index_module(runtime), "CANDIDATES_MIN", 0)
                m.setattr(index_module(runtime), "CANDIDATES_PER_DOC", 8)
                two_stage = await run_search(runtime, principal, **body)
            assert pairs(two_stage) == pairs(exact)
            assert len(exact.results) == 3


async def test_keyword_deepens_until_it_has_enough_documents(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unscoped keyword search reads the best chunks only, deeper while they hold too few
    documents; scoped, it filters every match (SQLite) or reads the scope's best chunks
    (PostgreSQL, as deep as unscoped). All give the same ranking."""
    runtime, principal = await setup_corpus(app)
    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    queries = ["bread chess money", "magnetic field printing press", "puppy magma budget"]
    for query in queries:
        body = {"query": query, "k": 2, "mode": "keyword"}
        scoped = await run_search(runtime, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            shallow_keyword_pass(runtime, m)
            shallow = await run_search(runtime, principal, **body)
            shallow_scoped = await run_search(runtime, principal, external_ids=everything, **body)
        assert pairs(shallow) == pairs(scoped) == pairs(shallow_scoped)
        assert len(scoped.results) == 2


async def test_hybrid_fuses_the_two_modes(app: Starlette, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without feedback, hybrid hits carry the scores the two other modes give, combined."""
    runtime, principal = await setup_corpus(app)
    monkeypatch.setattr(search_service, "FEEDBACK_DOCS", 0)
    w = search_service.SEMANTIC_WEIGHT
    for query in [*QUERIES, "bread chess money"]:
        hybrid = await run_search(runtime, principal, query=query, k=8)
        semantic = await scores_of(runtime, principal, query=query, k=8, mode="semantic")
        keyword = await scores_of(runtime, principal, query=query, k=8, mode="keyword")
        assert len(hybrid.results) == len(semantic) == 8  # every document, both ways
        for hit in hybrid.results:
            assert hit.semantic_score == pytest.approx(semantic[hit.external_id])
            # Without any query word a document has no keyword score: 0 in the sum.
            kw = keyword.get(hit.external_id)
            assert hit.keyword_score == (None if kw is None else pytest.approx(kw))
            assert hit.score == pytest.approx(w * semantic[hit.external_id] + (1 - w) * (kw or 0))


async def test_hybrid_feedback_only_from_hits_above_the_junk_threshold(app: Starlette) -> None:
    runtime, principal = await setup_corpus(app)
    threshold = search_service.JUNK_THRESHOLD
    # On topic: the best hits pass the threshold, the query moves towards them, and the
    # semantic part is the similarity to the moved query (higher for the top hit).
    body = {"query": "baking bread with sourdough starter", "k": 3}
    hybrid = await run_search(runtime, principal, **body)
    semantic = await scores_of(runtime, principal, **body, mode="semantic")
    top = hybrid.results[0]
    assert top.external_id == "doc-1" and top.score >= threshold
    assert top.semantic_score is not None and top.semantic_score > semantic["doc-1"]
    # Off topic: nothing reaches the threshold, no feedback, the semantic parts are the
    # semantic mode's own.
    body = {"query": "chocolate cake recipe for a birthday", "k": 3}
    junk = await run_search(runtime, principal, **body)
    semantic = await scores_of(runtime, principal, **body, mode="semantic")
    assert all(h.score < threshold for h in junk.results)
    assert {h.external_id: h.semantic_score for h in junk.results} == pytest.approx(
        {h.external_id: semantic[h.external_id] for h in junk.results}
    )


async def scores_of(runtime: Runtime, principal: Principal, **body: Any) -> dict[str, float]:
    return {h.external_id: h.score for h in (await run_search(runtime, principal, **body)).results}


async def test_a_shallow_first_pass_deepens_to_the_exact_ranking(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, principal = await setup_corpus(app)
    everything = [f"doc-{i}" for i in range(len(TOPICS))]
    for query in QUERIES:
        body = {"query": query, "k": 6, "mode": "semantic"}
        exact = await run_search(runtime, principal, external_ids=everything, **body)
        with monkeypatch.context() as m:
            # The first pass keeps 6 chunks: the long documents fill it with repeats.
            m.setattr(index_module(runtime), "CANDIDATES_MIN", 0)
            m.setattr(index_module(runtime), "CANDIDATES_PER_DOC", 1)
            grown = await run_search(runtime, principal, **body)
        # The same documents; a shallow pass may show a document's second-best chunk.
        assert [h.external_id for h in grown.results] == [h.external_id for h in exact.results]
        assert len(grown.results) == 6


async def test_identical_documents_tie_in_upload_order_with_equal_scores(app: Starlette) -> None:
    """Copies of one text have the same vector, hence the same score: they rank by chunk id
    (upload order) wherever they fall among the chunks scored, in the exact pass over a scope
    (the copies last, uploaded last) and in the coarse-then-exact pass alike."""
    runtime: Runtime = app.state.runtime
    principal = await accounts.authenticate(
        runtime=runtime, api_key=await new_key(app, plan="unlimited")
    )
    copies = [f"copy-{i}" for i in range(5)]
    items = [
        KnowledgeDocItem(external_id=f"doc-{i}", title=None, content=TOPICS[i]) for i in range(2)
    ] + [KnowledgeDocItem(external_id=c, title=None, content=TOPICS[4]) for c in copies]
    await knowledge.upsert_many(runtime=runtime, principal=principal, items=items)
    everything = [item.external_id for item in items]
    for query in [*QUERIES, *TOPICS]:
        for scope in ({}, {"external_ids": everything}):
            found = await run_search(
                runtime, principal, query=query, k=10, mode="semantic", **scope
            )
            hits = [h for h in found.results if h.external_id in copies]
            assert [h.external_id for h in hits] == copies, (query, scope)
            assert len({h.score for h in hits}) == 1, (query, scope, [h.score for h in hits])


# --- the metadata filter's equality ----------------------------------------------------------

#: Stored metadata values (under the key `v`) that Python's `==`, SQL or jsonb could confuse.
FILTERED_VALUES: list[Any] = [
    True,
    1,
    1.0,
    0,
    -0.0,
    False,
    None,
    "1",
    "",
    0.5,
    10**17,
    1e17,
    2**60,
    1_152_921_504_606_847_000,  # 2**60 as the text Python writes for float(2**60)
    float(2**60),
    10**30,
    1e30,
    10**30 + 1,
    2**63 - 1,
    "\u00e9",
    "e\u0301",
    "nul \x00 inside",
    "nul \uffff0 inside",  # what PostgreSQL's rewrite makes of U+0000 (app/storage/index/postgres.py)
    "\uffff",
    "\\u0000 is not a nul",
    {"k\x00": "\x00", "k": 1},
    {"a": 1, "b": [1, 2]},
    {"b": [1.0, 2], "a": 1},
    {"a": 1, "b": [2, 1]},
    {"a": True, "b": [1, 2]},
    {"\u00e9": {"": None}},
    [1, 2],
    [1.0, 2.0],
    [True],
    {},
    [],
]


async def test_metadata_filter_is_json_equality(app: Starlette) -> None:
    """A document matches `{"v": x}` exactly when its `v` is equal to `x` as JSON
    (app/models/json_equality.py), on both engines: `true` is not `1`, `1` is `1.0`, objects
    match in any key order, arrays in order only, and numbers by their exact value however
    large."""
    runtime: Runtime = app.state.runtime
    key = await new_key(app, plan="unlimited")
    principal = await accounts.authenticate(runtime=runtime, api_key=key)
    items = [
        KnowledgeDocItem(external_id=f"v{i}", content=f"Value {i}.", metadata={"v": v, "i": i})
        for i, v in enumerate(FILTERED_VALUES)
    ] + [KnowledgeDocItem(external_id="none", content="No value.", metadata={"i": -1})]
    await knowledge.upsert_many(runtime=runtime, principal=principal, items=items)
    filters = [v for v in FILTERED_VALUES if not isinstance(v, int) or -(2**63) <= v < 2**63]
    for value in [*filters, 2.0, 1e-7, "missing"]:
        found = await run_search(
            runtime, principal, query="value", mode="semantic", k=50, metadata={"v": value}
        )
        expected = {f"v{i}" for i, v in enumerate(FILTERED_VALUES) if json_equal(v, value)}
        assert {h.external_id for h in found.results} == expected, value
    found = await run_search(runtime, principal, query="value", k=50, metadata={"v": True, "i": 0})
    assert [h.external_id for h in found.results] == ["v0"]
    # Spelled out, what the definition says for the question that started it.
    assert json_equal(1, 1.0) and not json_equal(1, True) and not json_equal(0, False)
