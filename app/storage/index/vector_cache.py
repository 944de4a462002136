"""The float vectors of recently scored chunks, kept in memory across searches (SQLite).

Exact scoring reads up to ~800 candidates' float vectors per semantic pass from `chunks` (a
json_each join: ~2.5 ms for 800 of a 900-chunk user, most of a pass); a user's searches keep
scoring the same chunks, so the process keeps them: chunk id -> (document id, vector bytes),
least recently used first out, bounded in bytes (`Settings.vector_cache_mb`).

Why a cached vector is always the one the search's own snapshot holds:

- the candidate ids a search scores come from its own snapshot (the bit vectors, the postings,
  the scope's chunk ids, all read in the search's read transaction), so they name chunks that
  exist in that snapshot, committed (no search runs inside a write transaction, so a vector a
  rolled-back write inserted is never read, and its id, which SQLite may hand out again, is
  never cached);
- a chunk row is never updated in place: a changed document deletes its chunks and inserts new
  rows (app/services/knowledge.py), whose ids are new because `chunks.id` is AUTOINCREMENT on
  SQLite (revision 0004): an id is never handed out twice, by any process on the file;
- so the (document, vector) an id names never changes; whichever snapshot read it into the
  cache, it is this snapshot's.

Chunks deleted since stay cached until they age out of the LRU (no search asks for them: no
snapshot that lacks them offers them as candidates). A restore replaces the file only while no
server runs (app/storage/backup.py), so no cache survives it. One cache per `SqliteIndex`, i.e. per
database per process, shared by the reader connections' threads (hence the lock).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

#: What an entry costs besides its vector's bytes, counted against the bound: the ordered dict's
#: slot, the int key, the tuple and the bytes object's header measured ~226 bytes (tracemalloc,
#: CPython 3.11, 64-bit), plus at most a document id string (81 bytes) when not shared.
ENTRY_OVERHEAD = 300

#: A cached chunk: its document's id and its float32 vector as stored (`DIMS` x 4 bytes).
Entry = tuple[str, bytes]


class VectorCache:
    """A thread-safe LRU of chunk id -> `Entry`, at most `max_bytes` (0: keeps nothing).
    `hits` and `misses` count the ids asked for, found or not (for tests and metrics)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, chunk_ids: Sequence[int]) -> tuple[dict[int, Entry], list[int]]:
        """The entries of those of `chunk_ids` held (now the most recently used), and the
        ids not held, in the order given."""
        found: dict[int, Entry] = {}
        missing: list[int] = []
        if not self.max_bytes:
            with self._lock:
                self.misses += len(chunk_ids)
            return found, list(chunk_ids)
        with self._lock:
            entries = self._entries
            for chunk_id in chunk_ids:
                entry = entries.get(chunk_id)
                if entry is None:
                    missing.append(chunk_id)
                else:
                    entries.move_to_end(chunk_id)
                    found[chunk_id] = entry
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def put_many(self, entries: Iterable[tuple[int, Entry]]) -> None:
        """Keep `entries` (the most recently used), evicting the least recently used beyond
        the bound. An entry larger than the whole bound is not kept."""
        if not self.max_bytes:
            return
        with self._lock:
            held = self._entries
            for chunk_id, entry in entries:
                old = held.pop(chunk_id, None)
                if old is not None:
                    self.bytes -= _cost(old)
                held[chunk_id] = entry
                self.bytes += _cost(entry)
            while self.bytes > self.max_bytes and held:
                _, evicted = held.popitem(last=False)
                self.bytes -= _cost(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


def _cost(entry: Entry) -> int:
    return len(entry[1]) + ENTRY_OVERHEAD
