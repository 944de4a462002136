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
(`candidates`), then scores only the best few hundred exactly (`nearest_per_doc`). Measured at 100,000
chunks in one partition: vec0's float KNN takes ~80 ms (150 MB of vectors per query); vec0's own
KNN over the bit column takes 18-40 ms (its top-k step costs O(partition x k), 35 ms at k=256);
reading the partition's bit blocks and ranking them in numpy takes ~5 ms whatever the number of
candidates. So vec0 stores and maintains the bit vectors (chunking, validity, deletes) and the
search reads its blocks directly: `_vector_chunks00` (one blob of `chunk_size` vectors per block)
beside `_chunks` (the block's partition, validity bitmap and rowids). That layout is sqlite-vec
0.1.9's (pinned in pyproject.toml); tests/index/test_sqlite.py checks that the scan agrees
with vec0's own KNN, so an upgrade that changes it fails there, not in production.

sqlite-vec 0.1.9 cannot `INSERT OR REPLACE` into vec0; `put` deletes then inserts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.embedding import DIMS, Vectors

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

    async def candidates(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        vector: np.ndarray,
        n: int,
        within: np.ndarray | None = None,
    ) -> tuple[list[int], int]:
        """The coarse pass: the ids of the user's (at most) `n` chunks nearest to `vector` by
        Hamming distance of the sign bits, nearest first, and how many chunks were eligible.
        `within` (a sorted int64 array of chunk ids) restricts the pass to those chunks before
        the top `n` are taken."""
        rows = (
            await session.execute(
                text(
                    "SELECT c.validity, c.rowids, v.vectors"
                    " FROM chunk_vectors_chunks AS c"
                    " JOIN chunk_vectors_vector_chunks00 AS v ON v.rowid = c.chunk_id"
                    " WHERE c.partition00 = :u"
                ),
                {"u": user_id},
            )
        ).all()
        if not rows:
            return [], 0
        valid = np.unpackbits(
            np.frombuffer(b"".join(r[0] for r in rows), dtype=np.uint8), bitorder="little"
        ).view(bool)
        ids = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int64)
        words = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint64).reshape(-1, _WORDS)
        keep = np.flatnonzero(valid)
        if within is not None:
            keep = keep[np.isin(ids[keep], within, assume_unique=True)]
        if not len(keep):
            return [], 0
        query = quantize(vector)[0].view(np.uint64)
        # Word by word: numpy sums a short inner axis far slower than it adds whole columns.
        distance = np.zeros(len(keep), dtype=np.uint16)
        selected = words[keep]
        for w in range(_WORDS):
            distance += np.bitwise_count(selected[:, w] ^ query[w])
        kept = ids[keep]
        if n < len(keep):
            top = np.argpartition(distance, n)[:n]
            order = top[np.lexsort((kept[top], distance[top]))]
        else:
            order = np.lexsort((kept, distance))
        return kept[order].tolist(), len(keep)

    async def nearest_per_doc(
        self, session: AsyncSession, *, vector: np.ndarray, chunk_ids: Sequence[int], limit: int
    ) -> list[tuple[int, str, float]]:
        """Exact cosine distances from `vector` to `chunk_ids` (those that still exist), each
        document's nearest chunk only, its `limit` nearest documents: (chunk id, document id,
        distance), unordered. The float vectors live in the chunk rows, looked up in ascending
        id order (neighbouring rows share pages); SQL keeps one row per document, so only the
        winners cross into Python."""
        ids = sorted(set(chunk_ids))
        out: list[tuple[int, str, float]] = []
        blob = to_blob(vector)
        for start in range(0, len(ids), _BATCH):
            rows = await session.execute(
                text(
                    # SQLite takes a bare column (c.id) from the row that gave the min().
                    "SELECT c.id, c.doc_id, min(vec_distance_cosine(c.embedding, :q)) AS d"
                    " FROM json_each(:ids) AS j CROSS JOIN chunks AS c ON c.id = j.value"
                    " GROUP BY c.doc_id ORDER BY d, c.id LIMIT :n"
                ),
                {"q": blob, "ids": json.dumps(ids[start : start + _BATCH]), "n": limit},
            )
            out.extend((int(cid), str(doc), float(dist)) for cid, doc, dist in rows)
        return out

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
