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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.live import start_server, stop_server
from tests.support.writers import BatchWriters, assert_whole, rows, stored_batches, stored_documents


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
                for i in range(160)
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
    stored = stored_documents(server.data_dir / "personaizer.db")
    assert sorted(stored) == sorted(item["external_id"] for item in items)
    assert all(n == c and n > 0 for n, c in stored.values())
    # Every request served was counted, the batch's included: flushed after it finished.
    [(requests,)] = rows(
        server.data_dir / "personaizer.db", "SELECT sum(requests) FROM usage_counters"
    )
    assert requests == counted


def test_kill_9_under_concurrent_writers_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    key = server.new_key("crash@example.com")
    writers = BatchWriters(server.url, key).start()
    try:
        writers.wait_for(4)
        time.sleep(random.uniform(0.0, 3.0))
        server.process.kill()
        server.process.wait(timeout=30)
    finally:
        writers.stop()
        stop_server(server)

    # Restart on the same data: the server comes up on what the crash left.
    again = start_server(server.data_dir)
    try:
        with httpx.Client(base_url=again.url, headers={"X-Api-Key": key}, timeout=60) as api:
            total = api.get("/api/knowledge/docs").json()["total"]
    finally:
        stop_server(again)

    batches = stored_batches(server.data_dir / "personaizer.db")
    assert sum(batches.values()) == total
    assert_whole(batches, acknowledged=writers.acknowledged, attempted=writers.attempted)
