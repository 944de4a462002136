"""Small users' vectors kept in process memory on PostgreSQL, as on SQLite (resident.py).

A semantic pass in SQL costs PostgreSQL a statement per pass (two per hybrid search, three with
the feedback vectors) and an exact scan or an HNSW walk each; on Cranfield (1,398 chunks) the
semantic search took 67 ms at p50 over HTTP against SQLite's 18 ms. A user of at most
`resident.MAX_CHUNKS` chunks has the whole matrix kept instead (within the byte budget, least
recently used out), and a pass is one product in numpy (~0.3 ms for 1,400 chunks), exact.

Whether a kept matrix is still the user's is read in the search's own snapshot: revision 0012's
`vector_versions` row changes in every transaction that inserts, deletes or updates any of the
user's chunks (triggers on `chunks`, so every path and every process counts), and a matrix is
used only for the version it was built at. A write on one server is so seen by a search on
another as soon as it commits. A matrix is rebuilt from the one kept (chunk ids are never
reused and a chunk's vector and document never change, so the rows still there are copied) and
only new chunks' vectors are read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.knowledge import EMBEDDING_DIMS as DIMS
from app.storage.index import Ranked
from app.storage.index.resident import MAX_CHUNKS, PER_CHUNK_OVERHEAD, Resident
from app.storage.index.sqlite_vectors import best_per_doc, similarities

_VERSION = text("SELECT version FROM vector_versions WHERE user_id = :u")
_CHUNKS = text("SELECT id, doc_id FROM chunks WHERE user_id = :u ORDER BY id")
_VECTORS = text("SELECT id, embedding FROM chunks WHERE id = ANY(:ids)")

#: `session.info` key of a user's version read by another statement of the session's snapshot.
_VERSION_KEY = "personaizer.vector_version"


def remember_version(session: AsyncSession, user_id: int, version: int | None) -> None:
    """`version`, the user's `vector_versions` row read in this session's snapshot by another
    statement (the keyword ranking's), for `ResidentVectors.current` to use instead of reading
    it again. Only a read session's snapshot keeps it true for the rest of the session."""
    session.info[(_VERSION_KEY, user_id)] = version


#: What the store keeps of a user: the version and the matrix (None: too large at that version).
_Kept = tuple[int, Resident | None]


class ResidentVectors:
    """Users' matrices by version, least recently used out beyond `max_bytes` (0: none kept).
    One per index, i.e. per database per process; used from the event loop only. `hits` and
    `builds` count searches served from a kept matrix and matrices made (for tests)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self.builds = 0
        self._entries: OrderedDict[int, _Kept] = OrderedDict()

    async def current(self, session: AsyncSession, user_id: int) -> Resident | None:
        """The user's matrix as the session's snapshot has the user's chunks, or None (the user
        is too large, or nothing is kept)."""
        if not self.max_bytes:
            return None
        version = await _version(session, user_id)
        kept = self._entries.get(user_id)
        if kept is not None and kept[0] == version:
            self._entries.move_to_end(user_id)
            self.hits += kept[1] is not None
            return kept[1]
        fresh = await _build(session, user_id, None if kept is None else kept[1], self.max_bytes)
        self.builds += fresh is not None
        self._keep(user_id, (version, fresh))
        return fresh

    async def kept(self, session: AsyncSession, user_id: int) -> Resident | None:
        """The user's matrix if one is kept for the session's snapshot, else None: nothing is
        built or counted (for a lookup beside a search, such as a chunk's document)."""
        kept = self._entries.get(user_id)
        if kept is None or kept[1] is None:
            return None
        return kept[1] if kept[0] == await _version(session, user_id) else None

    def _keep(self, user_id: int, entry: _Kept) -> None:
        old = self._entries.pop(user_id, None)
        if old is not None and old[1] is not None:
            self.bytes -= old[1].nbytes
        self._entries[user_id] = entry
        if entry[1] is not None:
            self.bytes += entry[1].nbytes
        while self.bytes > self.max_bytes and self._entries:
            _, (_, evicted) = self._entries.popitem(last=False)
            if evicted is not None:
                self.bytes -= evicted.nbytes

    def __len__(self) -> int:
        return sum(1 for _, kept in self._entries.values() if kept is not None)


async def _version(session: AsyncSession, user_id: int) -> int:
    """The user's version in the session's snapshot (-1: none yet), as another statement of the
    session read it (`remember_version`) or read now."""
    key = (_VERSION_KEY, user_id)
    if key in session.info:
        found = session.info[key]
    else:
        found = (await session.execute(_VERSION, {"u": user_id})).scalar_one_or_none()
    return -1 if found is None else int(found)


async def _build(
    session: AsyncSession, user_id: int, old: Resident | None, max_bytes: int
) -> Resident | None:
    """The user's matrix in the session's snapshot: the rows `old` holds copied, the others
    read. None when the user has more chunks than a matrix may hold."""
    rows = (await session.execute(_CHUNKS, {"u": user_id})).all()
    n = len(rows)
    if n > MAX_CHUNKS or n * (DIMS * 4 + PER_CHUNK_OVERHEAD) > max_bytes:
        return None
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    doc_of = np.empty(n, dtype=object)
    doc_of[:] = [r[1] for r in rows]
    matrix = np.empty((n, DIMS), dtype=np.float32)
    have = np.zeros(n, dtype=bool)
    if old is not None:
        have, held = old.locate(ids)
        matrix[have] = old.matrix[held]
    missing = np.flatnonzero(~have)
    if len(missing):
        position = {int(i): p for p, i in zip(missing.tolist(), ids[missing].tolist(), strict=True)}
        read = await session.execute(_VECTORS, {"ids": ids[missing].tolist()})
        for chunk_id, vector in read:
            matrix[position.pop(int(chunk_id))] = vector
        if position:  # not expected: the ids come from the same snapshot
            return None
    doc_ids, docs = np.unique(doc_of, return_inverse=True) if n else (doc_of, np.zeros(0))
    # Rows in id order already: `sorted_rows` is the identity.
    order = np.arange(n, dtype=np.intp)
    return Resident(
        ids=ids,
        matrix=matrix,
        docs=np.asarray(docs, dtype=np.intp).reshape(-1),
        doc_ids=np.asarray(doc_ids, dtype=object),
        sorted_ids=ids,
        sorted_rows=order,
    )


def in_scope(resident: Resident, doc_ids: Sequence[str]) -> np.ndarray:
    """The rows of `resident` whose documents are among `doc_ids`."""
    wanted = np.isin(resident.doc_ids, np.asarray(list(doc_ids), dtype=object))
    rows: np.ndarray = np.flatnonzero(wanted[resident.docs])
    return rows


def nearest(
    resident: Resident, rows: np.ndarray | None, vector: np.ndarray, depth: int
) -> list[Ranked]:
    """The `depth` documents of `rows` (None: every row) nearest to `vector` by their best
    chunk, exactly (cosine), ties by chunk id: as SQLite's passes score a kept matrix."""
    if rows is None:
        matrix, ids, docs = resident.matrix, resident.ids, resident.docs
    else:
        matrix, ids, docs = resident.matrix[rows], resident.ids[rows], resident.docs[rows]
    if not len(ids):
        return []
    scores = similarities(matrix, vector)
    best = best_per_doc(ids, docs, scores, depth)
    names = resident.doc_ids[docs[best]].tolist()
    return list(map(Ranked, names, ids[best].tolist(), scores[best].tolist()))
