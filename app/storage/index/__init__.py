"""The search index behind one interface, one implementation per engine.

Both keep, in the caller's transaction (so they commit or roll back with the chunk rows), what a
search needs beyond the `chunks` table, and both rank documents by their best chunk:

- SQLite (`sqlite.py`): sign-bit vectors in a sqlite-vec `vec0` table for a coarse pass, exact
  cosine rescoring from the float vectors in `chunks.embedding`.
- PostgreSQL (`postgres.py`): pgvector's HNSW index over `chunks.embedding` (exact scans for
  small scopes), small users' matrices kept in memory (`postgres_vectors.py`).

Keywords are one index on both (`keywords.py`): the same tables of per-user postings, read best
first, scored by BM25 in Python; each engine only answers its reads (`sqlite_keywords.py`,
`postgres_keywords.py`), so the engines give the same keyword answers for the same data.

Scopes (a persona, listed external_ids, metadata equality) and the user are conditions inside
the index's own queries, never a filter applied to a global top-k afterwards; `restrict` turns a
`Scope` into whatever form the engine uses (SQLite: the scope's chunk ids; PostgreSQL: SQL, and
for a scope of document conditions its chunk ids too, which filter a walk of the user's own
nearest chunks deepened until it holds enough of the scope's).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.index.scope import MetadataCondition, Scope

if TYPE_CHECKING:
    from app.storage.database import Dialect

T = TypeVar("T")

__all__ = [
    "HitRow",
    "HitRowsStep",
    "IndexedChunk",
    "MetadataCondition",
    "Plan",
    "RankStep",
    "Ranked",
    "Restriction",
    "Scope",
    "SearchIndex",
    "SemanticRanker",
    "TitledChunks",
    "VectorsStep",
    "drive",
    "drive_sync",
    "for_dialect",
]


@dataclass(slots=True)  # not frozen: a search makes hundreds, and frozen doubles the cost of each
class Ranked:
    """A document as a ranking places it: its best chunk and that chunk's score (higher is
    better; cosine similarity for vectors, BM25 for keywords)."""

    doc_id: str
    chunk_id: int
    score: float


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    """What the index keeps of a chunk row that was just written."""

    id: int
    text: str
    vector: np.ndarray


#: A document's title and its new chunks, for `SearchIndex.put_many`.
TitledChunks = tuple[str | None, Sequence[IndexedChunk]]


class Restriction(Protocol):
    """A scope in the engine's own form."""

    @property
    def empty(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RankStep:
    """A plan's request: `SemanticRanker.rank(vector, depth)`."""

    vector: np.ndarray
    depth: int


@dataclass(frozen=True, slots=True)
class VectorsStep:
    """A plan's request: `SemanticRanker.vectors(chunk_ids)`."""

    chunk_ids: Sequence[int]


@dataclass(frozen=True, slots=True)
class HitRowsStep:
    """A plan's request: `SemanticRanker.hit_rows(chunk_ids)`."""

    chunk_ids: Sequence[int]


#: What a hit shows of its chunk: chunk id, chunk index, text, the document's external id,
#: title and metadata (JSON text, or already decoded).
HitRow = tuple[int, int, str, str, str | None, Any]

#: A search's work after the query's embedding, written once for every engine: a generator
#: that yields the rankings, vectors and rows it needs (`RankStep`, `VectorsStep`,
#: `HitRowsStep`), is sent their answers, and returns its result. `SemanticRanker.run` drives
#: it: SQLite runs it whole in one thread hop on its connection, PostgreSQL awaits each step.
Plan = Generator["RankStep | VectorsStep | HitRowsStep", Any, T]


class SemanticRanker(Protocol):
    """One search's semantic rankings (a hybrid search makes two: the query, then the query
    moved towards its best hits), within one user and scope, on the search's session: what the
    first pass read (SQLite: the bit vectors, the float vectors it scored) serves the second."""

    async def prepare(self, depth: int) -> None:
        """Read what passes of `depth` documents will need that does not depend on the vector
        (SQLite: the bit vectors and the kept matrix), while the query is still being
        embedded; optional, the first pass reads it otherwise."""

    async def rank(self, vector: np.ndarray, depth: int) -> list[Ranked]:
        """The `depth` documents nearest to `vector`, nearest first."""

    async def vectors(self, chunk_ids: Sequence[int]) -> list[np.ndarray]:
        """The float vectors of those of `chunk_ids` that exist (any order)."""

    async def hit_rows(self, chunk_ids: Sequence[int]) -> list[HitRow]:
        """What the hits show of those of `chunk_ids` that exist (any order)."""

    async def run(self, plan: Plan[T], *, last: bool = False) -> T:
        """`plan`'s result, its steps answered by this ranker. `last`: the search's read session
        does nothing after it (an engine may end the read transaction with the plan)."""


async def drive(plan: Plan[T], ranker: SemanticRanker) -> T:
    """Run `plan`, awaiting each step on `ranker`."""
    answer: Any = None
    while True:
        try:
            step = plan.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result
        answer = await _answer(step, ranker.rank, ranker.vectors, ranker.hit_rows)


def drive_sync(
    plan: Plan[T],
    rank: Callable[[np.ndarray, int], list[Ranked]],
    vectors: Callable[[Sequence[int]], list[np.ndarray]],
    hit_rows: Callable[[Sequence[int]], list[HitRow]],
) -> T:
    """Run `plan`, answering each step at once (`drive` without awaiting)."""
    answer: Any = None
    while True:
        try:
            step = plan.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result
        answer = _answer(step, rank, vectors, hit_rows)


def _answer(
    step: RankStep | VectorsStep | HitRowsStep,
    rank: Callable[[np.ndarray, int], Any],
    vectors: Callable[[Sequence[int]], Any],
    hit_rows: Callable[[Sequence[int]], Any],
) -> Any:
    """What answers `step`: the call's result (an awaitable, for `drive`)."""
    if isinstance(step, RankStep):
        return rank(step.vector, step.depth)
    if isinstance(step, VectorsStep):
        return vectors(step.chunk_ids)
    return hit_rows(step.chunk_ids)


class SearchIndex(Protocol):
    async def put_many(
        self, session: AsyncSession, *, user_id: int, docs: Sequence[TitledChunks]
    ) -> None:
        """Index the chunk rows of one user's documents, written in this transaction (their
        vectors are in the rows), a (title, chunks) pair a document: a few statements in all,
        whether one document or a batch."""

    async def retitle(
        self, session: AsyncSession, *, title: str | None, chunk_ids: Sequence[int]
    ) -> None:
        """The document's title changed (the keyword index weighs it); nothing re-embeds."""

    async def delete(self, session: AsyncSession, chunk_ids: Sequence[int]) -> None:
        """Forget chunks about to be deleted."""

    async def restrict(self, session: AsyncSession, scope: Scope) -> Restriction | None:
        """The scope in the engine's form; None when it covers all of the user's documents."""

    async def metadata_sql(self, session: AsyncSession, values: Iterable[Any]) -> MetadataCondition:
        """The engine's metadata equality SQL (`Scope.conditions`' argument), for conditions on
        `knowledge_docs` outside a search (a list's filter, a persona's knowledge), made
        usable on the session's connection for every one of `values`."""

    def ranker(
        self, session: AsyncSession, *, user_id: int, within: Restriction | None
    ) -> SemanticRanker:
        """Semantic rankings of the user's documents (within the scope) on `session`."""

    async def semantic(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        vector: np.ndarray,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        """The user's `depth` documents nearest to `vector`, nearest first (one ranking)."""

    async def keyword(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        query: str,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        """The user's `depth` documents best matching the words of `query`, best first."""

    async def count(self, session: AsyncSession, *, user_id: int) -> int:
        """How many chunks of the user the index holds."""


def for_dialect(
    dialect: Dialect,
    *,
    vector_cache_bytes: int = 0,
    partition_bytes: int = 0,
    partition_min_chunks: int = 50_000,
) -> SearchIndex:
    """The engine's index; it keeps up to `vector_cache_bytes` of float vectors across searches
    (SQLite: app/storage/index/vector_cache.py and resident.py; PostgreSQL: small users' whole
    matrices, postgres_vectors.py). SQLite also keeps `partition_bytes` of large users' bit
    vectors in lists (app/storage/index/partition.py)."""
    if dialect == "sqlite":
        from app.storage.index.sqlite import SqliteIndex

        return SqliteIndex(
            vector_cache_bytes=vector_cache_bytes,
            partition_bytes=partition_bytes,
            partition_min_chunks=partition_min_chunks,
        )
    from app.storage.index.postgres import PostgresIndex

    return PostgresIndex(vector_cache_bytes=vector_cache_bytes)


#: Keyword scores equal to this many decimals tie: a chunk's parts added in another order (two
#: chunks with the same words) may differ in their last bits.
TIE_DECIMALS = 9


def best_chunks_per_doc(rows: Iterable[tuple[str, int, float]], depth: int) -> list[Ranked]:
    """(document, chunk, score) rows, higher scores better -> documents by their best chunk,
    best first, at most `depth`; scores equal to `TIE_DECIMALS` tie and go to the lower chunk
    id (which follows upload order), on both engines alike."""
    ordered = sorted(rows, key=lambda r: (-round(r[2], TIE_DECIMALS), r[1]))
    best: dict[str, Ranked] = {}
    for doc, chunk_id, score in ordered:
        if doc not in best:
            best[doc] = Ranked(doc, chunk_id, score)
            if len(best) == depth:
                break
    return list(best.values())


def collapse(scored: Sequence[tuple[int, str, float]], depth: int) -> list[Ranked]:
    """(chunk, doc, cosine distance) triples -> documents by their nearest chunk, nearest
    first, ties by chunk id (which follows upload order), at most `depth`."""
    out: list[Ranked] = []
    seen: set[str] = set()
    for chunk_id, doc, distance in sorted(scored, key=lambda p: (p[2], p[0])):
        if doc in seen:
            continue
        seen.add(doc)
        out.append(Ranked(doc, chunk_id, 1.0 - distance))
        if len(out) == depth:
            break
    return out
