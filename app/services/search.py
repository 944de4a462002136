"""Search over a user's knowledge (API.md section 9): semantic, keyword, and hybrid.

Every mode ranks documents, not chunks: chunks are scored and a document counts once, with its
best chunk (the one shown in the hit).

- `semantic`: cosine similarity of the query's embedding to the chunk vectors.
- `keyword`: BM25 over the same chunks (title and text), the query's words OR-ed.
- `hybrid`: reciprocal rank fusion (k = 60) of the two document rankings, `FUSION_DEPTH` deep.

Scopes (a persona, a list of external_ids, metadata equality) are applied inside the index's
queries, not to a global top-k afterwards, so a persona with 3 documents among 100,000 still gets
its best 3. How each engine ranks is the index's business (app/index); this module only embeds
the query, fuses and shows the hits. Everything reads one snapshot, so a search never sees half
of a concurrent write.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.errors import PersonaNotFound
from app.index import Ranked, Scope
from app.models import (
    Chunk,
    KnowledgeDoc,
    Persona,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from app.services.core import Core, Principal

log = logging.getLogger(__name__)

#: The constant of reciprocal rank fusion: score = sum of 1 / (RRF_K + rank).
RRF_K = 60
#: Documents taken from each ranking into the fusion (the reference setup fuses the top 100).
FUSION_DEPTH = 100


async def search(*, core: Core, principal: Principal, request: SearchRequest) -> SearchResponse:
    """The user's documents best matching `request.query`, best first, one hit per document."""
    started = time.perf_counter()
    user_id = principal.user_id
    depth = max(FUSION_DEPTH, request.k) if request.mode == "hybrid" else request.k
    # Embed before taking a database connection: the embedding queue may be busy with a large
    # upsert for a while, and a search waiting there must not hold one of the pool's readers.
    vector = None
    if request.mode != "keyword":
        vector = (await core.embedder.embed([request.query]))[0]
    scope = Scope(
        user_id=user_id,
        persona_id=request.persona_id,
        external_ids=request.external_ids,
        metadata=request.metadata or {},
    )
    async with core.db.read() as session:
        if request.persona_id is not None:
            await _check_persona(session, user_id, request.persona_id)
        within = await core.index.restrict(session, scope)
        semantic: list[Ranked] = []
        keyword: list[Ranked] = []
        if within is None or not within.empty:
            if vector is not None:
                semantic = await core.index.semantic(
                    session, user_id=user_id, vector=vector, depth=depth, within=within
                )
            if request.mode != "semantic":
                keyword = await core.index.keyword(
                    session, user_id=user_id, query=request.query, depth=depth, within=within
                )
        # One of the two lists is empty unless the mode is hybrid.
        ranked = _fuse(semantic, keyword) if request.mode == "hybrid" else semantic + keyword
        hits = await _hits(session, ranked[: request.k])
    if request.min_score is not None:
        hits = [hit for hit in hits if hit.score >= request.min_score]
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    return SearchResponse(results=hits, mode=request.mode, took_ms=took_ms)


# --- scope ---------------------------------------------------------------------------------


async def _check_persona(session: AsyncSession, user_id: int, persona_id: str) -> None:
    found = (
        await session.execute(
            select(Persona.id).where(Persona.id == persona_id, Persona.user_id == user_id)
        )
    ).first()
    if found is None:
        raise PersonaNotFound(f"No persona {persona_id!r}.")


def _fuse(*rankings: list[Ranked]) -> list[Ranked]:
    """Reciprocal rank fusion. A document's chunk is the one of the ranking that placed it
    highest (the first ranking on a tie)."""
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}  # doc -> (best rank, its chunk)
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + 1.0 / (RRF_K + rank)
            if hit.doc_id not in best or rank < best[hit.doc_id][0]:
                best[hit.doc_id] = (rank, hit.chunk_id)
    # Last tie-break: the chunk id, which follows upload order, so the same data uploaded the
    # same way ranks the same (document ids are random).
    order = sorted(scores, key=lambda d: (-scores[d], best[d][0], best[d][1]))
    return [Ranked(d, best[d][1], scores[d]) for d in order]


# --- the answer ----------------------------------------------------------------------------


async def _hits(session: AsyncSession, ranked: list[Ranked]) -> list[SearchHit]:
    if not ranked:
        return []
    # Only the columns a hit shows: not the document's content nor the chunk's vector.
    rows = await session.execute(
        sa_select(
            col(Chunk.id),
            col(Chunk.chunk_index),
            col(Chunk.text),
            col(KnowledgeDoc.external_id),
            col(KnowledgeDoc.title),
            col(KnowledgeDoc.metadata_),
        )
        .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(Chunk.doc_id))
        .where(col(Chunk.id).in_([r.chunk_id for r in ranked]))
    )
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
                chunk_index=chunk_index,
                text=chunk_text,
                metadata=metadata,
            )
        )
    return hits
