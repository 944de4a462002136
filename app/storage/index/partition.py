"""An inverted-file (IVF) partition of a large user's sign-bit vectors, kept in memory (SQLite):
a semantic pass ranks the bits of the few lists nearest the query instead of all of them.

Why: the coarse pass reads and ranks every bit vector of the user (sqlite_vectors.py), which
grows with the user: at 1,000,000 chunks reading them took ~55 ms and ranking them ~30 ms a
pass (figures: docs/scaling.md). A partition is built once per process and user and kept;
a pass then scores the `lists` centroids (one small matrix product), takes the chunks of the
`probes` lists nearest the query (~12% of the user) and ranks only those by Hamming distance.
Their best candidates are estimated from four bits a dimension of each chunk kept with the
partition (codes.py: the sign bits and a magnitude code), and the best of those estimates are
scored exactly with their float vectors, which are read for those only.

How: the centroids are spherical k-means on a sample of the user's sign vectors; each chunk
belongs to the list of the centroid its sign vector (each dimension +1 or -1) is nearest to, so
that assigning a chunk needs only the bits every pass reads anyway. With a scope, only the
scope's chunks of the probed lists count (sliced from the scope's rows of the partition, looked
up once per resolved scope: `PartitionStore.scope_rows`), and lists are added, nearest first,
until enough of them are found (so a scope never finds fewer candidates than the whole user
would).

The codes are made from every chunk's float vector when the partition is built (read on a
read-only connection of the build's own: a million took 10-20 s more than a build without them
here) and, when it is updated, from the new chunks' only. A partition whose codes would not fit
`max_bytes` is kept without them (every candidate's float vector is then read, as before).

Approximate: a near chunk in a list not probed is missed. Only users of at least
`Settings.partition_min_chunks` chunks get a partition (smaller ones keep the coarse pass over
all their bits); the nDCG@10 on Cranfield with partitions forced on for every user is in
docs/scaling.md.

Fresh: a partition holds one snapshot of the user's chunks, named by `snapshot_key`: the
user's change seq (every write that changes or deletes a document's chunks takes one, in its
transaction: app/services/feed.py) and the user's largest chunk id (every insert raises it:
ids are never reused, revision 0004). Two snapshots with the same key hold the same chunks, so
a write by any process on the file changes the key that the next pass reads in its own
snapshot. A pass that finds another key updates the partition from its snapshot's bits: the
chunks still there keep their lists, new ones join the list of their nearest centroid, the
others are dropped. Half the chunks new since the centroids were trained: trained again.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import sqlean

from app.models.knowledge import EMBEDDING_DIMS as DIMS
from app.storage.index import codes as codes_module
from app.storage.index.codes import CODE_BYTES, Quantizer
from app.storage.index.sqlite_vectors import Bits, FloatReader

log = logging.getLogger(__name__)

#: About this many chunks a list (at least `MIN_LISTS` lists).
LIST_SIZE = 4096
MIN_LISTS = 32
#: A pass probes `lists // PROBE_SHARE` lists, at least `PROBE_MIN` (deeper passes more): with 16
#: and 4, Cranfield's semantic nDCG@10 with partitions forced fell 0.0063 below the full pass's,
#: with 8 and 8 (8 of its 32 lists) 0.0048-0.0053, with 8 and 12 it was 0.0002 above it. A
#: million chunks make 244 lists, of which a pass probes 30 either way.
PROBE_SHARE = 8
PROBE_MIN = 12
#: The centroids are trained on this many sampled float vectors a list, for this many rounds.
TRAIN_PER_LIST = 64
ROUNDS = 8
#: A scope's membership is a bitmap when its span of ids is at most this (or 16x its size).
_BITMAP_MIN = 1 << 20
#: Sign vectors are assigned to lists this many at a time (a float32 block of ~50 MB).
_ASSIGN_BATCH = 32768

#: The quantizer of the codes (codes.py) is fitted on this many sampled float vectors; codes
#: are made from float vectors read this many at a time.
FIT_SAMPLE = 16384
_READ_BATCH = 50_000
#: What a partition costs a chunk besides its centroids: its id, sign bits, sorted id and list.
CHUNK_BYTES = 8 + DIMS // 8 + 8 + 4

#: (the user's change seq, the user's largest chunk id) of a snapshot.
Key = tuple[int, int]

#: Opens a `FloatReader` for a build, closed after it.
FloatSource = Callable[[], AbstractContextManager[FloatReader]]


def snapshot_key(conn: sqlean.Connection, user_id: int) -> Key:
    """The key of the user's chunks in `conn`'s snapshot (two index lookups)."""
    seq = conn.execute(
        "SELECT last_seq FROM knowledge_feeds WHERE user_id = ?", (user_id,)
    ).fetchone()
    top = conn.execute("SELECT max(id) FROM chunks WHERE user_id = ?", (user_id,)).fetchone()
    return (int(seq[0]) if seq else 0, int(top[0]) if top and top[0] is not None else 0)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Partition:
    """One user's chunks in `len(centroids)` lists: `bits` grouped by list, list `l` being rows
    `offsets[l]:offsets[l + 1]`; `sorted_ids` (ascending) and `sorted_lists` give a chunk's list
    by id (for updates)."""

    key: Key
    centroids: npt.NDArray[np.float32]
    bits: Bits
    offsets: npt.NDArray[np.intp]
    sorted_ids: npt.NDArray[np.int64]
    sorted_lists: npt.NDArray[np.int32]
    #: How many chunks had no list when the centroids were trained (retrain past half).
    trained_on: int
    #: Each chunk's magnitude codes (codes.py), row for row with `bits`, and their quantizer;
    #: None when the float vectors could not be read or the codes would not fit.
    codes: npt.NDArray[np.uint8] | None = None
    quantizer: Quantizer | None = None

    @property
    def nbytes(self) -> int:
        return int(
            self.centroids.nbytes
            + self.bits.ids.nbytes
            + self.bits.words.nbytes
            + self.offsets.nbytes
            + self.sorted_ids.nbytes
            + self.sorted_lists.nbytes
            + (0 if self.codes is None else self.codes.nbytes)
            + (0 if self.quantizer is None else self.quantizer.nbytes)
        )

    @property
    def probes(self) -> int:
        return min(len(self.centroids), max(PROBE_MIN, len(self.centroids) // PROBE_SHARE))

    def __len__(self) -> int:
        return len(self.bits.ids)

    def gather(
        self, vector: np.ndarray, probes: int, want: int, scope: ScopeRows | None
    ) -> tuple[Bits, npt.NDArray[np.intp], bool]:
        """The chunks of the `probes` lists nearest `vector` (those of a scope, given as its
        rows here: `scope_rows`), more lists while fewer than `want` were found: their bits, their rows
        in the partition (to look up their codes: copying every gathered chunk's codes cost
        more than the estimates), and whether that is every list."""
        scores = self.centroids @ np.asarray(vector, dtype=np.float32).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        taken = 0
        found = 0
        rows: list[npt.NDArray[np.int32]] = []
        spans: list[tuple[int, int]] = []
        # Where each list's rows start among the scope's (sorted) rows.
        bounds = None if scope is None else np.searchsorted(scope, self.offsets)
        step = max(1, probes)
        while taken < len(order) and (taken < probes or found < want):
            for i in order[taken : taken + step].tolist():
                # A list is a contiguous run of rows.
                start, end = int(self.offsets[i]), int(self.offsets[i + 1])
                if scope is None or bounds is None:
                    spans.append((start, end))
                    found += end - start
                else:
                    kept = scope[int(bounds[i]) : int(bounds[i + 1])]
                    rows.append(kept)
                    found += len(kept)
            taken += step
        everything = taken >= len(order)
        if scope is None:
            # Whole lists: slices, no gather of scattered rows.
            if not spans:
                return Bits(self.bits.ids[:0], self.bits.words[:0]), _NO_ROWS, everything
            return (
                Bits(
                    np.concatenate([self.bits.ids[a:b] for a, b in spans]),
                    np.concatenate([self.bits.words[a:b] for a, b in spans]),
                ),
                np.concatenate([np.arange(a, b, dtype=np.intp) for a, b in spans]),
                everything,
            )
        # A scope's chunks of those lists: their rows, then one take (a boolean selection per
        # list of a quarter of a million-chunk user's chunks cost ~3 ms a pass).
        picked = np.concatenate(rows).astype(np.intp) if rows else _NO_ROWS
        return (
            Bits(self.bits.ids[picked], np.take(self.bits.words, picked, axis=0)),
            picked,
            everything,
        )


_NO_ROWS = np.zeros(0, dtype=np.intp)


#: Which of some chunk ids are in a scope.
Membership = Callable[[np.ndarray], npt.NDArray[np.bool_]]
#: A scope's chunks as rows of a partition, ascending (so each list's are a run of them).
ScopeRows = npt.NDArray[np.int32]
#: Scopes whose rows a store keeps (app/storage/index/scope_cache.py keeps their ids): at most
#: 4 bytes a chunk of the user each.
SCOPES_KEPT = 4


def _membership(within: np.ndarray) -> Membership:
    """A test of which of some chunk ids are in `within` (sorted ids): a bitmap over the span
    of `within` when that is not much larger than it (one lookup an id: a quarter of a
    million-chunk user took ~30 ms a pass by binary search, ~1 ms so), else binary search."""
    if not len(within):
        return lambda ids: np.zeros(len(ids), dtype=bool)
    low, high = int(within[0]), int(within[-1])
    if high - low <= max(_BITMAP_MIN, 16 * len(within)):
        bitmap = np.zeros(high - low + 1, dtype=bool)
        bitmap[within - low] = True

        def in_bitmap(ids: np.ndarray) -> npt.NDArray[np.bool_]:
            inside = (ids >= low) & (ids <= high)
            hit = np.zeros(len(ids), dtype=bool)
            hit[inside] = bitmap[ids[inside] - low]
            return hit

        return in_bitmap

    def searched(ids: np.ndarray) -> npt.NDArray[np.bool_]:
        at = np.minimum(np.searchsorted(within, ids), len(within) - 1)
        hit: npt.NDArray[np.bool_] = within[at] == ids
        return hit

    return searched


def build(
    bits: Bits, key: Key, old: Partition | None, seed: int, floats: FloatReader | None = None
) -> Partition:
    """The partition of `bits` (a snapshot's, named `key`), keeping `old`'s lists and centroids
    for the chunks it holds unless half of `bits` are new to it. The centroids are trained on the
    chunks' sign vectors; with `floats` (a reader of float vectors by id, on a connection of
    the build's own when it runs on a thread of its own), the chunks get their codes too, those
    `old` holds keeping theirs."""
    n = len(bits.ids)
    lists = np.full(n, -1, dtype=np.int32)
    held = np.zeros(n, dtype=bool)
    at = np.zeros(n, dtype=np.intp)
    if old is not None and len(old.sorted_ids):
        at = np.minimum(np.searchsorted(old.sorted_ids, bits.ids), len(old.sorted_ids) - 1)
        held = old.sorted_ids[at] == bits.ids
        lists[held] = old.sorted_lists[at[held]]
        fresh = int(n - held.sum()) + old.trained_on
        if fresh * 2 > n:
            old = None
    if old is None:
        centroids = _train(bits, seed)
        lists[:] = -1
        trained_on = 0
    else:
        centroids = old.centroids
        trained_on = int((lists < 0).sum()) + old.trained_on
    new = np.flatnonzero(lists < 0)
    if len(new):
        lists[new] = _nearest_list(bits.words[new], centroids)
    codes, quantizer = None, None
    if floats is not None:
        try:
            codes, quantizer = _codes(bits, old, held, at, floats, seed)
        except sqlean.Error:
            # The partition still serves without codes (every candidate's floats read).
            log.warning("partition codes not made: float vectors unreadable", exc_info=True)
    # By list, and by id within a list: a scope's membership test then walks both in order.
    order = np.lexsort((bits.ids, lists))
    counts = np.bincount(lists, minlength=len(centroids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
    by_id = np.argsort(bits.ids, kind="stable")
    return Partition(
        key=key,
        centroids=centroids,
        bits=Bits(bits.ids[order], bits.words[order]),
        offsets=offsets,
        sorted_ids=bits.ids[by_id],
        sorted_lists=lists[by_id],
        trained_on=trained_on,
        codes=None if codes is None else codes[order],
        quantizer=quantizer,
    )


def _codes(
    bits: Bits,
    old: Partition | None,
    held: npt.NDArray[np.bool_],
    at: npt.NDArray[np.intp],
    floats: FloatReader,
    seed: int,
) -> tuple[npt.NDArray[np.uint8] | None, Quantizer | None]:
    """The codes of `bits`' chunks, row for row, and their quantizer: `old`'s for the chunks
    it holds (`held`, at `at` of its sorted ids) and new ones from their float vectors; all
    made again, with a quantizer fitted again, when `old` is None or has none."""
    n = len(bits.ids)
    codes = np.zeros((n, CODE_BYTES), dtype=np.uint8)
    if old is not None and old.codes is not None and old.quantizer is not None:
        quantizer = old.quantizer
        old_rows = np.argsort(old.bits.ids, kind="stable")  # of `old.sorted_ids`, in order
        codes[held] = old.codes[old_rows[at[held]]]
        missing = np.flatnonzero(~held)
    else:
        rng = np.random.default_rng(seed)
        sample = rng.choice(n, size=min(n, FIT_SAMPLE), replace=False)
        _, matrix = floats(np.sort(bits.ids[sample]))
        if not len(matrix):
            return None, None
        quantizer = codes_module.fit(matrix)
        missing = np.arange(n)
    # Read in ascending id order (neighbouring rows share pages). A chunk deleted since the
    # snapshot is not found and keeps zero codes: only a search of that older snapshot ranks it.
    by_id = missing[np.argsort(bits.ids[missing], kind="stable")]
    for start in range(0, len(by_id), _READ_BATCH):
        rows = by_id[start : start + _READ_BATCH]
        wanted = bits.ids[rows]
        found, matrix = floats(wanted)
        codes[rows[np.searchsorted(wanted, found)]] = codes_module.encode(quantizer, matrix)
    return codes, quantizer


def list_count(n: int) -> int:
    return max(MIN_LISTS, n // LIST_SIZE)


def _train(bits: Bits, seed: int) -> npt.NDArray[np.float32]:
    """Spherical k-means centroids (unit rows) of a sample of the chunks' sign vectors."""
    rng = np.random.default_rng(seed)
    k = list_count(len(bits.ids))
    size = min(len(bits.ids), k * TRAIN_PER_LIST)
    sample = np.sort(rng.choice(len(bits.ids), size=size, replace=False))
    matrix = _unit(_signs(bits.words[sample]))
    if len(matrix) <= k:
        # Fewer vectors than lists: each its own centroid, the rest random directions.
        extra = _unit(rng.standard_normal((k - len(matrix), DIMS)).astype(np.float32))
        return np.concatenate([matrix, extra]).astype(np.float32)
    centroids = matrix[rng.choice(len(matrix), size=k, replace=False)].copy()
    for _ in range(ROUNDS):
        nearest = np.argmax(matrix @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, matrix)
        filled = np.bincount(nearest, minlength=k) > 0
        centroids[filled] = _unit(sums[filled])
    return centroids


def _signs(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.float32]:
    """Each sign vector as +1/-1 floats."""
    block = np.ascontiguousarray(words).view(np.uint8)
    signs: npt.NDArray[np.float32] = np.unpackbits(block, axis=1, bitorder="little").astype(
        np.float32
    )
    return signs * 2 - 1


def _nearest_list(words: npt.NDArray[np.uint64], centroids: np.ndarray) -> npt.NDArray[np.int32]:
    """The list of each sign vector: its nearest centroid by dot product with +1/-1 signs."""
    out = np.empty(len(words), dtype=np.int32)
    for start in range(0, len(words), _ASSIGN_BATCH):
        signs = _signs(words[start : start + _ASSIGN_BATCH])
        out[start : start + len(signs)] = np.argmax(signs @ centroids.T, axis=1)
    return out


def _unit(matrix: np.ndarray) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class PartitionStore:
    """Users' partitions, least recently used out beyond `max_bytes`; thread-safe. A partition
    is built or updated on a thread of its own (seconds for a million chunks: training,
    assigning every chunk and reading every float vector for its codes), while the user's searches take the pass over all their bits, so no
    search waits for it; `background = False` builds it inside the search instead (tests).
    `builds` counts partitions made or updated, `hits` passes served by a kept one."""

    background = True

    def __init__(self, max_bytes: int, min_chunks: int) -> None:
        self.max_bytes = max(0, max_bytes)
        #: Users with fewer chunks get no partition (their passes rank all their bits).
        self.min_chunks = max(1, min_chunks)
        self.bytes = 0
        self.hits = 0
        self.builds = 0
        self._entries: OrderedDict[int, Partition] = OrderedDict()
        self._building: dict[int, threading.Thread] = {}
        self._scopes: OrderedDict[int, tuple[np.ndarray, weakref.ref[Partition], ScopeRows]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def scope_rows(self, partition: Partition, within: np.ndarray) -> ScopeRows:
        """The rows of `partition` holding the chunks of the scope `within` (sorted ids),
        kept for the same array and partition: a scope resolved once per snapshot is one array
        for all its searches (scope_cache.py), so its chunks are looked up once (~4 ms for a
        quarter of a million chunks) and a pass only slices the probed lists' runs of them (a
        membership test of every probed chunk took ~1 ms a pass). The array and the partition
        are held with them, so that the array's id names it while kept (the array itself, the
        partition by a weak reference: a replaced partition is not kept alive by its scopes)."""
        with self._lock:
            held = self._scopes.get(id(within))
            if held is not None and held[0] is within and held[1]() is partition:
                self._scopes.move_to_end(id(within))
                return held[2]
        rows = np.flatnonzero(_membership(within)(partition.bits.ids)).astype(np.int32)
        with self._lock:
            self._scopes[id(within)] = (within, weakref.ref(partition), rows)
            self._scopes.move_to_end(id(within))
            while len(self._scopes) > SCOPES_KEPT:
                self._scopes.popitem(last=False)
        return rows

    def kept(self, user_id: int, key: Key) -> Partition | None:
        """The user's partition if it holds the snapshot `key` names."""
        with self._lock:
            held = self._entries.get(user_id)
            if held is None or held.key != key:
                return None
            self._entries.move_to_end(user_id)
            self.hits += 1
            return held

    def current(
        self, user_id: int, key: Key, bits: Bits, floats: FloatSource | None = None
    ) -> Partition | None:
        """A partition of `bits` (the user's, in the snapshot `key` names) if one is kept;
        else None, with one made or updated from the kept one (in the background unless
        `background` is off, then returned), with codes read through `floats` when given and
        they fit. None too when the user is too small or too large to keep."""
        if len(bits.ids) < self.min_chunks or not self.max_bytes:
            return None
        if len(bits.ids) * CHUNK_BYTES > self.max_bytes:
            return None
        if len(bits.ids) * (CHUNK_BYTES + CODE_BYTES) > self.max_bytes:
            floats = None
        with self._lock:
            old = self._entries.get(user_id)
            if old is not None and old.key == key:
                return old
            if user_id in self._building:
                return None
            if self.background:
                thread = threading.Thread(
                    target=self._build,
                    args=(user_id, key, bits, old, floats),
                    name=f"partition-{user_id}",
                    daemon=True,
                )
                self._building[user_id] = thread
                thread.start()
                return None
        return self._build(user_id, key, bits, old, floats)

    def wait(self) -> None:
        """Until no build runs (tests)."""
        while True:
            with self._lock:
                threads = list(self._building.values())
            if not threads:
                return
            for thread in threads:
                thread.join()

    def _build(
        self,
        user_id: int,
        key: Key,
        bits: Bits,
        old: Partition | None,
        floats: FloatSource | None,
    ) -> Partition:
        try:
            fresh = None
            if floats is not None:
                try:
                    with floats() as reader:
                        fresh = build(bits, key, old, seed=user_id, floats=reader)
                except sqlean.Error:
                    # The file could not be opened for reading: a partition without codes.
                    log.warning("partition codes not made: database unreadable", exc_info=True)
            if fresh is None:
                fresh = build(bits, key, old, seed=user_id)
            with self._lock:
                self.builds += 1
                replaced = self._entries.pop(user_id, None)
                if replaced is not None:
                    self.bytes -= replaced.nbytes
                # A build for an older snapshot than the one kept meanwhile is still exact for
                # its own key: kept, the next pass compares keys anyway.
                self._entries[user_id] = fresh
                self.bytes += fresh.nbytes
                while self.bytes > self.max_bytes and self._entries:
                    _, evicted = self._entries.popitem(last=False)
                    self.bytes -= evicted.nbytes
            return fresh
        finally:
            with self._lock:
                self._building.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)
