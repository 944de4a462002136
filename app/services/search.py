"""Search over a user's knowledge (API.md section 9): semantic, keyword, and hybrid.

Every mode ranks documents, not chunks: chunks are scored and a document counts once, with its
best chunk (the one shown in the hit).

Scores are 0 to 1, higher is better, and mean the same from one query to the next, so a caller
can keep a threshold (`min_score`, `JUNK_THRESHOLD`):

- `semantic`: the cosine similarity of the query's embedding and the best chunk's, below 0 taken
  as 0. Cosine is already absolute: unrelated text scores 0.1-0.3 with all-MiniLM-L6-v2.
- `keyword`: BM25 (title and text, the query's words OR-ed) is unbounded and grows with the
  number of query words, so it is taken per query word and saturated:
  `x / (x + KEYWORD_HALF)` with `x` = BM25 / words; `KEYWORD_HALF` of BM25 per word scores 0.5.
- `hybrid`: a convex combination, `SEMANTIC_WEIGHT` * semantic + the rest * keyword, of the two
  calibrated scores over the union of the top `FUSION_DEPTH` of each ranking. A document only one
  ranking holds gets 0 for the other when that ranking holds every document it scores (a
  document without any query word has no keyword score), else the lowest score the ranking kept
  (it cannot have scored higher, and 0 would sink a good match the cut-off left out). So a hybrid
  score is high only when both the meaning and the words agree. When some of the best
  `FEEDBACK_DOCS` reach `JUNK_THRESHOLD`, the query's vector is moved towards their chunks'
  and the semantic ranking runs again before a second fusion (pseudo-relevance feedback).

Hits carry the two parts (`semantic_score`, `keyword_score`) where the mode computed them. Why
this fusion and these constants (Cranfield and a second collection): docs/decisions.md.

Scopes (a persona, a list of external_ids, metadata equality) are applied inside the index's
queries, not to a global top-k afterwards, so a persona with 3 documents among 100,000 still gets
its best 3. How each engine ranks is the index's business (app/index); this module only embeds
the query, scores, fuses and shows the hits, so both engines answer on the same scale.
Everything reads one snapshot, so a search never sees half of a concurrent write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.errors import PersonaNotFound
from app.models import (
    KnowledgeFilter,
    Persona,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from app.models.search import SEARCH_JUNK_THRESHOLD
from app.services.runtime import Principal, Runtime
from app.storage.index import HitRow, HitRowsStep, Plan, Ranked, RankStep, Scope, VectorsStep
from app.storage.index.words import query_terms

log = logging.getLogger(__name__)

#: Documents taken from each ranking into the fusion (the reference setup fuses the top 100).
FUSION_DEPTH = 100
#: Hybrid: the weight of the semantic score; the keyword score has the rest.
SEMANTIC_WEIGHT = 0.6
#: Keyword: the BM25 per query word that scores 0.5.
KEYWORD_HALF = 2.0
#: A hybrid (or semantic) `score` below this is most likely a hit unrelated to the query.
JUNK_THRESHOLD = SEARCH_JUNK_THRESHOLD
#: Hybrid feedback: the best documents (of those at or above `JUNK_THRESHOLD`) whose chunk
#: vectors, `FEEDBACK_WEIGHT` times their mean, are added to the query's before a second
#: semantic pass.
FEEDBACK_DOCS = 5
FEEDBACK_WEIGHT = 1.5


@dataclass(slots=True)  # not frozen: a search makes hundreds, and frozen doubles the cost of each
class Scored:
    """A document as the answer shows it: its chunk, its score, and the parts it came from."""

    doc_id: str
    chunk_id: int
    score: float
    semantic: float | None
    keyword: float | None


async def search(
    *, runtime: Runtime, principal: Principal, request: SearchRequest
) -> SearchResponse:
    """The user's documents best matching `request.query`, best first, one hit per document,
    within what the caller's key or tenant token may see (`_within_restrictions`)."""
    started = time.perf_counter()
    principal.require("search")
    narrowed = await _within_restrictions(runtime, principal, request)
    if narrowed is None:
        return SearchResponse(results=[], mode=request.mode, took_ms=0)
    request = narrowed
    user_id = principal.user_id
    depth = max(FUSION_DEPTH, request.k) if request.mode == "hybrid" else request.k
    async with runtime.db.read() as session:
        rule = None
        if request.persona_id is not None:
            rule = await _persona_filter(session, user_id, request.persona_id)
        within_personas = None
        if principal.persona_ids is not None and request.persona_id is None:
            within_personas = await _persona_filters(session, user_id, principal.persona_ids)
        scope = Scope(
            user_id=user_id,
            persona_id=request.persona_id,
            persona_filter=rule,
            within_personas=within_personas,
            external_ids=request.external_ids,
            metadata=request.metadata or {},
        )
        within = await runtime.index.restrict(session, scope)
        searchable = within is None or not within.empty
        ranker = runtime.index.ranker(session, user_id=user_id, within=within)
        semantic = searchable and request.mode != "keyword"

        async def beside_the_embedding() -> list[Ranked]:
            """What needs no vector, on the database's thread while the query is embedded (in
            its own lane, never behind documents): the keyword ranking, and what the semantic
            passes read first. On 2 cores the two sides slow each other down, yet together
            they finish 1.5-2.5 ms sooner than one after the other."""
            ranked: list[Ranked] = []
            if searchable and request.mode != "semantic":
                ranked = await runtime.index.keyword(
                    session, user_id=user_id, query=request.query, depth=depth, within=within
                )
            if semantic:
                await ranker.prepare(depth)
            return ranked

        beside = asyncio.create_task(beside_the_embedding())
        try:
            vector = None
            if semantic:
                vector = (await runtime.embedder.embed([request.query], lane="query"))[0]
        finally:
            keyword: list[Ranked] = await beside
        words = query_word_count(request.query)
        keyword_part = [keyword_scored(r, words) for r in keyword]
        # The rest as one plan (the semantic passes, the fusions, the hits' rows): SQLite runs
        # it on its connection's thread in one hop.
        hits = await ranker.run(
            answer_plan(request.mode, vector, keyword_part, depth=depth, k=request.k), last=True
        )
    if request.min_score is not None:
        hits = [hit for hit in hits if hit.score >= request.min_score]
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    return SearchResponse(results=hits, mode=request.mode, took_ms=took_ms)


