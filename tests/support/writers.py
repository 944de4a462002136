"""Concurrent batch writers against a real server, and what of their batches a SQLite file holds:
the load for the crash and backup tests."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx

#: Documents per batch; a batch's documents are `<batch>-<i>`.
BATCH = 10


class BatchWriters:
    """`count` threads upserting batches of `BATCH` documents until stopped or the server goes."""

    def __init__(self, url: str, key: str, count: int = 4) -> None:
        self.url, self.key = url, key
        self.acknowledged: set[str] = set()  # answered 200
        self.attempted: set[str] = set()  # sent, whatever came back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in range(count)]

    def start(self) -> BatchWriters:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def wait_for(self, count: int, timeout: float = 180) -> None:
        """Until `count` batches are acknowledged (AssertionError past `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count:
            assert time.monotonic() < deadline, f"{len(self.snapshot())} of {count} batches"
            time.sleep(0.1)

    def snapshot(self) -> set[str]:
        with self._lock:
            return set(self.acknowledged)

    def _write(self, n: int) -> None:
        with httpx.Client(base_url=self.url, headers={"X-Api-Key": self.key}, timeout=60) as api:
            b = 0
            while not self._stop.is_set():
                batch = f"w{n}b{b}"
                b += 1
                items = [
                    {"external_id": f"{batch}-{i}", "content": f"Writer {n} batch {b} item {i}."}
                    for i in range(BATCH)
                ]
                with self._lock:
                    self.attempted.add(batch)
                try:
                    r = api.put("/api/knowledge/docs", json={"items": items})
                except httpx.TransportError:
                    return  # the server is gone
                if r.status_code == 200:
                    with self._lock:
                        self.acknowledged.add(batch)


def rows(database: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def stored_documents(database: Path) -> dict[str, tuple[int, int]]:
    """external_id -> (the chunk_count the document says, the chunk rows it has)."""
    found = rows(
        database,
        "SELECT d.external_id, d.chunk_count, count(c.id) FROM knowledge_docs d "
        "LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id",
    )
    return {str(e): (int(str(n)), int(str(c))) for e, n, c in found}


def stored_batches(database: Path) -> dict[str, int]:
    """batch -> how many of its documents `database` holds; asserts every document is whole."""
    documents = stored_documents(database)
    assert all(n == c and n > 0 for n, c in documents.values()), "a document lacks chunks"
    batches: dict[str, int] = {}
    for external_id in documents:
        batch = external_id.split("-")[0]
        batches[batch] = batches.get(batch, 0) + 1
    return batches


def assert_whole(batches: dict[str, int], *, acknowledged: set[str], attempted: set[str]) -> None:
    """No batch torn, none invented, every acknowledged one there."""
    assert set(batches) <= attempted
    torn = {b: n for b, n in batches.items() if n != BATCH}
    assert not torn, f"batches partly stored: {torn}"
    lost = acknowledged - set(batches)
    assert not lost, f"acknowledged batches missing: {sorted(lost)}"
