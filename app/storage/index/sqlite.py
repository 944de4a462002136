"""The SQLite search index: sign-bit vectors (vec0) with exact rescoring, and keyword postings.

Semantic ranking is two-stage (see sqlite_vectors.py): a coarse pass ranks the user's chunks (or
the scope's) by Hamming distance of their sign bits and keeps `_candidates(depth)` of them;
those are scored exactly with their float vectors. A scope no larger than that is scored exactly
at once. The coarse pass is approximate; on Cranfield the two-stage ranking scores the same
nDCG@10 as exact scoring (scripts/eval_cranfield.py), and `CANDIDATES_MIN` keeps oversampling
high where it is cheap. A user of many chunks (`Settings.partition_min_chunks`) has their bit
vectors kept in lists in memory (partition.py), and the coarse pass ranks only the lists
nearest the query; of its candidates, only those that four bits a dimension kept with the
partition estimate best (codes.py) have their float vectors read and scored exactly. Keyword
search reads the user's postings best first (keywords.py, sqlite_keywords.py).

A scope is resolved once to its chunk ids, sorted, which both rankings use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import sqlean
from sqlalchemy import ColumnElement, func, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.models import Chunk, KnowledgeDoc
from app.models.json_equality import canonical_json, canonical_json_text
from app.storage.index import (
    HitRow,
    Plan,
    Ranked,
    Restriction,
    TitledChunks,
    drive_sync,
)
from app.storage.index.codes import estimates
from app.storage.index.partition import Partition, PartitionStore, snapshot_key
from app.storage.index.resident import Resident, ResidentStore
from app.storage.index.scope import MetadataCondition, Scope
from app.storage.index.scope_cache import ScopeCache
from app.storage.index.sqlite_keywords import KeywordIndex
from app.storage.index.sqlite_vectors import (
    Bits,
    FloatVectors,
    VectorIndex,
    best_per_doc,
    database_file,
    floats_of_file,
    nearest_positions,
    read_all_bits,
    restrict_bits,
    scan_per_doc,
    similarities,
)
from app.storage.index.vector_cache import VectorCache
from app.storage.index.words import query_terms
from app.storage.sqlite_driver import run_on_connection

T = TypeVar("T")

#: The coarse pass keeps this many chunks per wanted document, at least `CANDIDATES_MIN`, for
#: exact scoring. Rescoring costs ~1-2 us a chunk (one rowid lookup for its float vector, the
#: cosine in numpy); the coarse pass costs the same (~5 ms per 100,000 chunks) whatever it keeps.
CANDIDATES_PER_DOC = 8
CANDIDATES_MIN = 400
#: A pass over more candidates than this reads their vectors a batch at a time and keeps none
#: (`scan_per_doc`): the passes over all of a user's chunks that a user with fewer documents
#: than the depth (100 for hybrid) makes kept every vector, 83,000 chunks in 99 documents took
#: a hybrid search's memory from +28 to +363 MB (peak RSS).
KEEP_MAX = 10_000


def _candidates(depth: int) -> int:
    return max(CANDIDATES_MIN, CANDIDATES_PER_DOC * depth)


#: Of a partition's candidates, those of the best estimates from their codes (codes.py) are
#: scored exactly: this many per wanted document, at least `RESCORED_MIN` (a sixth of the
#: reads at k = 10). On Cranfield with partitions forced on (k = 50: 100 of 400 read),
#: semantic nDCG@10 was 0.3807 against 0.3808 reading every candidate (docs/scaling.md);
#: tests/storage/index/test_partition.py checks 64 of 400 on model-like and clustered vectors.
RESCORED_PER_DOC = 2
RESCORED_MIN = 64


def _rescored(depth: int) -> int:
    return max(RESCORED_MIN, RESCORED_PER_DOC * depth)


@dataclass(frozen=True, slots=True)
class ChunkIds:
    """A scope as the sorted ids of its chunks."""

    ids: np.ndarray

    @property
    def empty(self) -> bool:
        return not len(self.ids)


#: The SQL function, installed on a connection by `install_canonical`, that writes a stored
#: JSON value's text in canonical form (app/models/json_equality.py).
CANONICAL_JSON = "personaizer_canonical_json"
#: Numbers smaller than this compare exactly in SQL: SQLite holds every integer up to 2**63 and
#: every double exactly, and compares the two kinds by value; up to 1e15 a double's JSON text
#: (Python's repr) is its exact value too. Larger ones meet integers beyond 64 bits (which
#: SQLite rounds to doubles) and doubles written as `1e+30` (whose value is 10**30, not the
#: double's): they compare in canonical form.
_EXACT_NUMBER = 10**15


def _in_sql(value: Any) -> bool:
    """Whether SQL alone compares `value` exactly as JSON equality does (see `metadata_condition`)."""
    if value is None or isinstance(value, bool | str):
        return True
    return isinstance(value, int | float) and abs(value) < _EXACT_NUMBER


def metadata_condition(i: int, key: str, value: Any) -> ColumnElement[bool]:
    """SQL that holds when the document's metadata has `key` equal to the JSON `value`, equal as
    app/models/json_equality.py defines it (as PostgreSQL's jsonb compares).

    `json_each` (not a JSON path) so that any key is safe, whatever characters it holds. The
    JSON type is compared first, so `true` never equals `1` nor `"1"` equal `1`. Null, booleans,
    strings (byte by byte) and numbers below `_EXACT_NUMBER` (by value) are compared in SQL;
    objects, arrays and large numbers by their canonical text, which the stored value's gets
    from `CANONICAL_JSON` (a Python function: `SqliteIndex.restrict` installs it)."""
    base = f"SELECT 1 FROM json_each(knowledge_docs.metadata) AS m WHERE m.key = :mk{i}"
    params: dict[str, object] = {f"mk{i}": key}
    if value is None:
        cond = "m.type = 'null'"
    elif isinstance(value, bool):
        cond = "m.type = 'true'" if value else "m.type = 'false'"
    elif _in_sql(value):
        kind = "'text'" if isinstance(value, str) else "'integer', 'real'"
        cond = f"m.type IN ({kind}) AND m.atom = :mv{i}"
        params[f"mv{i}"] = value
    else:
        if isinstance(value, dict):
            kind = "'object'"
        elif isinstance(value, list):
            kind = "'array'"
        else:
            kind = "'integer', 'real'"
        # `->` gives the value's JSON text as stored, its numbers' digits untouched.
        stored = f"{CANONICAL_JSON}(knowledge_docs.metadata -> m.fullkey)"
        cond = f"m.type IN ({kind}) AND {stored} = :mv{i}"
        params[f"mv{i}"] = canonical_json(value)
    return text(f"EXISTS ({base} AND {cond})").bindparams(**params)  # type: ignore[return-value]


def install_canonical(connection: sqlean.Connection) -> None:
    """Make `CANONICAL_JSON` callable on `connection` (again is harmless)."""
    connection.create_function(CANONICAL_JSON, 1, _canonical_or_null, deterministic=True)


def _canonical_or_null(stored: str | None) -> str | None:
    return None if stored is None else canonical_json_text(stored)


class SqliteIndex:
    def __init__(
        self,
        *,
        vector_cache_bytes: int = 0,
        partition_bytes: int = 0,
        partition_min_chunks: int = 50_000,
    ) -> None:
        self.vectors = VectorIndex()
        self.keywords = KeywordIndex()
        #: Float vectors kept across searches, for every search on this index (this database,
        #: this process): app/storage/index/vector_cache.py.
        self.vector_cache = VectorCache(vector_cache_bytes)
        #: Whole users' matrices, as much again (app/storage/index/resident.py).
        self.residents = ResidentStore(vector_cache_bytes)
        #: Large users' bit vectors in lists (app/storage/index/partition.py).
        self.partitions = PartitionStore(partition_bytes, partition_min_chunks)
        #: Resolved scopes of document conditions, per snapshot (app/storage/index/scope_cache.py),
        #: bounded as the vector cache.
        self.scopes: ScopeCache[np.ndarray] = ScopeCache(vector_cache_bytes)

    async def put_many(
        self, session: AsyncSession, *, user_id: int, docs: Sequence[TitledChunks]
    ) -> None:
        chunks = [c for _, doc_chunks in docs for c in doc_chunks]
        if not chunks:
            return
        await self.vectors.put(
            session,
            user_id=user_id,
            chunk_ids=[c.id for c in chunks],
            vectors=np.stack([c.vector for c in chunks]),
        )
        await self.keywords.put_titled(
            session,
            user_id=user_id,
            chunks=[(c.id, title, c.text) for title, doc_chunks in docs for c in doc_chunks],
        )

    async def retitle(
        self, session: AsyncSession, *, title: str | None, chunk_ids: Sequence[int]
    ) -> None:
        await self.keywords.retitle(session, title=title, chunk_ids=chunk_ids)

    async def delete(self, session: AsyncSession, chunk_ids: Sequence[int]) -> None:
        await self.vectors.delete(session, chunk_ids)
        await self.keywords.delete(session, chunk_ids)

    async def restrict(self, session: AsyncSession, scope: Scope) -> ChunkIds | None:
        """The scope's chunk ids, sorted. They come back as one comma-separated string: a
        quarter of 100,000 chunks took ~67 ms as (chunk, doc) rows through the driver, ~30 ms
        so (most of it the SQL: the metadata test per document and the join to its chunks)."""
        if scope.everything:
            return None
        if scope.nothing:
            return ChunkIds(np.zeros(0, dtype=np.int64))
        name = None
        if scope.persona_id is None and scope.within_personas is None:
            key = await run_on_connection(session, lambda c: snapshot_key(c, scope.user_id))
            listed = None if scope.external_ids is None else tuple(sorted(set(scope.external_ids)))
            name = (scope.user_id, key, listed, canonical_json(dict(scope.metadata)))
            held = self.scopes.get(name)
            if held is not None:
                return ChunkIds(held)
        found = await self._resolve(session, scope)
        if name is not None:
            self.scopes.put(name, found)
        return ChunkIds(found)

    async def _resolve(self, session: AsyncSession, scope: Scope) -> np.ndarray:
        await self.metadata_sql(session, scope.metadata_values)
        ids = (
            await session.execute(
                select(func.group_concat(Chunk.id))
                .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(Chunk.doc_id))
                .where(*scope.conditions(metadata_condition))
            )
        ).scalar_one()
        if not ids:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.array(ids.split(","), dtype=np.int64))

    async def metadata_sql(self, session: AsyncSession, values: Iterable[Any]) -> MetadataCondition:
        """`metadata_condition`, with `CANONICAL_JSON` installed on the session's connection
        when one of `values` needs it."""
        if not all(_in_sql(v) for v in values):
            await run_on_connection(session, install_canonical)
        return metadata_condition

    def ranker(
        self, session: AsyncSession, *, user_id: int, within: Restriction | None
    ) -> SqliteRanker:
        return SqliteRanker(
            session, user_id, _ids(within), self.vector_cache, self.residents, self.partitions
        )

    async def semantic(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        vector: np.ndarray,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        return await self.ranker(session, user_id=user_id, within=within).rank(vector, depth)

    async def keyword(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        query: str,
        depth: int,
        within: Restriction | None,
    ) -> list[Ranked]:
        wanted = query_terms(query)
        if not wanted:
            return []
        scope = _ids(within)
        return await run_on_connection(
            session,
            lambda conn: self.keywords.rank(
                conn,
                user_id=user_id,
                wanted=wanted,
                depth=depth,
                scope=scope,
                # Whichever snapshot it was built for: a chunk's document never changes and its
                # id is never reused, so every chunk it holds maps right.
                held=self.residents.latest(user_id),
            ),
        )

    async def count(self, session: AsyncSession, *, user_id: int) -> int:
        return await self.vectors.count(session, user_id=user_id)


def _ids(within: Restriction | None) -> np.ndarray | None:
    if within is None:
        return None
    assert isinstance(within, ChunkIds)
    return within.ids


class SqliteRanker:
    """One search's semantic passes, each one thread hop on the session's connection
    (`run_on_connection`): the coarse pass over the bit vectors (read once, on the first pass)
    and the exact scores of its candidates in numpy, from float vectors read once per search
    (up to `KEEP_MAX` candidates a pass; beyond, read a batch at a time and not kept), taken
    from the index's `VectorCache` where other searches already read them. A user small enough
    to be kept whole (`ResidentStore`) is scored from the kept matrix instead: the same scores
    and order, with no step per candidate in Python.
    Through the async driver the same work took ~5 statements per pass (a hop or more each),
    ~4 ms per pass over 900 chunks; now ~1 ms, and the numpy work is off the event loop."""

    def __init__(
        self,
        session: AsyncSession,
        user_id: int,
        scope: np.ndarray | None,
        cache: VectorCache | None = None,
        residents: ResidentStore | None = None,
        partitions: PartitionStore | None = None,
    ) -> None:
        self._session = session
        self._user_id = user_id
        self._scope = scope
        self._bits: Bits | None = None
        self._vectors = FloatVectors(cache)
        self._residents = residents
        #: The user's kept matrix, when there is one, and the row of each of `_bits`.
        self._resident: Resident | None = None
        self._rows: np.ndarray | None = None
        self._partitions = partitions
        #: The user's partition, when the user is large enough for one (then `_bits` is None).
        self._partition: Partition | None = None

    async def prepare(self, depth: int) -> None:
        if self._bits is None and self._partition is None and not self._scope_alone(depth):
            await run_on_connection(self._session, self._read_bits)

    async def rank(self, vector: np.ndarray, depth: int) -> list[Ranked]:
        return await run_on_connection(self._session, lambda conn: self._rank(conn, vector, depth))

    async def vectors(self, chunk_ids: Sequence[int]) -> list[np.ndarray]:
        if self._resident is not None:  # in memory, immutable: no need of the connection
            return self._resident.vectors(chunk_ids)
        return await run_on_connection(
            self._session, lambda conn: self._vectors_of(conn, chunk_ids)
        )

    async def hit_rows(self, chunk_ids: Sequence[int]) -> list[HitRow]:
        return await run_on_connection(self._session, lambda conn: _hit_rows(conn, chunk_ids))

    async def run(self, plan: Plan[T], *, last: bool = False) -> T:
        """The whole plan in one thread hop: its passes, its rows, and the Python between (and,
        when `last`, the end of the read transaction)."""
        return await run_on_connection(
            self._session,
            lambda conn: drive_sync(
                plan,
                lambda vector, depth: self._rank(conn, vector, depth),
                lambda chunk_ids: self._vectors_of(conn, chunk_ids),
                lambda chunk_ids: _hit_rows(conn, chunk_ids),
            ),
            last_read=last,
        )

    def _vectors_of(self, conn: sqlean.Connection, chunk_ids: Sequence[int]) -> list[np.ndarray]:
        if self._resident is not None:
            return self._resident.vectors(chunk_ids)
        self._vectors.load(conn, chunk_ids)
        found = (self._vectors.vector(i) for i in chunk_ids)
        return [v for v in found if v is not None]

    def _scope_alone(self, depth: int) -> bool:
        """The scope is small enough to be scored whole, with no coarse pass (no dearer than
        rescoring its candidates)."""
        return self._scope is not None and len(self._scope) <= _candidates(depth)

    def _rank(self, conn: sqlean.Connection, vector: np.ndarray, depth: int) -> list[Ranked]:
        if self._scope_alone(depth):
            assert self._scope is not None
            return self._exact(conn, self._scope, vector, depth)
        n = _candidates(depth)
        if self._bits is None and self._partition is None:
            self._read_bits(conn)
        if self._partition is not None:
            return self._rank_lists(conn, self._partition, vector, depth)
        assert self._bits is not None
        while True:
            positions = nearest_positions(self._bits, vector, n)
            if self._resident is not None and self._rows is not None:
                ranked = _exact_rows(self._resident, self._rows[positions], vector, depth)
            else:
                ranked = self._exact(conn, self._bits.ids[positions], vector, depth)
            # Too few documents: their chunks crowd the candidates (documents of many chunks).
            if len(ranked) >= depth or len(positions) >= len(self._bits.ids):
                return ranked
            n *= 4

    def _rank_lists(
        self, conn: sqlean.Connection, partition: Partition, vector: np.ndarray, depth: int
    ) -> list[Ranked]:
        """`_rank` over the chunks of the lists nearest `vector` (the scope's, if any),
        probing four times as many lists while too few documents come back. With codes, only
        the candidates of the best estimates are read and scored exactly (all of them when those
        hold too few documents)."""
        n = _candidates(depth)
        probes = partition.probes
        scope = None
        if self._scope is not None and self._partitions is not None:
            scope = self._partitions.scope_rows(partition, self._scope)
        while True:
            bits, rows, everything = partition.gather(vector, probes, n, scope)
            positions = nearest_positions(bits, vector, n)
            ids = bits.ids[positions]
            ranked = None
            if len(ids) > _rescored(depth):
                words = bits.words[positions]
                ranked = self._best_estimated(
                    conn, partition, words, rows[positions], ids, vector, depth
                )
            if ranked is None or len(ranked) < depth:
                ranked = self._exact(conn, ids, vector, depth)
            if len(ranked) >= depth or (everything and len(ids) >= len(bits.ids)):
                return ranked
            n *= 4
            probes *= 4

    def _best_estimated(
        self,
        conn: sqlean.Connection,
        partition: Partition,
        words: np.ndarray,
        rows: np.ndarray,
        ids: np.ndarray,
        vector: np.ndarray,
        depth: int,
    ) -> list[Ranked] | None:
        """The exact ranking of the `_rescored(depth)` of the candidates `ids` (sign bits
        `words`, partition rows `rows`) that their codes estimate best; None without codes."""
        codes, quantizer = partition.codes, partition.quantizer
        if codes is None or quantizer is None:
            return None
        guess = estimates(quantizer, words, codes[rows], vector)
        best = np.lexsort((ids, -guess))[: _rescored(depth)]
        return self._exact(conn, ids[best], vector, depth)

    def _read_bits(self, conn: sqlean.Connection) -> None:
        """The bit vectors the passes rank (the user's, or the scope's), and the user's kept
        matrix when the user is small enough, checked against this snapshot's chunks; or,
        for a user large enough, the user's partition (kept while the snapshot's key is the
        same: no bits read at all)."""
        key = None
        if self._partitions is not None:
            key = snapshot_key(conn, self._user_id)
            self._partition = self._partitions.kept(self._user_id, key)
            if self._partition is not None:
                return
        bits = read_all_bits(conn, self._user_id)
        if self._partitions is not None and key is not None:
            path = database_file(conn)
            floats = None if path is None else lambda: floats_of_file(path)
            self._partition = self._partitions.current(self._user_id, key, bits, floats)
            if self._partition is not None:
                return
        if self._residents is not None:
            self._resident = self._residents.current(conn, self._user_id, bits.ids)
        rows = np.arange(len(bits.ids), dtype=np.intp)
        if self._scope is not None:
            bits, rows = restrict_bits(bits, self._scope)
        self._bits, self._rows = bits, rows

    def _exact(
        self, conn: sqlean.Connection, ids: np.ndarray, vector: np.ndarray, depth: int
    ) -> list[Ranked]:
        chunk_ids = ids.tolist()
        if len(chunk_ids) > KEEP_MAX:
            found = scan_per_doc(conn, chunk_ids, vector, depth)
        else:
            self._vectors.load(conn, chunk_ids)
            found = self._vectors.nearest_per_doc(chunk_ids, vector, depth)
        return [Ranked(doc, chunk, score) for chunk, doc, score in found]


def _exact_rows(
    resident: Resident, rows: np.ndarray, vector: np.ndarray, depth: int
) -> list[Ranked]:
    """`FloatVectors.nearest_per_doc` over rows of a kept matrix: the same scores (the same
    `similarities` of the same float32 rows) and the same order (best first, ties by chunk id,
    each document's best chunk), `depth` documents. Scored `KEEP_MAX` rows at a time, so that a
    pass over all of a user's chunks never copies the whole matrix."""
    if not len(rows):
        return []
    ids = resident.ids[rows]
    scores = np.concatenate(
        [
            similarities(resident.matrix[rows[start : start + KEEP_MAX]], vector)
            for start in range(0, len(rows), KEEP_MAX)
        ]
    )
    docs = resident.docs[rows]
    best = best_per_doc(ids, docs, scores, depth)
    names = resident.doc_ids[docs[best]].tolist()
    return list(map(Ranked, names, ids[best].tolist(), scores[best].tolist()))


def _hit_rows(conn: sqlean.Connection, chunk_ids: Sequence[int]) -> list[HitRow]:
    if not chunk_ids:
        return []
    rows = conn.execute(
        "SELECT c.id, c.chunk_index, c.text, d.external_id, d.title, d.metadata"
        " FROM json_each(?) AS j JOIN chunks AS c ON c.id = j.value"
        " JOIN knowledge_docs AS d ON d.id = c.doc_id",
        (json.dumps([int(i) for i in chunk_ids]),),
    ).fetchall()
    return [tuple(row) for row in rows]
