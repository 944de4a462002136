"""SQLite's chunk vector index: binary-quantized vectors for a coarse pass, the float vectors
for exact scores.

Two stores, written in the caller's transaction (so they commit or roll back with the rows they
belong to):

- `chunks.embedding`: each chunk's float32 vector (384 x 4 bytes, unit length), a plain column,
  so exact scoring of a few thousand chunks is one rowid lookup each (a few microseconds) and an
  updated document reuses its old vectors from the rows it already loaded.
- `chunk_vectors`: a sqlite-vec `vec0` table of the same vectors quantized to one bit per
  dimension (sign), partitioned by user: 48 bytes a vector, 32x less than float32.

A search reads the user's bit vectors in one pass and ranks them by Hamming distance in numpy
(`read_all_bits`, `nearest_bits`), then scores only the best few hundred exactly in numpy
(`FloatVectors.nearest_per_doc`). Measured at 100,000 chunks in one partition: vec0's float KNN
takes ~80 ms (150 MB of vectors per query); vec0's own KNN over the bit column takes 18-40 ms
(its top-k step costs O(partition x k), 35 ms at k=256); reading the partition's bit blocks and
ranking them in numpy takes ~5 ms whatever the number of candidates. So vec0 stores and
maintains the bit vectors (chunking, validity, deletes) and the search reads its blocks
directly: `_vector_chunks00` (one blob of `chunk_size` vectors per block) beside `_chunks` (the
block's partition, validity bitmap and rowids). That layout is sqlite-vec 0.1.9's (pinned in
pyproject.toml); tests/storage/index/test_sqlite.py checks that the scan agrees with vec0's own KNN, so
an upgrade that changes it fails there, not in production.

sqlite-vec 0.1.9 cannot `INSERT OR REPLACE` into vec0: `put` only ever inserts ids not indexed
yet (every path that deletes chunk rows deletes their index entries first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import sqlean
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.knowledge import EMBEDDING_DIMS as DIMS
from app.models.knowledge import Vectors
from app.storage.index.vector_cache import Entry, VectorCache

#: Bytes of one quantized vector; the scan reads them as `DIMS // 64` 64-bit words.
BIT_BYTES = DIMS // 8
_WORDS = DIMS // 64
#: Rescoring reads chunk rows in batches of this many ids.
_BATCH = 5000


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Sign bits, `BIT_BYTES` per vector: bit i (of byte i // 8, least significant first) is set
    when dimension i is positive, as sqlite-vec's `vec_quantize_binary` does."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    return np.packbits(matrix > 0, axis=1, bitorder="little")


class VectorIndex:
    async def put(
        self, session: AsyncSession, *, user_id: int, chunk_ids: Sequence[int], vectors: Vectors
    ) -> None:
        """Index the bit vectors of new chunks (ids not indexed yet: every path that deletes
        chunk rows deletes their index entries first, and vec0 refuses a duplicate loudly).
        Their float vectors are the chunk rows' `embedding`, written with the rows."""
        if not chunk_ids:
            return
        bits = quantize(vectors)
        await session.execute(
            text(
                "INSERT INTO chunk_vectors(chunk_id, user_id, embedding)"
                " VALUES (:c, :u, vec_bit(:e))"
            ),
            [
                {"c": cid, "u": user_id, "e": row.tobytes()}
                for cid, row in zip(chunk_ids, bits, strict=True)
            ],
        )

    # vec0 answers `chunk_id = ?` with a point lookup but `chunk_id IN (...)` with a scan of
    # every user's vectors: so one `=` per id.

    async def delete(self, session: AsyncSession, chunk_ids: Iterable[int]) -> None:
        ids = list(chunk_ids)
        if ids:
            await session.execute(
                text("DELETE FROM chunk_vectors WHERE chunk_id = :c"), [{"c": i} for i in ids]
            )

    async def count(self, session: AsyncSession, *, user_id: int | None = None) -> int:
        if user_id is None:
            return int(
                (await session.execute(text("SELECT count(*) FROM chunk_vectors"))).scalar_one()
            )
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM chunk_vectors WHERE user_id = :u"), {"u": user_id}
                )
            ).scalar_one()
        )


