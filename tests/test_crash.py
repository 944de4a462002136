"""A real `personaizer serve` process stopped the two ways processes stop.

- SIGTERM while a large batch upsert runs: the server stops taking connections, lets the batch
  finish (it is answered 200 and wholly stored), then flushes the usage counts of every request
  it served before it exits.
- kill -9 under several concurrent batch writers at a random moment: after a restart no batch
  that was answered 200 is missing, and no batch is torn (each is all there or not at all, every
  document with all its chunks).

The stored data is read from the SQLite file by this (another) process after the server is gone.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.live import start_server, stop_server

BATCH = 10  # documents per batch from each concurrent writer


def _rows(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(data_dir / "personaizer.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _doc_chunks(data_dir: Path) -> dict[str, tuple[int, int]]:
    """external_id -> (chunk_count the document says, chunk rows it has)."""
    rows = _rows(
        data_dir,
        "SELECT d.external_id, d.chunk_count, count(c.id) FROM knowledge_docs d "
        "LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id",
    )
    return {str(e): (int(str(n)), int(str(c))) for e, n, c in rows}


def test_sigterm_drains_a_batch_in_flight_and_flushes_usage(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        key = server.new_key("drain@example.com")
        headers = {"X-Api-Key": key}
        counted = 0
        with httpx.Client(base_url=server.url, headers=headers, timeout=300) as api:
            for _ in range(3):
                assert api.get("/api/knowledge/docs").status_code == 200
                counted += 1
            # Long enough to embed for several seconds: SIGTERM lands while it runs.
            words = [
                "the",
                "quick",
                "brown",
                "fox",
                "jumps",
                "over",
                "the",
                "lazy",
                "dog",
                "near",
                "a",
                "quiet",
                "river",
                "bank",
            ]
            rng = random.Random(9)
            items = [
                {
                    "external_id": f"big-{i}",
                    "content": " ".join(rng.choice(words) for _ in range(200)),
                }
                for i in range(80)
            ]
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(api.put, "/api/knowledge/docs", json={"items": items})
                counted += 1
                time.sleep(1.5)
                assert not pending.done(), "the batch finished before SIGTERM: make it larger"
                server.process.send_signal(signal.SIGTERM)
                answer = pending.result(timeout=300)
        # uvicorn ends by raising the signal again once it has shut down cleanly.
        code = server.process.wait(timeout=120)
        assert code in (0, -signal.SIGTERM), server.output()
        assert "Application shutdown complete" in server.output()
    finally:
        stop_server(server)

    assert answer.status_code == 200, answer.text
    assert answer.json()["summary"]["created"] == len(items)
    stored = _doc_chunks(server.data_dir)
    assert sorted(stored) == sorted(item["external_id"] for item in items)
    assert all(n == c and n > 0 for n, c in stored.values())
    # Every request served was counted, the batch's included: flushed after it finished.
    [(requests,)] = _rows(server.data_dir, "SELECT sum(requests) FROM usage_counters")
    assert requests == counted


def test_kill_9_under_concurrent_writers_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    key = server.new_key("crash@example.com")
    acknowledged: set[str] = set()
    attempted: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=server.url, headers={"X-Api-Key": key}, timeout=60) as api:
            for b in range(10_000):
                if stop.is_set():
                    return
                batch = f"w{n}b{b}"
                items = [
                    {"external_id": f"{batch}-{i}", "content": f"Writer {n} batch {b} item {i}."}
                    for i in range(BATCH)
                ]
                with lock:
                    attempted.add(batch)
                try:
                    r = api.put("/api/knowledge/docs", json={"items": items})
                except httpx.TransportError:
                    return  # the server is gone
                if r.status_code == 200:
                    with lock:
                        acknowledged.add(batch)

    try:
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(2.0, 6.0))
        server.process.kill()
        server.process.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=90)
    finally:
        stop.set()
        stop_server(server)
    assert acknowledged, "no batch was acknowledged before the kill"

    # Restart on the same data: the server comes up on what the crash left.
    again = start_server(server.data_dir)
    try:
        with httpx.Client(base_url=again.url, headers={"X-Api-Key": key}, timeout=60) as api:
            total = api.get("/api/knowledge/docs").json()["total"]
    finally:
        stop_server(again)

    stored = _doc_chunks(server.data_dir)
    assert len(stored) == total
    batches: dict[str, int] = {}
    for external_id in stored:
        batch = external_id.split("-")[0]
        batches[batch] = batches.get(batch, 0) + 1
    assert set(batches) <= attempted
    torn = {b: n for b, n in batches.items() if n != BATCH}
    assert not torn, f"batches partly stored: {torn}"
    lost = acknowledged - set(batches)
    assert not lost, f"acknowledged batches missing after the crash: {sorted(lost)}"
    assert all(n == c and n > 0 for n, c in stored.values())