# --- scores --------------------------------------------------------------------------------


def query_word_count(query: str) -> int:
    """How many terms of `query` the keyword index looks for (at least 1): BM25 sums one part
    per distinct term, so two words of one stem count once."""
    return max(1, len(query_terms(query)))


def semantic_scored(ranked: Ranked) -> Scored:
    """A semantic ranking's document: its cosine similarity, below 0 taken as 0."""
    score = min(1.0, max(0.0, ranked.score))
    return Scored(ranked.doc_id, ranked.chunk_id, score, semantic=score, keyword=None)


def keyword_scored(ranked: Ranked, words: int) -> Scored:
    """A keyword ranking's document: its BM25 per query word, saturated into 0..1."""
    per_word = max(0.0, ranked.score) / words
    score = per_word / (per_word + KEYWORD_HALF)
    return Scored(ranked.doc_id, ranked.chunk_id, score, semantic=None, keyword=score)


def fuse(semantic: list[Scored], keyword: list[Scored], *, depth: int) -> list[Scored]:
    """The hybrid ranking of two calibrated rankings, each at most `depth` long.

    A document one ranking left out gets 0 for it when that ranking is shorter than `depth`
    (it holds every document with any score: a keyword ranking holds every document with a
    query word), else the lowest score that ranking kept (it cannot have scored higher). Ties
    go to the chunk id, which follows upload order, so the same data uploaded the same way
    ranks the same (document ids are random)."""
    by_keyword = {s.doc_id: s for s in keyword}
    semantic_floor = SEMANTIC_WEIGHT * _floor(semantic, depth)
    keyword_floor = (1 - SEMANTIC_WEIGHT) * _floor(keyword, depth)
    fused = []
    for sem in semantic:
        sem_part = SEMANTIC_WEIGHT * sem.score
        kw = by_keyword.pop(sem.doc_id, None)
        if kw is None:
            score, shown, kw_score = sem_part + keyword_floor, sem, None
        else:
            kw_part = (1 - SEMANTIC_WEIGHT) * kw.score
            # The chunk shown is the one of the part that weighs more in the score.
            score, shown, kw_score = (
                sem_part + kw_part,
                sem if sem_part >= kw_part else kw,
                kw.score,
            )
        fused.append(Scored(sem.doc_id, shown.chunk_id, min(1.0, score), sem.score, kw_score))
    for kw in by_keyword.values():  # those the semantic ranking left out
        score = semantic_floor + (1 - SEMANTIC_WEIGHT) * kw.score
        fused.append(Scored(kw.doc_id, kw.chunk_id, min(1.0, score), None, kw.score))
    fused.sort(key=lambda s: (-s.score, s.chunk_id))
    return fused


def answer_plan(
    mode: str, vector: np.ndarray | None, keyword: list[Scored], *, depth: int, k: int
) -> Plan[list[SearchHit]]:
    """The search's hits from its keyword ranking (scored) and its query's vector (None when
    the mode needs none, or there is nothing to search)."""
    if mode == "hybrid":
        if vector is None:
            scored = fuse([], keyword, depth=depth)
        else:
            scored = yield from hybrid_plan(vector, keyword, depth)
    elif vector is not None:  # semantic
        semantic: list[Ranked] = yield RankStep(vector, depth)
        scored = [semantic_scored(r) for r in semantic]
    else:
        scored = keyword
    shown = scored[:k]
    rows: list[HitRow] = (yield HitRowsStep([s.chunk_id for s in shown])) if shown else []
    return _hits(shown, rows)


