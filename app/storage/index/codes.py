"""Four bits a dimension of each chunk's float vector, kept with a large user's partition
(partition.py, SQLite): a pass ranks its few hundred candidates by these first and reads the
float vectors of only the best few.

Why: at a million chunks the exact scores of a pass's 400 candidates were most of its time, the
reads of their float vectors (scattered rows of a 5 GB file, 7-30 ms; docs/scaling.md), not the
arithmetic. A chunk's sign bits are in the partition already; three more bits a dimension (its
magnitude's octile among the user's, 144 bytes a chunk) estimate its similarity to the query
closely enough that the true best chunks of the 400 are among the estimate's best
`RESCORED_MIN` (sqlite.py), whose float vectors are then read and scored exactly as before. So the
scores a search returns stay exact; only which chunks get them depends on the estimate.

How: per dimension, the thresholds are the octiles of |x| in a sample of the user's float
vectors and each of the eight levels is the mean |x| of the sample between its thresholds
(a Lloyd-Max quantizer's centroid condition); a chunk's estimate is sum_i q_i * sign_i *
level(code_i) with the query's own floats (asymmetric: only the chunk is quantized).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.models.knowledge import EMBEDDING_DIMS as DIMS

#: Bits of a dimension's magnitude; with its sign bit, 4 bits a dimension.
MAG_BITS = 3
LEVELS = 1 << MAG_BITS
#: Bytes of one chunk's magnitude codes (`MAG_BITS` planes of `DIMS` bits).
CODE_BYTES = MAG_BITS * DIMS // 8


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Per dimension, `LEVELS - 1` ascending thresholds of |x| and `LEVELS` levels."""

    thresholds: npt.NDArray[np.float32]
    levels: npt.NDArray[np.float32]

    @property
    def nbytes(self) -> int:
        return int(self.thresholds.nbytes + self.levels.nbytes)


def fit(sample: np.ndarray) -> Quantizer:
    """The quantizer of a sample of float vectors (rows)."""
    magnitudes = np.abs(np.asarray(sample, dtype=np.float32))
    shares = np.arange(1, LEVELS) / LEVELS
    thresholds = np.quantile(magnitudes, shares, axis=0).astype(np.float32)
    code = _code(magnitudes, thresholds)
    levels = np.empty((LEVELS, DIMS), dtype=np.float32)
    bounds = np.concatenate([np.zeros((1, DIMS)), thresholds, thresholds[-1:]])
    for level in range(LEVELS):
        inside = code == level
        count = inside.sum(axis=0)
        total = np.where(inside, magnitudes, 0).sum(axis=0)
        # A level no sample fell in (a tiny sample): its lower bound.
        levels[level] = np.where(count > 0, total / np.maximum(count, 1), bounds[level])
    return Quantizer(thresholds, levels)


def _code(magnitudes: np.ndarray, thresholds: np.ndarray) -> npt.NDArray[np.uint8]:
    code = np.zeros(magnitudes.shape, dtype=np.uint8)
    for threshold in thresholds:
        code += magnitudes > threshold
    return code


def encode(quantizer: Quantizer, matrix: np.ndarray) -> npt.NDArray[np.uint8]:
    """Each row's magnitude codes, `CODE_BYTES` each: bit plane b (bit b of each dimension's
    code) in bytes `b * DIMS // 8` on, packed as the sign bits are (least significant first)."""
    code = _code(np.abs(np.atleast_2d(np.asarray(matrix, dtype=np.float32))), quantizer.thresholds)
    planes = [np.packbits((code >> b) & 1, axis=1, bitorder="little") for b in range(MAG_BITS)]
    return np.concatenate(planes, axis=1)


def estimates(
    quantizer: Quantizer,
    words: npt.NDArray[np.uint64],
    codes: npt.NDArray[np.uint8],
    vector: np.ndarray,
) -> npt.NDArray[np.float32]:
    """The estimated similarity to `vector` of each chunk of sign bits `words` (the bit
    vectors' 64-bit words) and magnitude `codes`: a table of the query's 16 products a
    dimension (sign x level), looked up by each chunk's 4-bit code (~0.4 ms for 400 chunks;
    decoding to floats and a dot product took ~2 ms)."""
    code = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1, bitorder="little")
    code <<= MAG_BITS
    step = DIMS // 8
    for b in range(MAG_BITS):
        plane = np.unpackbits(codes[:, b * step : (b + 1) * step], axis=1, bitorder="little")
        code |= plane << b
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    # Row c of the table: the query's values times each dimension's value for code c (the
    # sign bit on top of the magnitude's three).
    table = np.concatenate([-quantizer.levels, quantizer.levels]) * query
    at = code.astype(np.intp)
    at += np.arange(0, 2 * LEVELS * DIMS, 2 * LEVELS)
    scores: npt.NDArray[np.float32] = np.take(table.T.ravel(), at).sum(axis=1)
    return scores