assert DIMS % 64 == 0


@dataclass(frozen=True, slots=True)
class Bits:
    """The sign bits of the chunks a search may see (the user's, or the scope's): their ids and
    `_WORDS` 64-bit words each, in the same order."""

    ids: npt.NDArray[np.int64]
    words: npt.NDArray[np.uint64]


def restrict_bits(bits: Bits, within: np.ndarray) -> tuple[Bits, npt.NDArray[np.intp]]:
    """Those of `bits` among `within` (sorted chunk ids), and their positions in `bits`."""
    keep = np.flatnonzero(np.isin(bits.ids, within, assume_unique=True))
    return Bits(bits.ids[keep], bits.words[keep]), keep


def read_all_bits(conn: sqlean.Connection, user_id: int) -> Bits:
    """The user's bit vectors, read straight from vec0's blocks (one row per 1,024 chunks),
    the deleted slots left out (`restrict_bits` narrows them to a scope)."""
    rows = conn.execute(
        "SELECT c.validity, c.rowids, v.vectors"
        " FROM chunk_vectors_chunks AS c"
        " JOIN chunk_vectors_vector_chunks00 AS v ON v.rowid = c.chunk_id"
        " WHERE c.partition00 = ?",
        (user_id,),
    ).fetchall()
    if not rows:
        return Bits(np.zeros(0, dtype=np.int64), np.zeros((0, _WORDS), dtype=np.uint64))
    valid = np.unpackbits(
        np.frombuffer(b"".join(r[0] for r in rows), dtype=np.uint8), bitorder="little"
    ).view(bool)
    ids = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int64)
    words = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint64).reshape(-1, _WORDS)
    keep = np.flatnonzero(valid)
    return Bits(ids[keep], words[keep])


def nearest_bits(bits: Bits, vector: np.ndarray, n: int) -> npt.NDArray[np.int64]:
    """The ids of the (at most) `n` chunks of `bits` nearest to `vector` by Hamming distance,
    nearest first, ties by id."""
    return bits.ids[nearest_positions(bits, vector, n)]


def nearest_positions(bits: Bits, vector: np.ndarray, n: int) -> npt.NDArray[np.intp]:
    """`nearest_bits` as positions in `bits`."""
    if not len(bits.ids):
        return np.zeros(0, dtype=np.intp)
    query = quantize(vector)[0].view(np.uint64)
    # Word by word: numpy sums a short inner axis far slower than it adds whole columns.
    distance = np.zeros(len(bits.ids), dtype=np.uint16)
    for w in range(_WORDS):
        distance += np.bitwise_count(bits.words[:, w] ^ query[w])
    if n < len(bits.ids):
        # The n-th nearest's distance from a histogram (a distance is at most DIMS), then the
        # chunks no farther: ~0.2 ms for 123,000 chunks, where argpartition took ~1 ms (and
        # left which of the chunks tied at that distance got in to chance).
        reached = np.cumsum(np.bincount(distance, minlength=DIMS + 1))
        near = np.flatnonzero(distance <= int(np.searchsorted(reached, n)))
        order = near[np.lexsort((bits.ids[near], distance[near]))][:n]
    else:
        order = np.lexsort((bits.ids, distance))
    return order.astype(np.intp, copy=False)


def similarities(matrix: npt.NDArray[np.float32], vector: np.ndarray) -> npt.NDArray[np.float32]:
    """The dot product of each row of `matrix` with `vector` (cosine similarity: both are unit
    length), each row summed the same way wherever it sits in the matrix, so equal vectors (copies
    of one text) score exactly equal and tie by chunk id. Not `matrix @ vector`: BLAS computes
    the rows past the last multiple of its kernel's width with another kernel, and a copy there
    scored an ulp apart from one before it, which decided their order (OpenBLAS, x86-64)."""
    scores: npt.NDArray[np.float32] = np.einsum(
        "ij,j->i", matrix, np.asarray(vector, dtype=np.float32).reshape(-1)
    )
    return scores


