"""Several server processes against one PostgreSQL and one Redis behave as one service: a write
through one is read through the other at once, a plan's quota holds when creates race across
both, a user has one rate budget per policy, and usage counts the requests of every process.
`serve --workers 2` serves the same way."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.support import servers

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.engines("postgresql")]

#: A plan small enough to reach: 10 documents; 30 reads a minute.
PLANS = {
    "tight": {
        "id": "tight",
        "name": "Tight",
        "limits": {
            "knowledge_docs": 10,
            "knowledge_chars": 1_000_000,
            "doc_chars": 10_000,
            "personas": 3,
            "batch_items": 10,
            "reads_per_minute": 30,
            "writes_per_minute": 1000,
            "searches_per_minute": 100,
        },
    }
}


def make_key(env: dict[str, str], email: str, plan: str) -> str:
    made = servers.personaizer("users", "create", email, "--plan", plan, env=env)
    assert made.returncode == 0, made.stderr
    key = servers.personaizer("keys", "create", email, "--json", env=env)
    assert key.returncode == 0, key.stderr
    value: str = json.loads(key.stdout)["key"]
    return value


async def test_two_servers_on_postgres_and_redis_are_one_service(
    database_url: str, tmp_path: Path
) -> None:
    with servers.redis_server(tmp_path / "redis") as redis_url:
        env = servers.clean_env(
            data_dir=str(tmp_path / "data"),
            database_url=database_url,
            redis_url=redis_url,
            plans=json.dumps(PLANS),
        )
        writer_key = make_key(env, "race@example.com", "tight")
        reader_key = make_key(env, "reads@example.com", "tight")
        with (
            servers.serve(env=env, log=tmp_path / "a.log") as a,
            servers.serve(env=env, log=tmp_path / "b.log") as b,
        ):
            h = {"X-Api-Key": writer_key}
            async with httpx.AsyncClient(timeout=120) as http:
                # A write through one is read through the other at once.
                put = await http.put(
                    f"{a}/api/knowledge/docs/by-external-id/first",
                    json={"content": "Written through server A."},
                    headers=h,
                )
                assert put.status_code == 201, put.text
                got = await http.get(f"{b}/api/knowledge/docs/by-external-id/first", headers=h)
                assert (
                    got.status_code == 200 and got.json()["content"] == "Written through server A."
                )

                # 9 of 10 documents exist after four more; 20 creates race across both servers.
                for i in range(4):
                    r = await http.put(
                        f"{b}/api/knowledge/docs/by-external-id/pre-{i}",
                        json={"content": f"Document {i} before the race."},
                        headers=h,
                    )
                    assert r.status_code == 201
                racing = [
                    http.put(
                        f"{(a, b)[i % 2]}/api/knowledge/docs/by-external-id/race-{i}",
                        json={"content": f"Racing document number {i}."},
                        headers=h,
                    )
                    for i in range(20)
                ]
                answers = await asyncio.gather(*racing)
                statuses = sorted(r.status_code for r in answers)
                assert statuses == [201] * 5 + [403] * 15, statuses
                assert all(
                    r.json()["code"] == "knowledge.quota_exceeded"
                    for r in answers
                    if r.status_code == 403
                )
                listed = await http.get(f"{a}/api/knowledge/docs", headers=h)
                assert listed.json()["total"] == 10

                # One read budget (30 a minute) for the user, whichever server answers.
                r_h = {"X-Api-Key": reader_key}
                reads = [
                    await http.get(f"{(a, b)[i % 2]}/api/subscription", headers=r_h)
                    for i in range(34)
                ]
                codes = [r.status_code for r in reads]
                assert codes == [200] * 30 + [429] * 4, codes
                assert reads[-1].headers["RateLimit-Policy"] == '"reads";q=30;w=60'

            # Requests through both processes add up in usage (each flushes within seconds).
            counter_key = make_key(env, "usage@example.com", "pro")
            c_h = {"X-Api-Key": counter_key}
            async with httpx.AsyncClient(timeout=60) as http:
                for i in range(7):
                    r = await http.get(f"{(a, b)[i % 2]}/api/subscription", headers=c_h)
                    assert r.status_code == 200
                # Both processes flush pending counts every 5 s: after that, one usage read
                # through A sees the 7 reads and itself.
                await asyncio.sleep(8)
                usage = (await http.get(f"{a}/api/subscription/usage", headers=c_h)).json()
                assert usage["usage"]["requests"]["used"] == 8


async def test_serve_with_two_workers(database_url: str, tmp_path: Path) -> None:
    with servers.redis_server(tmp_path / "redis") as redis_url:
        env = servers.clean_env(
            data_dir=str(tmp_path / "data"), database_url=database_url, redis_url=redis_url
        )
        key = make_key(env, "workers@example.com", "pro")
        with servers.serve("--workers", "2", env=env, log=tmp_path / "w.log") as base:
            # /healthz answered 200 from one worker; the other may still be loading its model
            # (it answers 503 meanwhile): wait until every new connection finds a ready one.
            h = {"X-Api-Key": key}
            async with httpx.AsyncClient(timeout=120) as http:
                ready = 0
                while ready < 10:
                    fresh = httpx.AsyncClient(timeout=10)  # a new connection each time
                    async with fresh:
                        ok = (await fresh.get(f"{base}/healthz")).status_code == 200
                    ready = ready + 1 if ok else 0
                    await asyncio.sleep(0 if ok else 0.5)
                for i in range(6):
                    r = await http.put(
                        f"{base}/api/knowledge/docs/by-external-id/w{i}",
                        json={"content": f"Worker document {i}."},
                        headers=h,
                    )
                    assert r.status_code == 201, r.text
                    listed = await http.get(f"{base}/api/knowledge/docs", headers=h)
                    assert listed.json()["total"] == i + 1
        log = (tmp_path / "w.log").read_text()
        assert "with 2 workers" in log


def test_workers_without_redis_are_refused_in_one_line(tmp_path: Path) -> None:
    env = servers.clean_env(data_dir=str(tmp_path / "data"))
    r = servers.personaizer("serve", "--workers", "2", "--port", "0", env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "PERSONAIZER_REDIS_URL" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
