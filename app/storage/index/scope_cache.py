"""Resolved scopes kept across searches (SQLite): a scope's sorted chunk ids per snapshot key.

Resolving a metadata scope is SQL over every document of the user (the `json_each` test per
document, then the join to its chunks): ~30 ms at 100,000 chunks, ~300 ms at 1,000,000, more
than the whole unscoped search. Callers repeat their scopes (an application's filter, a
source), so the ids are kept, named by the user, the scope and the snapshot's key
(partition.py's `snapshot_key`): a scope of document conditions alone (external ids,
metadata) selects the same chunks in two snapshots with the same key, since every write that
changes a document's metadata or chunks takes a change seq or adds a chunk. Persona scopes are
not kept: attaching a document to a persona changes neither.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import numpy.typing as npt

#: What an entry costs besides its ids (the key, the dict slot), counted against the bound.
ENTRY_OVERHEAD = 500


class ScopeCache:
    """A thread-safe LRU of name -> sorted chunk ids, at most `max_bytes` (0: keeps nothing).
    `hits` counts the scopes served from it (for tests)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[Hashable, npt.NDArray[np.int64]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: Hashable) -> npt.NDArray[np.int64] | None:
        with self._lock:
            ids = self._entries.get(name)
            if ids is not None:
                self._entries.move_to_end(name)
                self.hits += 1
            return ids

    def put(self, name: Hashable, ids: npt.NDArray[np.int64]) -> None:
        cost = int(ids.nbytes) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        ids.setflags(write=False)
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self.bytes -= int(old.nbytes) + ENTRY_OVERHEAD
            self._entries[name] = ids
            self.bytes += cost
            while self.bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= int(evicted.nbytes) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)
