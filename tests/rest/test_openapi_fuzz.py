"""schemathesis against a real server process: the OpenAPI document is exactly as strict as the
server, and no request it can generate breaks the server or crosses tenants.

Every check and the examples, coverage, fuzzing and stateful phases (the links from the upserts
and from createPersona), configured in schemathesis.toml, with our own checks in
schemathesis_hooks.py. Bounded by max examples there and by `DEADLINE_S` here; skip it locally
with `-m "not fuzz"`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.fuzz

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
#: The whole schemathesis run, all phases (about a minute on 2 idle cores).
DEADLINE_S = 150
USERS = ("alice", "bob")

#: Generous enough that no 429 and no quota hides logic from the fuzzer; documents may still be
#: refused as too large (schemathesis strings are far below a million characters).
FUZZ_PLAN = {
    "id": "fuzz",
    "name": "Fuzz",
    "limits": {
        "knowledge_docs": 1_000_000,
        "knowledge_chars": 20_000_000_000,
        "doc_chars": 1_000_000,
        "personas": 1_000_000,
        "batch_items": 1_000,
        "reads_per_minute": 1_000_000,
        "writes_per_minute": 1_000_000,
        "searches_per_minute": 1_000_000,
    },
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    # The fuzzer sends thousands of requests from one address, many without a key on purpose
    # (`ignored_auth`, `missing_required_header`). The failed-authentication limit stays at its
    # default: a missing key is never counted as a guess, so each of them is a 401.
    env.update(PERSONAIZER_PLANS=json.dumps({"fuzz": FUZZ_PLAN}), **extra)
    return env


def _personaizer(*args: str, data_dir: Path) -> str:
    r = subprocess.run(
        [str(BIN / "personaizer"), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `personaizer serve` process on a free port and its own data dir, with two users on
    the fuzz plan; yields its URL and a WFC auth file holding their keys."""
    data = tmp_path / "data"
    _personaizer("init", data_dir=data)
    auth = []
    for name in USERS:
        _personaizer("users", "create", f"{name}@example.com", "--plan", "fuzz", data_dir=data)
        key = json.loads(
            _personaizer("keys", "create", f"{name}@example.com", "--json", data_dir=data)
        )
        auth.append({"name": name, "fixedHeaders": [{"name": "X-Api-Key", "value": key["key"]}]})
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"schemaVersion": "0.2.0", "auth": auth}))

    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "personaizer"), "serve", "--port", str(port), "--data-dir", str(data)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the server did not become healthy")
        yield base, auth_file
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_schemathesis_finds_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    base, auth_file = server
    work = tmp_path / "schemathesis"  # its caches land here, not in the worktree
    work.mkdir()
    env = _env(
        PERSONAIZER_FUZZ_AUTH=str(auth_file),
        SCHEMATHESIS_HOOKS=str(HERE / "schemathesis_hooks.py"),
    )
    r = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{base}/openapi.json",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=DEADLINE_S,
        check=False,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "No issues found" in out, out
    # Every phase ran (none skipped for want of examples or links), on every operation.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, out
    assert "Tested: 18" in out, out  # 16 API operations, /livez and /readyz
    links = out.split("API Links:", 1)[1].split("covered", 1)[0].strip()
    assert int(links) > 0, out
