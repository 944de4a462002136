"""Keyword ranking, one definition for both engines: BM25 over each user's own postings, read
best first.

What both engines store (revision 0013; SQLite's FTS5 table is gone):

- `chunk_terms`: a chunk's terms (its document's title, then its text, as `words.terms` makes
  them), and their count, its `length`. The record: everything below is derived from it by
  triggers, so every path that writes or deletes it (a cascade included) keeps them in step.
- `chunk_postings`: per (user, term, chunk) the term's count in the chunk (`tf`), the chunk's
  length and the posting's `impact` (`IMPACT_SQL`). Keyed (user, term, chunk) to look a posting
  up, and indexed (user, term, impact descending, chunk) to read a term's best postings first.
- `keyword_df`: per (user, term), how many of the user's chunks hold the term.
- `keyword_stats`: per user, how many chunks the user has and their total length.

The score is BM25 with FTS5's constants and arithmetic (k1 = 1.2, b = 0.75, idf = ln((N - n +
0.5) / (n + 0.5)), 1e-6 where that is not positive), N, n and the mean length taken over the
user's own chunks: one tenant's documents never move another's scores, and both engines score
the same rows with the same arithmetic here in Python, so they give the same answers to the bit.

Cost bounded whatever the user's size. Scoring every chunk that holds a query word grows with
the corpus: at a million chunks a frequent word is in 30,000-170,000 of them (0.3-1 s a search,
FTS5 and PostgreSQL alike). So each word's postings are read best first, at most `CHAMPIONS` of
them at first (its "champion list", Manning et al., Introduction to Information Retrieval,
7.1.3): a word in fewer chunks is read whole, and its part of every score is exact; a longer
list is cut. A chunk's partial score is what its read postings give; the best `RESCORED`
chunks by it have the postings of the cut words looked up (one probe each) and are ranked by
their exact scores. The answer is then exact when no chunk left out could reach the last
document's score: what a cut list's unread postings can add is bounded by the impact of its
last posting read (the threshold algorithm's test, Fagin et al. 2001). When that is not shown,
the lists are read four times deeper (and four times more chunks rescored), while the read
stays within `BUDGET` postings in all; a scope whose own postings cost less to look up than
reading on is looked up instead (exact). Beyond the budget the answer is kept as it is,
approximate: a chunk none of whose postings was read is not found, one outside the rescored
few keeps its partial score, and when the best postings all sit in a few documents, fewer
documents than asked for may come back. Up to `CHAMPIONS` chunks
per word every answer is exact (Cranfield: 2,090 chunks, every answer exact); with longer lists
most answers are still shown exact, those of several frequent words alone are the ones that
stop at the budget. `scripts/bench.py` states at each size how much of the exact top 10 an
answer shares.

A posting's impact is its BM25 part at a fixed mean length (`IMPACT_MEAN`): the order of a
term's postings (more occurrences, in a shorter chunk, first) must not change with every write,
as the user's mean length does. It only orders a list; scores use the true mean.

A scope (a persona, a metadata condition, listed documents) is a sorted array of chunk ids. A
small one (at most `SCOPE_PROBED` chunks) has its chunks' postings looked up, so its answer is
exact and costs what the scope holds; a larger one filters the best-first postings and reads
deeper while too few documents remain.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.storage.index import TIE_DECIMALS, Ranked, best_chunks_per_doc

#: BM25 constants, as FTS5's.
K1 = 1.2
B = 0.75
#: The mean chunk length (in terms) that a posting's impact assumes.
IMPACT_MEAN = 100.0
#: A posting's impact from `tf` and `length` (columns of the row it is computed for): its BM25
#: part over idf at the mean length `IMPACT_MEAN`, up to a constant factor. SQL of both engines
#: (every constant a double, the operations in the same order, so the same double results).
IMPACT_SQL = (
    f"CAST(tf AS DOUBLE PRECISION) / (tf + CAST({K1 * (1 - B)!r} AS DOUBLE PRECISION)"
    f" + CAST({K1 * B / IMPACT_MEAN!r} AS DOUBLE PRECISION) * length)"
)
#: Postings read per query word, best first, before deepening (see the module docstring).
CHAMPIONS = 1000
#: Chunks whose cut words' postings are looked up to score them exactly (at least the chunks a
#: first pass collapses, `CHUNKS_PER_DOC` per wanted document; four times more with each
#: deeper read).
RESCORED = 200
#: A cut answer that cannot be shown exact reads deeper (four times the postings per word)
#: while the deeper read would hold at most this many postings in all.
BUDGET = 16_000
#: A scope of at most this many chunks has its postings looked up instead of filtered.
SCOPE_PROBED = 2000
#: The first pass collapses this many best chunks per wanted document.
CHUNKS_PER_DOC = 4

#: (term, chunk id, tf, length) rows of `chunk_postings`.
Posting = tuple[str, int, int, int]


@dataclass(frozen=True)
class Statistics:
    """The user's chunks and their total length, and each asked term's document frequency
    (terms none of the user's chunks hold are absent)."""

    chunks: int
    words: int
    df: dict[str, int]


@dataclass(frozen=True)
class Start:
    """Read the user's `Statistics` for `terms` and, unless `limit` is None, each term's best
    `limit` postings (impact descending, then chunk id): answered (Statistics, [Posting])."""

    terms: list[str]
    limit: int | None


@dataclass(frozen=True)
class Best:
    """Each term's best `limit` postings, as `Start` reads them: answered [Posting]."""

    terms: list[str]
    limit: int


@dataclass(frozen=True)
class Lookup:
    """The postings of `terms` in `chunk_ids` (those that exist): answered [Posting]."""

    terms: list[str]
    chunk_ids: list[int]


@dataclass(frozen=True)
class Held:
    """The document id of each chunk as the process already holds it (a kept matrix), None
    where it does not: answered without a read."""

    chunk_ids: list[int]


@dataclass(frozen=True)
class Docs:
    """The document id of each chunk, in order (None for a chunk that is gone)."""

    chunk_ids: list[int]


Step = Start | Best | Lookup | Held | Docs
#: A keyword ranking: yields the reads it needs (engines answer them, see `sqlite_keywords`
#: and `postgres_keywords`), returns the documents.
KeywordPlan = Generator[Step, Any, list[Ranked]]


def length(terms: int) -> int:
    """A chunk's length for BM25: its number of terms."""
    return terms


def idf(chunks: int, df: int) -> float:
    """FTS5's inverse document frequency."""
    value = math.log((chunks - df + 0.5) / (df + 0.5))
    return value if value > 0 else 1e-6


def rank(
    terms: Sequence[str],
    depth: int,
    scope: np.ndarray | None = None,
    *,
    champions: int | None = None,
) -> KeywordPlan:
    """The `depth` documents that best match `terms` (distinct), each with its best chunk,
    best first; within `scope` (sorted chunk ids) when given. `champions` postings of each
    term are read first (`CHAMPIONS` unless given)."""
    wanted = list(terms)
    if not wanted or depth <= 0 or (scope is not None and len(scope) == 0):
        return []
    if scope is not None and len(scope) <= SCOPE_PROBED:
        stats, _ = yield Start(wanted, None)
        weights = _weights(stats, wanted)
        if not weights:
            return []
        rows = yield Lookup(list(weights), [int(c) for c in scope])
        ids, scores = score(rows, weights, stats)
        return (yield from _collapse(ids, scores, depth))
    limit = champions or CHAMPIONS
    stats, rows = yield Start(wanted, limit)
    weights = _weights(stats, wanted)
    if not weights:
        return []
    rescored = max(RESCORED, CHUNKS_PER_DOC * depth)
    while True:
        cut = [t for t in weights if stats.df[t] > limit]
        unseen = _unseen_bound(rows, cut, weights, stats)
        if scope is not None:
            rows = [r for r, inside in zip(rows, _within(rows, scope), strict=True) if inside]
        ids, scores = score(rows, weights, stats)
        outside = 0.0
        if cut and len(ids):
            ids, scores, outside = yield from _rescore(
                rows, ids, scores, cut, weights, stats, rescored
            )
        ranked = yield from _collapse(ids, scores, depth)
        if not cut:
            return ranked
        # Exact when no chunk left unscored could reach the last document's score: one in none
        # of the lists read (at most `unseen`), one scored from part of its postings (at most
        # its partial score, `outside` at best, plus `unseen`).
        if len(ranked) >= depth and ranked[-1].score > outside + unseen:
            return ranked
        deeper = sum(min(stats.df[t], 4 * limit) for t in weights)
        if scope is not None and len(scope) * len(weights) <= min(deeper, BUDGET):
            # Looking the scope's postings up costs less than reading on (and is within the
            # budget): exact.
            rows = yield Lookup(list(weights), [int(c) for c in scope])
            ids, scores = score(rows, weights, stats)
            return (yield from _collapse(ids, scores, depth))
        if deeper > BUDGET:
            return ranked
        limit *= 4
        rescored *= 4
        rows = yield Best(list(weights), limit)


def impact(tf: int, length: int) -> float:
    """`IMPACT_SQL` in Python (the same operations in the same order)."""
    return tf / (tf + K1 * (1 - B) + K1 * B / IMPACT_MEAN * length)


def _unseen_bound(
    rows: Sequence[Posting], cut: list[str], weights: dict[str, float], stats: Statistics
) -> float:
    """The most a chunk can get from the postings of the `cut` terms not among `rows`: each
    such posting's impact is at most its list's last one read, and a score part is bounded by
    an impact (`IMPACT_MEAN` against the user's mean length: a shorter mean weighs length more,
    which only lowers the part; a longer one can raise it, by at most the ratio)."""
    if not cut:
        return 0.0
    last = dict.fromkeys(cut, math.inf)
    for term, _, tf, size in rows:
        if term in last:
            last[term] = min(last[term], impact(tf, size))
    mean = stats.words / stats.chunks
    ratio = min(1.0, IMPACT_MEAN / mean) if mean > 0 else 1.0
    # A list none of whose postings was read (not expected: a cut list has more than were
    # asked for) bounds nothing: its part at the most, k1 + 1 times its idf.
    return sum(
        weights[t] * (K1 + 1) / (1 + ratio * (1 / last[t] - 1))
        if 0 < last[t] < math.inf
        else weights[t] * (K1 + 1)
        for t in cut
    )


def _weights(stats: Statistics, wanted: list[str]) -> dict[str, float]:
    """The idf of each wanted term some chunk of the user holds, in the query's order."""
    if stats.chunks <= 0:
        return {}
    return {t: idf(stats.chunks, stats.df[t]) for t in wanted if stats.df.get(t, 0) > 0}


def score(
    rows: Sequence[Posting], weights: dict[str, float], stats: Statistics
) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk of `rows` (ids ascending) and its BM25 score from those postings (rows of
    terms not in `weights` are ignored; a (term, chunk) pair is expected once)."""
    order = {t: i for i, t in enumerate(weights)}
    kept = [r for r in rows if r[0] in order]
    if not kept:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    term = np.fromiter((order[r[0]] for r in kept), dtype=np.int64, count=len(kept))
    chunk = np.fromiter((r[1] for r in kept), dtype=np.int64, count=len(kept))
    tf = np.fromiter((r[2] for r in kept), dtype=np.float64, count=len(kept))
    size = np.fromiter((r[3] for r in kept), dtype=np.float64, count=len(kept))
    mean = stats.words / stats.chunks
    idfs = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))[term]
    parts = idfs * (tf * (K1 + 1)) / (tf + K1 * (1 - B + B * size / mean))
    # Summed in (chunk, term) order, whatever order the rows came in: the same doubles on both
    # engines for the same rows.
    by = np.lexsort((term, chunk))
    chunk, parts = chunk[by], parts[by]
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
    sums: np.ndarray = np.add.reduceat(parts, starts)
    return chunk[starts], sums


def _within(rows: Sequence[Posting], scope: np.ndarray) -> np.ndarray:
    if not rows:
        return np.zeros(0, dtype=bool)
    ids = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    at = np.minimum(np.searchsorted(scope, ids), len(scope) - 1)
    inside: np.ndarray = scope[at] == ids
    return inside


def _order(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Best first: higher scores, equal ones (to `TIE_DECIMALS`) by chunk id."""
    return np.lexsort((ids, -np.round(scores, TIE_DECIMALS)))


def _rescore(
    rows: list[Posting],
    ids: np.ndarray,
    scores: np.ndarray,
    cut: list[str],
    weights: dict[str, float],
    stats: Statistics,
    rescored: int,
) -> Generator[Step, Any, tuple[np.ndarray, np.ndarray, float]]:
    """The best `rescored` chunks by partial score, scored exactly (their postings of the cut
    terms looked up); the others keep their partial scores, the best of which comes back too
    (0 when every chunk was rescored)."""
    order = _order(ids, scores)
    best = ids[order[:rescored]]
    outside = float(scores[order[rescored:]].max()) if len(order) > rescored else 0.0
    found: list[Posting] = yield Lookup(cut, best.tolist())
    chosen = set(best.tolist())
    held = {(r[0], r[1]) for r in rows if r[1] in chosen}
    full = [r for r in rows if r[1] in chosen] + [r for r in found if (r[0], r[1]) not in held]
    exact_ids, exact = score(full, weights, stats)
    at = np.searchsorted(ids, exact_ids)
    scores = scores.copy()
    scores[at] = exact
    return ids, scores, outside


def _collapse(
    ids: np.ndarray, scores: np.ndarray, depth: int
) -> Generator[Step, Any, list[Ranked]]:
    """Documents by their best chunk, best first, at most `depth`: the best chunks' documents
    read, more of them while they hold too few documents."""
    ordered = _order(ids, scores)
    n = CHUNKS_PER_DOC * depth
    while True:
        top = ordered[:n]
        docs = yield from _docs(ids[top].tolist())
        ranked = best_chunks_per_doc(
            [
                (doc, int(c), float(s))
                for doc, c, s in zip(docs, ids[top].tolist(), scores[top].tolist(), strict=True)
                if doc is not None
            ],
            depth,
        )
        if len(ranked) >= depth or n >= len(ordered):
            return ranked
        n *= 4


def _docs(chunk_ids: list[int]) -> Generator[Step, Any, list[str | None]]:
    """The document of each chunk: those the process holds (`Held`), the others read."""
    held: list[str | None] = yield Held(chunk_ids)
    lacking = [c for c, d in zip(chunk_ids, held, strict=True) if d is None]
    if not lacking:
        return held
    found = dict(zip(lacking, (yield Docs(lacking)), strict=True))
    return [found[c] if d is None else d for c, d in zip(chunk_ids, held, strict=True)]


def run_sync(plan: KeywordPlan, answer: Any) -> list[Ranked]:
    """Drive `plan`, `answer(step)` answering each read."""
    try:
        step = next(plan)
        while True:
            step = plan.send(answer(step))
    except StopIteration as done:
        ranked: list[Ranked] = done.value
        return ranked


async def run_async(plan: KeywordPlan, answer: Any) -> list[Ranked]:
    """Drive `plan`, `await answer(step)` answering each read."""
    try:
        step = next(plan)
        while True:
            step = plan.send(await answer(step))
    except StopIteration as done:
        ranked: list[Ranked] = done.value
        return ranked
