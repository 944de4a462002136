"""Search over a user's knowledge (API.md section 9): semantic, keyword, and hybrid.

Every mode ranks documents, not chunks: chunks are scored and a document counts once, with its
best chunk (the one shown in the hit).

- `semantic`: cosine similarity of the query's embedding to the chunk vectors (sqlite-vec).
- `keyword`: FTS5 BM25 over the same chunks (title and text columns), the query's words OR-ed.
- `hybrid`: reciprocal rank fusion (k = 60) of the two document rankings, `FUSION_DEPTH` deep.

Scopes (a persona, a list of external_ids, metadata equality) are applied inside the query, not
to a global top-k afterwards, so a persona with 3 documents among 100,000 still gets its best 3.
A scope is first resolved to its candidate chunks with SQL. A small one is scored exactly, one
vector lookup per chunk; a large one (a good share of the user's chunks) takes the KNN pass over
the whole user with the largest `k` and filters it, falling back to exact scoring should that
leave too few documents. Keyword search always filters the full MATCH (see `KeywordIndex`).
Everything reads one snapshot, so a search never sees half of a concurrent write.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, text
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
from app.vectors import MAX_K

log = logging.getLogger(__name__)

#: The constant of reciprocal rank fusion: score = sum of 1 / (RRF_K + rank).
RRF_K = 60
#: Documents taken from each ranking into the fusion (the reference setup fuses the top 100).
FUSION_DEPTH = 100
#: A scope of at most this many chunks is scored exactly: a vec0 point lookup costs ~15-20 us,
#: so this stays well under the cost of one KNN pass over a large user.
EXACT_MAX = 4_000
#: A larger scope goes through KNN-then-filter only when it holds at least this share of the
#: user's chunks; then the top `MAX_K` chunks hold enough of its documents. Else: exact.
KNN_SCOPE_SHARE = 0.25
#: First KNN pass: this many chunks per wanted document (documents have several chunks, and
#: neighbouring chunks are often of one document), at least `KNN_MIN`. KNN cost grows with `k`.
KNN_CHUNKS_PER_DOC = 2
KNN_MIN = 64

ChunkDocs = dict[int, str]


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
        if scope is None or scope:
            if vector is not None:
                semantic = await _semantic(core, session, user_id, vector, depth, scope)
            match = match_expression(request.query) if request.mode != "semantic" else None
            if match is not None:
                keyword = await _keyword(core, session, user_id, match, depth, scope)
        # One of the two lists is empty unless the mode is hybrid.
        ranked = _fuse(semantic, keyword) if request.mode == "hybrid" else semantic + keyword
        hits = await _hits(session, ranked[: request.k])
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


async def _scope(session: AsyncSession, user_id: int, request: SearchRequest) -> ChunkDocs | None:
    """The candidate chunks (chunk id -> doc id) of the request's scopes, intersected; None when
    the request names no scope (every document of the user)."""
    if request.persona_id is None and request.external_ids is None and not request.metadata:
        return None
    if request.external_ids is not None and not request.external_ids:
        return {}
    query = (
        select(Chunk.id, Chunk.doc_id)
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
    rows = await session.execute(query)
    return {int(cid): str(doc) for cid, doc in rows if cid is not None}


async def _user_chunks(session: AsyncSession, user_id: int) -> int:
    total = (
        await session.execute(
            select(func.coalesce(func.sum(KnowledgeDoc.chunk_count), 0)).where(
                KnowledgeDoc.user_id == user_id
            )
        )
    ).scalar_one()
    return int(total)


# --- the two rankings ----------------------------------------------------------------------


def _collapse(pairs: list[tuple[int, float]], docs: ChunkDocs, depth: int) -> list[_Ranked]:
    """(chunk, distance) pairs -> documents by their nearest chunk, nearest first."""
    out: list[_Ranked] = []
    seen: set[str] = set()
    for chunk_id, distance in sorted(pairs, key=lambda p: (p[1], p[0])):
        doc = docs.get(chunk_id)
        if doc is None or doc in seen:
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
    scope: ChunkDocs | None,
) -> list[_Ranked]:
    if scope is not None and (
        len(scope) <= EXACT_MAX
        or len(scope) < KNN_SCOPE_SHARE * await _user_chunks(session, user_id)
    ):
        return await _exact(core, session, vector, depth, scope)
    k = MAX_K if scope is not None else min(MAX_K, max(KNN_MIN, KNN_CHUNKS_PER_DOC * depth))
    while True:
        pairs = await core.vectors.nearest(session, user_id=user_id, vector=vector, k=k)
        docs = scope if scope is not None else await _docs_of(session, [c for c, _ in pairs])
        ranked = _collapse(pairs, docs, depth)
        if len(ranked) >= depth or len(pairs) < k:  # enough, or nothing more to find
            return ranked
        if k >= MAX_K:
            if scope is not None:
                return await _exact(core, session, vector, depth, scope)
            # Unscoped: the nearest 4096 chunks fall in fewer than `depth` documents (documents
            # of 40+ chunks each); those documents are the answer.
            return ranked
        k = min(MAX_K, k * 4)


async def _exact(
    core: Core, session: AsyncSession, vector: np.ndarray, depth: int, scope: ChunkDocs
) -> list[_Ranked]:
    pairs = await core.vectors.distances(session, vector=vector, chunk_ids=list(scope))
    return _collapse(pairs, scope, depth)


async def _docs_of(session: AsyncSession, chunk_ids: list[int]) -> ChunkDocs:
    if not chunk_ids:
        return {}
    rows = await session.execute(select(Chunk.id, Chunk.doc_id).where(col(Chunk.id).in_(chunk_ids)))
    return {int(cid): str(doc) for cid, doc in rows if cid is not None}


async def _keyword(
    core: Core,
    session: AsyncSession,
    user_id: int,
    match: str,
    depth: int,
    scope: ChunkDocs | None,
) -> list[_Ranked]:
    try:
        rows = await core.keywords.best_per_doc(
            session,
            user_id=user_id,
            match=match,
            limit=depth,
            chunk_ids=None if scope is None else list(scope),
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
    order = sorted(scores, key=lambda d: (-scores[d], best[d][0], d))
    return [_Ranked(d, best[d][1], scores[d]) for d in order]


# --- the answer ----------------------------------------------------------------------------


async def _hits(session: AsyncSession, ranked: list[_Ranked]) -> list[SearchHit]:
    if not ranked:
        return []
    rows = await session.execute(
        select(Chunk, KnowledgeDoc)
        .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(Chunk.doc_id))
        .where(col(Chunk.id).in_([r.chunk_id for r in ranked]))
    )
    found = {chunk.id: (chunk, doc) for chunk, doc in rows}
    hits = []
    for r in ranked:
        if r.chunk_id not in found:
            continue
        chunk, doc = found[r.chunk_id]
        hits.append(
            SearchHit(
                external_id=doc.external_id,
                title=doc.title,
                score=r.score,
                chunk_index=chunk.chunk_index,
                text=chunk.text,
                metadata=doc.metadata_,
            )
        )
    return hits
