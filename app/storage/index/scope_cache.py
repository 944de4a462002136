"""Resolved scopes kept across searches: a scope's chunk ids per snapshot key, on both engines.

Resolving a metadata scope is SQL over every document of the user (SQLite's `json_each` test,
PostgreSQL's jsonb test, per document, then the join to its chunks): ~30 ms at 100,000 chunks
on SQLite, ~150 ms on PostgreSQL, more than the whole unscoped search. Callers repeat their
scopes (an application's filter, a source), so the ids are kept, named by the user, the scope
and the snapshot's key (SQLite: partition.py's `snapshot_key`; PostgreSQL:
postgres_scopes.py's): a scope of document conditions alone (external ids, metadata) selects
the same chunks in two snapshots with the same key, since every write that changes a
document's metadata or chunks takes a change seq or changes the user's chunks. Persona scopes
are not kept: attaching a document to a persona changes neither.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

import numpy as np

#: What an entry costs besides its ids (the key, the dict slot), counted against the bound.
ENTRY_OVERHEAD = 500


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


class ScopeCache(Generic[V]):
    """A thread-safe LRU of name -> a resolved scope (its `nbytes` and `ENTRY_OVERHEAD` counted),
    at most `max_bytes` (0: keeps nothing). `hits` counts the scopes served from it (for
    tests). An array kept is made read-only: searches share it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: Hashable) -> V | None:
        with self._lock:
            found = self._entries.get(name)
            if found is not None:
                self._entries.move_to_end(name)
                self.hits += 1
            return found

    def put(self, name: Hashable, value: V) -> None:
        cost = int(value.nbytes) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self.bytes -= int(old.nbytes) + ENTRY_OVERHEAD
            self._entries[name] = value
            self.bytes += cost
            while self.bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= int(evicted.nbytes) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)
