"""A real `personaizer serve` process for tests of the CLI and the client: a free port, its own
data dir, the model loaded from disk as an operator's server loads it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).with_name("personaizer")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without PERSONAIZER_* (tests say what they mean)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    env.update(extra)
    return env


def personaizer(
    *args: str, stdin: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env or clean_env(),
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    port: int
    data_dir: Path
    process: subprocess.Popen[str]
    #: stdout and stderr go to a file: a pipe nobody reads would fill and stall the server.
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A `personaizer` command against this server's data dir (`--data-dir` appended)."""
        return personaizer(*args, "--data-dir", str(self.data_dir), stdin=stdin)

    def new_key(self, email: str, plan: str = "unlimited") -> str:
        r = self.run("users", "create", email, "--plan", plan)
        assert r.returncode == 0, r.stderr
        r = self.run("keys", "create", email)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().splitlines()[-1]


def start_server(
    data_dir: Path, *extra: str, port: int | None = None, model: bool = True
) -> LiveServer:
    """Start a server; return once it answers (`model=False`: before the model has loaded,
    for tests that never embed)."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"serve-{port}.log"
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
        )
    server = LiveServer(f"http://127.0.0.1:{port}", port, data_dir, proc, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {server.output()}")
        try:
            status = httpx.get(f"{server.url}/healthz", timeout=2).status_code
            if status == 200 or not model:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise AssertionError("server not ready in 180 s")


def stop_server(server: LiveServer) -> str:
    """Stop it; its output so far."""
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    return server.output()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the whole run (loading the model is the slow part); tests make their
    own users, so they do not see each other's data."""
    server = start_server(tmp_path_factory.mktemp("live") / "data")
    try:
        yield server
    finally:
        stop_server(server)
