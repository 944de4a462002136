"""Whole users' float vectors kept in memory across searches (SQLite): one matrix per user.

A semantic pass scores its few hundred candidates exactly. Taking their vectors one by one
(from `chunks`, or from the per-chunk `VectorCache`) costs a Python step per candidate, ~0.4 ms
a pass for 800 of them, and as much again to sort them by document. For a user of at most
`MAX_CHUNKS` chunks the process keeps the user's whole matrix instead, its rows in the order of
the user's bit vectors (`read_bits`, which every unscoped pass reads anyway): a candidate's row
is its position in the coarse pass, and a pass is a few numpy calls (~0.3 ms for 800 of 900).

Exact, by the same argument as the per-chunk cache (app/storage/index/vector_cache.py): chunk ids are
never reused and a chunk's vector and document never change, so a matrix built for a set of
chunk ids holds the right vectors for any snapshot with that same set of ids, and each pass
checks that its snapshot's ids equal the matrix's (`np.array_equal`, microseconds) before using
it. When they differ (documents written since), the matrix is rebuilt from the old one: the rows
still there are copied, only the new chunks are read from the database.

Bounded: users above `MAX_CHUNKS` (so that a rebuild after a write copies at most ~15 MB) and
whole matrices beyond the byte budget (least recently used out) are not kept; those users'
passes take the per-chunk path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import sqlean

from app.models.knowledge import EMBEDDING_DIMS as DIMS
from app.storage.index.sqlite_vectors import read_entries

#: Users with more chunks than this are not kept whole.
MAX_CHUNKS = 10_000
#: What a kept user costs besides the matrix: ids, rows, documents (~40 bytes a chunk), and the
#: document id strings (~100 bytes each, counted per chunk to stay on the safe side).
PER_CHUNK_OVERHEAD = 140


@dataclass(frozen=True, slots=True)
class Resident:
    """One user's chunks as a snapshot saw them: row `i` of `matrix` is chunk `ids[i]` (the
    bit vectors' order), of document `doc_ids[docs[i]]`; `sorted_ids` and `sorted_rows` find a
    chunk's row by id."""

    ids: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    docs: npt.NDArray[np.intp]
    doc_ids: npt.NDArray[np.object_]
    sorted_ids: npt.NDArray[np.int64]
    sorted_rows: npt.NDArray[np.intp]

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes) + len(self.ids) * PER_CHUNK_OVERHEAD

    def rows_of(self, chunk_ids: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """The rows of those of `chunk_ids` held, in the order given (the others left out)."""
        return self.locate(np.asarray(chunk_ids, dtype=np.int64))[1]

    def vectors(self, chunk_ids: Sequence[int]) -> list[npt.NDArray[np.float32]]:
        """The vectors of those of `chunk_ids` held."""
        return list(self.matrix[self.rows_of(list(chunk_ids))])

    def docs_of(self, chunk_ids: Sequence[int]) -> list[str | None]:
        """The document of each of `chunk_ids`, in order; None for a chunk not held (written
        since, or gone: a chunk's document never changes and its id is never reused, so every
        chunk held maps right whichever snapshot the matrix was made for)."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        held, rows = self.locate(ids)
        docs = np.full(len(ids), None, dtype=object)
        docs[held] = self.doc_ids[self.docs[rows]]
        found: list[str | None] = docs.tolist()
        return found

    def locate(
        self, chunk_ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """Which of `chunk_ids` are held, and the rows of those, in the order given."""
        if not len(self.sorted_ids) or not len(chunk_ids):
            return np.zeros(len(chunk_ids), dtype=bool), np.zeros(0, dtype=np.intp)
        at = np.minimum(np.searchsorted(self.sorted_ids, chunk_ids), len(self.sorted_ids) - 1)
        held = self.sorted_ids[at] == chunk_ids
        rows: npt.NDArray[np.intp] = self.sorted_rows[at[held]]
        return held, rows


class ResidentStore:
    """Users' `Resident` matrices, least recently used out beyond `max_bytes` (0: none kept);
    thread-safe (passes run on several reader connections' threads). `hits`, `builds` count
    passes served as they were and matrices made or remade (for tests)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self.builds = 0
        self._entries: OrderedDict[int, Resident] = OrderedDict()
        self._lock = threading.Lock()

    def current(
        self, conn: sqlean.Connection, user_id: int, ids: npt.NDArray[np.int64]
    ) -> Resident | None:
        """The user's matrix for exactly the chunks `ids` (their bit vectors' order, read in
        `conn`'s snapshot): kept, rebuilt from the kept one, or None when the user is too large
        to keep."""
        if len(ids) > MAX_CHUNKS or len(ids) * (DIMS * 4 + PER_CHUNK_OVERHEAD) > self.max_bytes:
            return None
        with self._lock:
            old = self._entries.get(user_id)
            if old is not None:
                self._entries.move_to_end(user_id)
                if np.array_equal(old.ids, ids):
                    self.hits += 1
                    return old
        fresh = _build(conn, ids, old)
        if fresh is None:
            return None
        with self._lock:
            self.builds += 1
            replaced = self._entries.pop(user_id, None)
            if replaced is not None:
                self.bytes -= replaced.nbytes
            self._entries[user_id] = fresh
            self.bytes += fresh.nbytes
            while self.bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
        return fresh

    def latest(self, user_id: int) -> Resident | None:
        """The user's matrix as last kept, for whichever snapshot it was built (unchecked: for
        what holds in every snapshot, such as a chunk's document), or None."""
        with self._lock:
            return self._entries.get(user_id)

    def __len__(self) -> int:
        return len(self._entries)


def _build(
    conn: sqlean.Connection, ids: npt.NDArray[np.int64], old: Resident | None
) -> Resident | None:
    """A matrix for `ids`: the rows `old` holds copied, the others read from `conn`. None if a
    chunk is not found (not expected: the ids come from the same snapshot)."""
    n = len(ids)
    matrix = np.empty((n, DIMS), dtype=np.float32)
    doc_of = np.empty(n, dtype=object)
    have = np.zeros(n, dtype=bool)
    if old is not None:
        have, rows = old.locate(ids)
        matrix[have] = old.matrix[rows]
        doc_of[have] = old.doc_ids[old.docs[rows]]
    missing = np.flatnonzero(~have)
    if len(missing):
        order = missing[np.argsort(ids[missing], kind="stable")]
        entries = read_entries(conn, ids[order].tolist())
        if len(entries) != len(order):
            return None
        for position in order.tolist():
            doc_id, blob = entries[int(ids[position])]
            matrix[position] = np.frombuffer(blob, dtype=np.float32)
            doc_of[position] = doc_id
    doc_ids, docs = np.unique(doc_of, return_inverse=True) if n else (doc_of, np.zeros(0))
    sorted_rows = np.argsort(ids, kind="stable").astype(np.intp)
    return Resident(
        ids=ids.copy(),
        matrix=matrix,
        docs=np.asarray(docs, dtype=np.intp).reshape(-1),
        doc_ids=np.asarray(doc_ids, dtype=object),
        sorted_ids=ids[sorted_rows],
        sorted_rows=sorted_rows,
    )


def held_docs(resident: Resident | None, chunk_ids: Sequence[int]) -> list[str | None]:
    """`Resident.docs_of`, all None without a matrix."""
    return [None] * len(chunk_ids) if resident is None else resident.docs_of(chunk_ids)
