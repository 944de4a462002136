"""Redis going away under traffic (issue 22): a real redis-server killed and started again on
the same port, under a real `personaizer serve` and in process.

Policy open (the default): the API keeps answering 200, limited per process in memory at
1/PERSONAIZER_RATE_LIMIT_PROCESSES of the budget (its RateLimit fields say so), /readyz says
`degraded` with the reason, the gauge is 1, and the log has one line when Redis goes and one
when it comes back, however many requests met it; once Redis answers the counts are shared
again. Policy closed: 503 while Redis is down, and /readyz 503."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config
from tests.support import servers

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

PLANS = {"roomy": plan_config("roomy", reads_per_minute=10_000)}
PERSONAS = "/api/personas"


class RedisProcess:
    """A private redis-server on one port, which a test kills and starts again on that port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = servers.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.workdir), "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, "no redis"
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed or unplugged Redis is."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stored_keys(self) -> list[bytes]:
        client = redis.Redis(port=self.port)
        try:
            return list(client.keys("*"))
        finally:
            client.close()


@contextmanager
def redis_process(workdir: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(workdir)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.kill()


def make_key(env: dict[str, str], email: str) -> str:
    made = servers.personaizer("init", env=env)
    assert made.returncode == 0, made.stderr
    made = servers.personaizer("users", "create", email, "--plan", "roomy", env=env)
    assert made.returncode == 0, made.stderr
    key = servers.personaizer("keys", "create", email, "--json", env=env)
    assert key.returncode == 0, key.stderr
    value: str = json.loads(key.stdout)["key"]
    return value


async def _until_ready(http: httpx.AsyncClient, base: str, status: str) -> dict[str, object]:
    for _ in range(100):
        r = await http.get(f"{base}/readyz")
        if r.status_code == 200 and r.json()["status"] == status:
            body: dict[str, object] = r.json()
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never said {status}: {r.status_code} {r.text}")


def _gauge(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("personaizer_rate_limit_degraded "):
            return float(line.split()[1])
    raise AssertionError("no personaizer_rate_limit_degraded in /metrics")


async def test_redis_killed_under_load_keeps_the_api_answering(tmp_path: Path) -> None:
    with redis_process(tmp_path / "redis") as store:
        env = servers.clean_env(
            data_dir=str(tmp_path / "data"),
            redis_url=store.url,
            rate_limit_processes="2",
            plans=json.dumps(PLANS),
        )
        key = make_key(env, "load@example.com")
        log = tmp_path / "server.log"
        with servers.serve(env=env, log=log) as base:
            async with httpx.AsyncClient(timeout=30, headers={"X-Api-Key": key}) as http:
                r = await http.get(f"{base}{PERSONAS}")
                assert r.headers["ratelimit-policy"] == '"reads";q=10000;w=60'
                assert _gauge((await http.get(f"{base}/metrics")).text) == 0

                answers: list[httpx.Response] = []
                stop = asyncio.Event()

                async def load() -> None:
                    while not stop.is_set():
                        answers.append(await http.get(f"{base}{PERSONAS}"))

                workers = [asyncio.create_task(load()) for _ in range(4)]
                await asyncio.sleep(0.3)
                await asyncio.to_thread(store.kill)
                seen = len(answers)
                await asyncio.sleep(1.5)
                stop.set()
                await asyncio.gather(*workers)

                assert len(answers) - seen >= 20, "too little traffic met the outage"
                assert {r.status_code for r in answers} == {200}, [
                    r.text for r in answers if r.status_code != 200
                ][:3]
                # After the outage: the local limiter's share of the budget.
                assert answers[-1].headers["ratelimit-policy"] == '"reads";q=5000;w=60'

                body = await _until_ready(http, base, "degraded")
                checks = body["checks"]
                assert isinstance(checks, dict)
                reason = checks["rate_limits"]["reason"]
                assert checks["rate_limits"]["status"] == "degraded"
                assert f"Redis at 127.0.0.1:{store.port} unreachable" in reason
                assert "1/2 of every budget" in reason
                assert _gauge((await http.get(f"{base}/metrics")).text) == 1

                await asyncio.to_thread(store.start)  # the same port
                await _until_ready(http, base, "ok")
                r = await http.get(f"{base}{PERSONAS}")
                assert r.status_code == 200
                assert r.headers["ratelimit-policy"] == '"reads";q=10000;w=60'
                assert any(b"RL" in k for k in store.stored_keys()), "the count is not in Redis"
                assert _gauge((await http.get(f"{base}/metrics")).text) == 0

        text = log.read_text()
        assert text.count("rate limits degraded") == 1, text
        assert text.count("rate limits restored") == 1, text
        assert "Traceback" not in text


@pytest.mark.engines("sqlite")
async def test_policy_closed_answers_503_while_redis_is_down(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with redis_process(tmp_path / "redis") as store:
        app = await make_app(redis_url=store.url, rate_limit_on_redis_failure="closed", plans=PLANS)
        key = await new_key(app, plan="roomy")
        async with client_for(app, **{"X-Api-Key": key}) as api, client_for(app) as anon:
            assert (await api.get(PERSONAS)).status_code == 200
            await asyncio.to_thread(store.kill)
            for _ in range(5):
                r = await api.get(PERSONAS)
                assert_problem(r, 503, "server.unavailable")
                assert r.headers["retry-after"] == "5"
            body = assert_problem(await anon.get("/readyz"), 503, "server.unavailable")
            assert body["checks"]["rate_limits"]["status"] == "failing"
            assert "refused" in body["checks"]["rate_limits"]["reason"]
            assert (await anon.get("/livez")).status_code == 200

            await asyncio.to_thread(store.start)
            for _ in range(50):
                r = await api.get(PERSONAS)
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text
            assert (await anon.get("/readyz")).json()["status"] == "ok"
