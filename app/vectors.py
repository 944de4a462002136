"""The chunk vector index (sqlite-vec `vec0`, cosine, partitioned by user) behind one interface.

Every call takes the caller's session, so index changes commit or roll back with the rows they
belong to. sqlite-vec 0.1.9 cannot `INSERT OR REPLACE` into vec0; `put` deletes then inserts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.embedding import DIMS, Vectors

#: sqlite-vec's ceiling for `k` in one KNN query.
MAX_K = 4096


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


class VectorIndex:
    async def put(
        self, session: AsyncSession, *, user_id: int, chunk_ids: Sequence[int], vectors: Vectors
    ) -> None:
        if not chunk_ids:
            return
        await self.delete(session, chunk_ids)
        await session.execute(
            text("INSERT INTO chunk_vectors(chunk_id, user_id, embedding) VALUES (:c, :u, :e)"),
            [
                {"c": cid, "u": user_id, "e": to_blob(vec)}
                for cid, vec in zip(chunk_ids, vectors, strict=True)
            ],
        )

    # vec0 answers `chunk_id = ?` with a point lookup but `chunk_id IN (...)` with a scan of
    # every user's vectors (~35 ms per 100,000 rows, per statement): so one `=` per id.

    async def delete(self, session: AsyncSession, chunk_ids: Iterable[int]) -> None:
        ids = list(chunk_ids)
        if ids:
            await session.execute(
                text("DELETE FROM chunk_vectors WHERE chunk_id = :c"), [{"c": i} for i in ids]
            )

    async def get(self, session: AsyncSession, chunk_ids: Iterable[int]) -> dict[int, Vectors]:
        ids = list(chunk_ids)
        out: dict[int, Vectors] = {}
        for start in range(0, len(ids), 5000):
            rows = await session.execute(
                text(
                    "SELECT v.chunk_id, v.embedding"
                    " FROM json_each(:ids) AS j CROSS JOIN chunk_vectors AS v"
                    " ON v.chunk_id = j.value"
                ),
                {"ids": json.dumps(ids[start : start + 5000])},
            )
            for cid, blob in rows:
                out[int(cid)] = from_blob(blob)
        return out

    async def nearest(
        self, session: AsyncSession, *, user_id: int, vector: np.ndarray, k: int
    ) -> list[tuple[int, float]]:
        """The user's `k` (at most `MAX_K`) nearest chunks: (chunk id, cosine distance), nearest
        first. A KNN pass reads the user's whole partition; its cost also grows with `k`."""
        rows = await session.execute(
            text(
                "SELECT chunk_id, distance FROM chunk_vectors"
                " WHERE embedding MATCH :q AND k = :k AND user_id = :u ORDER BY distance"
            ),
            {"q": to_blob(vector), "k": min(k, MAX_K), "u": user_id},
        )
        return [(int(cid), float(dist)) for cid, dist in rows]

    async def distances(
        self, session: AsyncSession, *, vector: np.ndarray, chunk_ids: Sequence[int]
    ) -> list[tuple[int, float]]:
        """Exact cosine distance from `vector` to each of `chunk_ids` (unordered).

        One point lookup per id (about 15-20 us each): the driving table must be the id list,
        hence CROSS JOIN. `chunk_id IN (...)` instead makes vec0 scan every user's vectors."""
        out: list[tuple[int, float]] = []
        for start in range(0, len(chunk_ids), 5000):
            rows = await session.execute(
                text(
                    "SELECT v.chunk_id, vec_distance_cosine(v.embedding, :q)"
                    " FROM json_each(:ids) AS j CROSS JOIN chunk_vectors AS v"
                    " ON v.chunk_id = j.value"
                ),
                {"q": to_blob(vector), "ids": json.dumps(list(chunk_ids[start : start + 5000]))},
            )
            out.extend((int(cid), float(dist)) for cid, dist in rows)
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


assert DIMS == 384
