"""Scopes of document conditions on PostgreSQL: resolved to chunk ids once per snapshot key, and
ranked from those ids rather than from SQL conditions in every ranking statement.

A metadata scope used to be a subquery inside each ranking statement: the jsonb test on every
document of the user, then the HNSW walk (or the exact scan) filtered by its documents. At
100,000 chunks that took 113-179 ms a search against 34-42 ms unscoped, 1.7-2.1 s against
68-88 ms at a million (docs/scaling.md). Now:

- **Resolved once per key** (scope_cache.py): the scope's chunk ids, sorted, and the user's
  chunk count, kept until the key of the user's data changes. The key is read in the search's
  own snapshot: the user's `vector_versions` row (revision 0012: it changes in every transaction
  that inserts, deletes or updates any of the user's chunks, by any path and any process) and
  the user's change seq (`knowledge_feeds.last_seq`: every write of a document, its metadata
  included, takes one, app/services/feed.py). Two snapshots with the same key hold the same
  documents with the same metadata and chunks, so a write made on another server changes the
  key that the next search reads. (A metadata change made by SQL beside the app takes no seq
  and is not seen until the user's next write, as on SQLite.)
- **Ranked from the ids** (`nearest_in`): a scope of few chunks is scored exactly (its rows
  read by primary key); a larger one takes the user's own HNSW walk (the statement of an
  unscoped search) for as many more candidates as the scope is a smaller share of the user,
  filtered here against the ids. A quarter of the user costs what an unscoped search costs.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Text, cast, func, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.models import Chunk, KnowledgeDoc
from app.models.json_equality import canonical_json
from app.storage.index import Ranked, collapse
from app.storage.index.postgres_vectors import remember_version
from app.storage.index.scope import MetadataCondition, Scope

#: A scope is scored exactly (its rows read by primary key: ~6 us each at 100,000 chunks) when
#: it has at most this many times the chunks the HNSW walk would read for it (~70 us a chunk
#: walked at 100,000, more at a million): measured in docs/scaling.md.
EXACT_PER_CANDIDATE = 8

_KEY = text(
    "SELECT (SELECT version FROM vector_versions WHERE user_id = :u),"
    " (SELECT last_seq FROM knowledge_feeds WHERE user_id = :u)"
)

_EXACT = text(
    "SELECT c.id, c.doc_id, c.embedding <=> :q AS d FROM chunks AS c"
    " WHERE c.id = ANY(CAST(:ids AS bigint[])) ORDER BY d, c.id LIMIT :n"
)


@dataclass(frozen=True, slots=True)
class Resolved:
    """A scope's chunk ids in one snapshot, sorted (read-only), and how many chunks the user
    had in it."""

    ids: npt.NDArray[np.int64]
    total: int

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes)

    def holds(self, chunk_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of `chunk_ids` are in the scope."""
        if not len(self.ids):
            return np.zeros(len(chunk_ids), dtype=bool)
        at = np.minimum(np.searchsorted(self.ids, chunk_ids), len(self.ids) - 1)
        held: npt.NDArray[np.bool_] = self.ids[at] == chunk_ids
        return held


def cacheable(scope: Scope) -> bool:
    """A scope of document conditions alone (listed external ids, metadata): the same chunks in
    every snapshot of the same key. Persona scopes are not: attaching changes neither part."""
    return scope.persona_id is None and scope.within_personas is None and not scope.everything


async def scope_name(session: AsyncSession, scope: Scope) -> Hashable:
    """The scope's name in the cache: the user, the key of the user's data in the session's
    snapshot, and the scope's conditions. The version read serves the kept matrix's check too
    (`remember_version`)."""
    version, seq = (await session.execute(_KEY, {"u": scope.user_id})).one()
    remember_version(session, scope.user_id, version)
    listed = None if scope.external_ids is None else tuple(sorted(set(scope.external_ids)))
    key = (-1 if version is None else int(version), 0 if seq is None else int(seq))
    return (scope.user_id, key, listed, canonical_json(dict(scope.metadata)))


async def resolve(
    session: AsyncSession, scope: Scope, metadata_condition: MetadataCondition
) -> Resolved:
    """The scope's chunk ids (one comma-separated string: far cheaper through the driver than a
    row each) and the user's chunk count, in one statement."""
    ids_sql = (
        select(func.string_agg(cast(col(Chunk.id), Text), ","))
        .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(Chunk.doc_id))
        .where(*scope.conditions(metadata_condition))
        .scalar_subquery()
    )
    total_sql = (
        select(func.count()).select_from(Chunk).where(col(Chunk.user_id) == scope.user_id)
    ).scalar_subquery()
    found, total = (await session.execute(select(ids_sql, total_sql))).one()
    ids = (
        np.sort(np.array(found.split(","), dtype=np.int64))
        if found
        else np.zeros(0, dtype=np.int64)
    )
    ids.setflags(write=False)
    return Resolved(ids=ids, total=int(total))


def walk_size(resolved: Resolved, depth: int, least: int, per_doc: int) -> int:
    """How many of the user's nearest chunks a walk reads to hold about `per_doc` of the
    scope's chunks a wanted document (as the unscoped walk reads `per_doc` of the user's), and
    at least `least` (the unscoped walk's floor)."""
    share = len(resolved.ids) / max(resolved.total, 1)
    return max(least, math.ceil(per_doc * depth / max(share, 1e-9)))


def exact(resolved: Resolved, walk: int) -> bool:
    """Whether a scope is scored exactly rather than filtered from a walk of `walk` chunks."""
    return len(resolved.ids) <= EXACT_PER_CANDIDATE * walk


#: The user's `n` nearest chunks as (chunk, document, cosine distance), nearest first: the
#: unscoped ranking statement (postgres.py).
Walk = Callable[[int], Awaitable[list[tuple[int, str, float]]]]


async def nearest_in(
    session: AsyncSession,
    resolved: Resolved,
    vector: np.ndarray,
    depth: int,
    *,
    least: int,
    per_doc: int,
    walk: Walk,
) -> list[Ranked]:
    """The scope's `depth` documents nearest to `vector` by their best chunk: exactly for a
    small scope (its best `max(least, per_doc * depth)` chunks), else from the user's walk
    deepened to hold as many of the scope's (`walk_size`) and filtered here; four times deeper
    while too few documents come back."""
    n = walk_size(resolved, depth, least, per_doc)
    if exact(resolved, n):
        n = max(least, per_doc * depth)
        q = np.asarray(vector, dtype=np.float32)
        while True:
            params = {"q": q, "ids": resolved.ids.tolist(), "n": n}
            rows = (await session.execute(_EXACT, params)).all()
            ranked = collapse([(int(c), str(doc), float(d)) for c, doc, d in rows], depth)
            if len(ranked) >= depth or len(rows) < n:
                return ranked
            n *= 4
    while True:
        found = await walk(n)
        ids = np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))
        inside = resolved.holds(ids).tolist()
        ranked = collapse([r for r, keep in zip(found, inside, strict=True) if keep], depth)
        if len(ranked) >= depth or len(found) < n:
            return ranked
        n *= 4