class FloatVectors:
    """Float vectors read for exact scoring, kept for the rest of one search (its feedback
    pass scores many of the same chunks again): row `i` of `matrix` is chunk `ids[i]`, whose
    document is `doc_ids[docs[i]]`. With a `VectorCache`, vectors other searches read are taken
    from it and those read here are put in it (why that is exact: app/storage/index/vector_cache.py)."""

    def __init__(self, cache: VectorCache | None = None) -> None:
        self.rows: dict[int, int] = {}
        self.doc_ids: list[str] = []
        self._cache = cache
        self._doc_numbers: dict[str, int] = {}
        self._docs: list[int] = []
        self._matrix: npt.NDArray[np.float32] = np.zeros((0, DIMS), dtype=np.float32)
        self._doc_array: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)

    def load(self, conn: sqlean.Connection, chunk_ids: Iterable[int]) -> None:
        """Hold the vectors of those of `chunk_ids` not held yet: from the cache, else read (in
        ascending id order: neighbouring rows share pages). Rows are added in ascending id order
        whichever way they came, so the matrix is the same with or without a cache. Chunks
        deleted meanwhile are simply not found."""
        missing = sorted(set(chunk_ids) - self.rows.keys())
        if not missing:
            return
        if self._cache is None:
            found: dict[int, Entry] = {}
            unread = missing
        else:
            found, unread = self._cache.get_many(missing)
        read = read_entries(conn, unread)
        if not read:
            if not found:
                return
        elif self._cache is not None:
            self._cache.put_many(read.items())
        found.update(read)
        blobs: list[bytes] = []
        base = len(self.rows)
        for chunk_id in missing:
            entry = found.get(chunk_id)
            if entry is None:
                continue
            doc_id, blob = entry
            self.rows[chunk_id] = base + len(blobs)
            number = self._doc_numbers.setdefault(doc_id, len(self.doc_ids))
            if number == len(self.doc_ids):
                self.doc_ids.append(doc_id)
            self._docs.append(number)
            blobs.append(blob)
        block = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, DIMS)
        self._matrix = np.concatenate([self._matrix, block]) if base else block
        self._doc_array = np.asarray(self._docs, dtype=np.intp)

    def vector(self, chunk_id: int) -> npt.NDArray[np.float32] | None:
        row = self.rows.get(chunk_id)
        return None if row is None else self._matrix[row]

    def nearest_per_doc(
        self, chunk_ids: Iterable[int], vector: np.ndarray, limit: int
    ) -> list[tuple[int, str, float]]:
        """Exact cosine similarities of `vector` to those of `chunk_ids` held, each document's
        best chunk only (ties by chunk id), its `limit` best documents, best first:
        (chunk id, document id, similarity)."""
        ids = np.fromiter((i for i in chunk_ids if i in self.rows), dtype=np.int64, count=-1)
        if not len(ids):
            return []
        rows = np.fromiter((self.rows[i] for i in ids.tolist()), dtype=np.intp, count=len(ids))
        scores = similarities(self._matrix[rows], vector)
        docs = self._doc_array[rows]
        best = best_per_doc(ids, docs, scores, limit)
        names = [self.doc_ids[d] for d in docs[best].tolist()]
        return list(zip(ids[best].tolist(), names, scores[best].tolist(), strict=True))


