"""`serve --workers N` is N copies of `serve` (issue 19.6): every worker listens with the
options given on the command line and signs dashboard sessions with the same secret, kept in
the data dir when none is configured."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import servers

pytestmark = [pytest.mark.redis, pytest.mark.engines("sqlite")]

EMAIL = "workers@example.com"
PASSWORD = "correct horse battery"
#: Not a loopback name the MCP door allows by itself: only `--host` can make it allowed.
HOST = "127.0.0.2"


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_workers_share_the_options_and_the_session_secret(tmp_path: Path) -> None:
    with servers.redis_server(tmp_path / "redis") as redis_url:
        data = tmp_path / "data"
        env = servers.clean_env(data_dir=str(data), redis_url=redis_url)
        assert servers.personaizer("init", env=env).returncode == 0
        made = servers.personaizer(
            "users", "create", EMAIL, "--password-stdin", env=env, stdin=PASSWORD + "\n"
        )
        assert made.returncode == 0, made.stderr
        made = servers.personaizer("keys", "create", EMAIL, env=env)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        port = servers.free_port()
        base = f"http://{HOST}:{port}"
        log = tmp_path / "serve.log"
        with log.open("w") as sink:
            process = subprocess.Popen(
                [str(servers.BIN), "serve", "--workers", "2", "--host", HOST, "--port", str(port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            _wait_until_both_serve(base, process, log)
            with httpx.Client(base_url=base, timeout=30) as browser:
                # A fresh connection for each request, so that both workers answer some.
                browser.headers["Connection"] = "close"
                token = csrf_of(browser.get("/login"))
                r = browser.post(
                    "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}
                )
                assert r.status_code == 303 and r.headers["location"] == "/api-keys", r.text
                for _ in range(12):
                    page = browser.get("/api-keys")
                    assert page.status_code == 200, "signed out by a worker with another secret"
            initialize = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"},
                },
            }
            for _ in range(6):
                r = httpx.post(
                    f"{base}/mcp",
                    content=json.dumps(initialize),
                    headers={
                        "X-Api-Key": key,
                        "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json",
                        "Connection": "close",
                    },
                    timeout=30,
                )
                assert r.status_code == 200, r.text
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        secret = data / "session-secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_text().strip()) >= 32


def _wait_until_both_serve(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """/healthz 200 on ten fresh connections in a row: both workers are up with their model."""
    deadline = time.monotonic() + 240
    ready = 0
    while ready < 10:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"serve did not become healthy:\n{log.read_text()}")
        try:
            ok = httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            ok = False
        ready = ready + 1 if ok else 0
        if not ok:
            time.sleep(0.3)