def hybrid_plan(vector: np.ndarray, keyword: list[Scored], depth: int) -> Plan[list[Scored]]:
    """The hybrid ranking of `keyword` (scored) and the semantic ranking of `vector`: fused,
    then, when some of the best hits are confident, the semantic ranking again from the query
    moved towards them and fused anew (see the module docstring)."""
    semantic: list[Ranked] = yield RankStep(vector, depth)
    scored = fuse([semantic_scored(r) for r in semantic], keyword, depth=depth)
    # Pseudo-relevance feedback, from hits believed relevant only: Cranfield nDCG@10
    # 0.417 -> 0.440, and an off-topic query (nothing at the threshold) keeps its
    # scores, so the threshold still parts junk from hits (docs/decisions.md).
    confident = [s for s in scored[:FEEDBACK_DOCS] if s.score >= JUNK_THRESHOLD]
    if not confident:
        return scored
    vectors: list[np.ndarray] = yield VectorsStep([s.chunk_id for s in confident])
    if not vectors:
        return scored
    moved = _with_feedback(vector, vectors)
    semantic = yield RankStep(moved, depth)
    return fuse([semantic_scored(r) for r in semantic], keyword, depth=depth)


def _with_feedback(vector: np.ndarray, vectors: list[np.ndarray]) -> np.ndarray:
    """The query's vector moved towards the chunks of its confident hits (pseudo-relevance
    feedback), unit length again."""
    moved = vector + FEEDBACK_WEIGHT * np.mean(vectors, axis=0)
    norm = float(np.linalg.norm(moved))
    return (moved / norm).astype(np.float32) if norm > 0 else vector


def _floor(ranking: list[Scored], depth: int) -> float:
    return min(s.score for s in ranking) if len(ranking) >= depth else 0.0


# --- scope ---------------------------------------------------------------------------------


async def _within_restrictions(
    runtime: Runtime, principal: Principal, request: SearchRequest
) -> SearchRequest | None:
    """The request narrowed to the caller's personas and forced metadata; None when nothing can
    match (the request's own metadata contradicts the token's). A request may narrow what its
    key or token allows, never widen it."""
    update: dict[str, Any] = {}
    # A key restricted to personas, searching without `persona_id`, searches their knowledge
    # (attached or by filter): `Scope.within_personas`, set by `search`.
    if principal.persona_ids is not None and request.persona_id is not None:
        principal.require_persona(request.persona_id)
    if principal.metadata:
        merged = dict(request.metadata or {})
        for key, value in principal.metadata.items():
            if key in merged and _canonical(merged[key]) != _canonical(value):
                return None
            merged[key] = value
        update["metadata"] = merged
    return request.model_copy(update=update) if update else request


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


async def _persona_filter(
    session: AsyncSession, user_id: int, persona_id: str
) -> KnowledgeFilter | None:
    """The persona's knowledge filter, read in the search's transaction (so the scope is the
    persona's knowledge as of one moment); 404 when the persona is not the user's."""
    found = (
        await session.execute(
            select(Persona.knowledge_filter).where(
                Persona.id == persona_id, Persona.user_id == user_id
            )
        )
    ).first()
    if found is None:
        raise PersonaNotFound(f"No persona {persona_id!r}.")
    return KnowledgeFilter.from_stored(found[0])


async def _persona_filters(
    session: AsyncSession, user_id: int, persona_ids: Iterable[str]
) -> dict[str, KnowledgeFilter | None]:
    """Each of the user's personas among `persona_ids` with its knowledge filter (a persona
    deleted since the key was made is left out: its knowledge is nothing)."""
    rows = await session.execute(
        select(Persona.id, Persona.knowledge_filter).where(
            col(Persona.id).in_(sorted(persona_ids)), Persona.user_id == user_id
        )
    )
    return {pid: KnowledgeFilter.from_stored(stored) for pid, stored in rows.all()}


# --- the answer ----------------------------------------------------------------------------


def _hits(ranked: list[Scored], rows: list[HitRow]) -> list[SearchHit]:
    found = {row[0]: row for row in rows}
    hits = []
    for r in ranked:
        if r.chunk_id not in found:
            continue
        _, chunk_index, chunk_text, external_id, title, metadata = found[r.chunk_id]
        hits.append(
            SearchHit(
                external_id=external_id,
                title=title,
                score=r.score,
                semantic_score=r.semantic,
                keyword_score=r.keyword,
                chunk_index=chunk_index,
                text=chunk_text,
                metadata=_metadata(metadata),
            )
        )
    return hits


def _metadata(stored: Any) -> Any:
    """The document's metadata as stored: JSON text (SQLite; PostgreSQL through a text
    statement), or decoded already."""
    return json.loads(stored) if isinstance(stored, str | bytes) else stored