def best_per_doc(
    ids: npt.NDArray[np.int64],
    docs: npt.NDArray[np.intp],
    scores: npt.NDArray[np.float32],
    limit: int,
) -> npt.NDArray[np.intp]:
    """Positions of the `limit` best chunks, each document's best only (ties by chunk id),
    best first: chunk `ids[i]` of document number `docs[i]` scored `scores[i]`."""
    order = np.lexsort((ids, -scores))
    _, first = np.unique(docs[order], return_index=True)
    best: npt.NDArray[np.intp] = order[np.sort(first)][:limit]
    return best


def read_entries(conn: sqlean.Connection, chunk_ids: Sequence[int]) -> dict[int, Entry]:
    """The (document id, vector bytes) of those of `chunk_ids` (ascending) that exist, read
    `_BATCH` ids a statement; a document's id is one string object for all of its chunks."""
    entries: dict[int, Entry] = {}
    doc_ids: dict[str, str] = {}
    for start in range(0, len(chunk_ids), _BATCH):
        rows = conn.execute(
            "SELECT c.id, c.doc_id, c.embedding"
            " FROM json_each(?) AS j CROSS JOIN chunks AS c ON c.id = j.value",
            (json.dumps(chunk_ids[start : start + _BATCH]),),
        ).fetchall()
        for chunk_id, doc_id, blob in rows:
            doc = doc_ids.setdefault(str(doc_id), str(doc_id))
            entries[int(chunk_id)] = (doc, bytes(blob))
    return entries


def read_floats(
    conn: sqlean.Connection, chunk_ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The float vectors of those of `chunk_ids` (ascending) that exist: their ids (ascending)
    and one row each, read `_BATCH` ids a statement."""
    ids: list[int] = []
    blobs: list[bytes] = []
    for start in range(0, len(chunk_ids), _BATCH):
        rows = conn.execute(
            "SELECT c.id, c.embedding"
            " FROM json_each(?) AS j CROSS JOIN chunks AS c ON c.id = j.value",
            (json.dumps(chunk_ids[start : start + _BATCH].tolist()),),
        ).fetchall()
        for chunk_id, blob in rows:
            ids.append(int(chunk_id))
            blobs.append(bytes(blob))
    matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, DIMS)
    return np.asarray(ids, dtype=np.int64), matrix


#: Reads float vectors by chunk id (`read_floats` on some connection).
FloatReader = Callable[
    [npt.NDArray[np.int64]], tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]
]


def database_file(conn: sqlean.Connection) -> str | None:
    """The file `conn`'s main database is, or None (in memory)."""
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(file) or None
    return None


@contextmanager
def floats_of_file(path: str) -> Iterator[FloatReader]:
    """`read_floats` on a read-only connection of its own to the database file `path`, in one
    read transaction (for a thread that has no connection: a partition's build)."""
    conn = sqlean.connect(Path(path).as_uri() + "?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")
        yield lambda chunk_ids: read_floats(conn, chunk_ids)
    finally:
        conn.close()


def scan_per_doc(
    conn: sqlean.Connection, chunk_ids: Sequence[int], vector: np.ndarray, limit: int
) -> list[tuple[int, str, float]]:
    """`FloatVectors.nearest_per_doc` over chunks read `_BATCH` at a time and not kept: for a
    pass over more chunks than a search should hold (all of a user's, when they are in fewer
    documents than asked for). Each batch's `limit` best documents hold the overall `limit`
    best (a document ranked above another in a batch ranks above it overall), and a chunk scores
    the same in any batch, so the ranking is `nearest_per_doc`'s."""
    ids = sorted(set(chunk_ids))
    found: list[tuple[int, str, float]] = []
    for start in range(0, len(ids), _BATCH):
        batch = FloatVectors()
        part = ids[start : start + _BATCH]
        batch.load(conn, part)
        found.extend(batch.nearest_per_doc(part, vector, limit))
    found.sort(key=lambda hit: (-hit[2], hit[0]))
    best: dict[str, tuple[int, str, float]] = {}
    for hit in found:
        best.setdefault(hit[1], hit)
        if len(best) == limit:
            break
    return list(best.values())
