"""Search over a user's knowledge (API.md section 9): semantic, keyword, and hybrid.

Every mode ranks documents, not chunks: chunks are scored and a document counts once, with its
best chunk (the one shown in the hit).

- `semantic`: cosine similarity of the query's embedding to the chunk vectors (sqlite-vec).
- `keyword`: FTS5 BM25 over the same chunks (title and text columns), the query's words OR-ed.
- `hybrid`: reciprocal rank fusion (k = 60) of the two document rankings, `FUSION_DEPTH` deep.

Scopes (a persona, a list of external_ids, metadata equality) are applied inside the query, not
to a global top-k afterwards, so a persona with 3 documents among 100,000 still gets its best 3.
A scope is first resolved to its candidate chunks with SQL.

Semantic ranking is two-stage (see app/vectors.py): a coarse pass ranks the user's chunks (or the
scope's) by Hamming distance of their sign bits and keeps `_candidates(depth)` of them; those
are scored exactly with their float vectors. A scope no larger than that is scored exactly at
once. The coarse pass is approximate; on Cranfield the two-stage ranking scores the same nDCG@10
as exact scoring (scripts/eval_cranfield.py), and `CANDIDATES_MIN` keeps oversampling high where
it is cheap. Keyword search runs FTS5 within the user's rows (see `KeywordIndex`).
Everything reads one snapshot, so a search never sees half of a concurrent write.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.errors import PersonaNotFound
from app.fts import match_expression
from app.models import (
    Chunk,
    KnowledgeDoc,
    Persona,
    PersonaKnowledge,
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
#: The coarse pass keeps this many chunks per wanted document, at least `CANDIDATES_MIN`, for
#: exact scoring. Rescoring costs ~3 us a chunk (one rowid lookup and a cosine in SQL); the
#: coarse pass costs the same (~5 ms per 100,000 chunks) whatever it keeps.
CANDIDATES_PER_DOC = 8
CANDIDATES_MIN = 400


def _candidates(depth: int) -> int:
    return max(CANDIDATES_MIN, CANDIDATES_PER_DOC * depth)


#: A scope: the ids of its chunks, sorted.
Scope = np.ndarray


@dataclass(frozen=True, slots=True)
class _Ranked:
    doc_id: str
    chunk_id: int
    score: float


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
    async with core.db.read() as session:
        if request.persona_id is not None:
            await _check_persona(session, user_id, request.persona_id)
        scope = await _scope(session, user_id, request)
        semantic: list[_Ranked] = []
        keyword: list[_Ranked] = []
        if scope is None or len(scope):
            if vector is not None:
                semantic = await _semantic(core, session, user_id, vector, depth, scope)
            match = match_expression(request.query) if request.mode != "semantic" else None
            if match is not None:
                keyword = await _keyword(core, session, user_id, match, depth, scope)
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


def _metadata_condition(i: int, key: str, value: object) -> tuple[str, dict[str, object]]:
    """SQL that holds when the document's metadata has `key` equal to the JSON `value`.

    `json_each` (not a JSON path) so that any key is safe, whatever characters it holds; the
    JSON type is compared too, so `true` never equals `1` nor `"1"` equal `1`."""
    base = f"SELECT 1 FROM json_each(knowledge_docs.metadata) AS m WHERE m.key = :mk{i}"
    params: dict[str, object] = {f"mk{i}": key}
    if value is None:
        cond = "m.type = 'null'"
    elif isinstance(value, bool):
        cond = "m.type = 'true'" if value else "m.type = 'false'"
    elif isinstance(value, int | float):
        cond = f"m.type IN ('integer', 'real') AND m.atom = :mv{i}"
        params[f"mv{i}"] = value
    elif isinstance(value, str):
        cond = f"m.type = 'text' AND m.atom = :mv{i}"
        params[f"mv{i}"] = value
    else:  # an object or array: compared as minified JSON text (object keys in stored order)
        kind = "object" if isinstance(value, dict) else "array"
        cond = f"m.type = '{kind}' AND m.value = json(:mv{i})"
        params[f"mv{i}"] = json.dumps(value)
    return f"EXISTS ({base} AND {cond})", params


async def _scope(session: AsyncSession, user_id: int, request: SearchRequest) -> Scope | None:
    """The chunk ids of the request's scopes, intersected, sorted; None when the request names
    no scope (every document of the user). The ids come back as one comma-separated string:
    a quarter of 100,000 chunks took ~67 ms as (chunk, doc) rows through the driver, ~30 ms so
    (most of it the SQL: the metadata test per document and the join to its chunks)."""
    if request.persona_id is None and request.external_ids is None and not request.metadata:
        return None
    if request.external_ids is not None and not request.external_ids:
        return np.zeros(0, dtype=np.int64)
    query = (
        select(func.group_concat(Chunk.id))
        .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(Chunk.doc_id))
        .where(KnowledgeDoc.user_id == user_id)
    )
    if request.persona_id is not None:
        query = query.join(
            PersonaKnowledge, col(PersonaKnowledge.doc_id) == col(KnowledgeDoc.id)
        ).where(PersonaKnowledge.persona_id == request.persona_id)
    if request.external_ids is not None:
        query = query.where(col(KnowledgeDoc.external_id).in_(request.external_ids))
    for i, (key, value) in enumerate((request.metadata or {}).items()):
        sql, params = _metadata_condition(i, key, value)
        query = query.where(text(sql).bindparams(**params))
    ids = (await session.execute(query)).scalar_one()
    if not ids:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.array(ids.split(","), dtype=np.int64))


# --- the two rankings ----------------------------------------------------------------------


def _collapse(scored: list[tuple[int, str, float]], depth: int) -> list[_Ranked]:
    """(chunk, doc, distance) triples -> documents by their nearest chunk, nearest first."""
    out: list[_Ranked] = []
    seen: set[str] = set()
    for chunk_id, doc, distance in sorted(scored, key=lambda p: (p[2], p[0])):
        if doc in seen:
            continue
        seen.add(doc)
        out.append(_Ranked(doc, chunk_id, 1.0 - distance))
        if len(out) == depth:
            break
    return out


async def _semantic(
    core: Core,
    session: AsyncSession,
    user_id: int,
    vector: np.ndarray,
    depth: int,
    scope: Scope | None,
) -> list[_Ranked]:
    n = _candidates(depth)
    if scope is not None and len(scope) <= n:  # no dearer than rescoring: exact
        return _collapse(
            await core.vectors.nearest_per_doc(
                session, vector=vector, chunk_ids=scope.tolist(), limit=depth
            ),
            depth,
        )
    while True:
        ids, eligible = await core.vectors.candidates(
            session, user_id=user_id, vector=vector, n=n, within=scope
        )
        ranked = _collapse(
            await core.vectors.nearest_per_doc(session, vector=vector, chunk_ids=ids, limit=depth),
            depth,
        )
        # Too few documents: their chunks crowd the candidates (documents of many chunks).
        if len(ranked) >= depth or len(ids) >= eligible:
            return ranked
        n *= 4


async def _keyword(
    core: Core,
    session: AsyncSession,
    user_id: int,
    match: str,
    depth: int,
    scope: Scope | None,
) -> list[_Ranked]:
    try:
        rows = await core.keywords.best_per_doc(
            session,
            user_id=user_id,
            match=match,
            limit=depth,
            chunk_ids=None if scope is None else scope.tolist(),
        )
    except OperationalError as exc:
        # `match_expression` quotes every word, so this is not expected; should FTS5 still
        # refuse an expression, the search answers without keyword hits rather than a 500.
        if "fts5" not in str(exc.orig) and "syntax" not in str(exc.orig):
            raise
        log.warning("keyword search skipped, FTS5 refused %r: %s", match, exc.orig)
        return []
    # bm25() is lower for better matches; the API's scores are higher-is-better.
    return [_Ranked(doc, chunk_id, -score) for doc, chunk_id, score in rows]


def _fuse(*rankings: list[_Ranked]) -> list[_Ranked]:
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
    return [_Ranked(d, best[d][1], scores[d]) for d in order]


# --- the answer ----------------------------------------------------------------------------


async def _hits(session: AsyncSession, ranked: list[_Ranked]) -> list[SearchHit]:
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
