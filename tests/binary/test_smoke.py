"""The one-file binary, run as a user runs it: `env -i`, a fresh HOME, an empty folder.

Skipped unless PERSONAIZER_BINARY names a built binary (scripts/test_binary.sh builds one and
runs this). Every command runs the real executable; nothing of the app is imported here. On
SQLite and PostgreSQL (`--engines`): the server up with `--demo`, then the contract's core
through every door (a key from the CLI, an upsert and its replay, a search, GraphQL, MCP), the
operator's commands, and the refusals that must be one line and a non-zero exit (a damaged
bundle, a damaged model directory, a database of a newer schema).

Start time and memory are measured by scripts/build_binary.py's report, not asserted here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BINARY = os.environ.get("PERSONAIZER_BINARY", "")

pytestmark = pytest.mark.skipif(
    not BINARY or not Path(BINARY).is_file(),
    reason="PERSONAIZER_BINARY does not name a built binary (scripts/test_binary.sh)",
)

DEMO_EMAIL = "demo@personaizer.local"


@dataclass
class Bare:
    """An empty folder, a fresh HOME and a minimal PATH: nothing of this machine's Python."""

    cwd: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(BINARY).resolve()), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def refused(self, *args: str, match: str) -> str:
        """A refusal: non-zero, and one line on stderr saying why."""
        done = self.run(*args)
        assert done.returncode != 0, (args, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(match, lines[0]), done.stderr
        return lines[0]


@pytest.fixture
def bare(tmp_path: Path) -> Bare:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    return Bare(cwd, {"HOME": str(home), "PATH": "/usr/bin:/bin"})


@dataclass
class Served:
    base: str
    key: str
    process: subprocess.Popen[str]


@pytest.fixture
def served(bare: Bare, database_url: str) -> Iterator[Served]:
    if database_url:
        bare.env["PERSONAIZER_DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [str(Path(BINARY).resolve()), "serve", "--demo", "--port", "0"],
        cwd=bare.cwd,
        env=bare.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        key = base = ""
        assert process.stdout is not None
        for line in process.stdout:
            if found := re.search(r"Demo API key: (\S+)", line):
                key = found.group(1)
            if found := re.search(r"listening on (http://\S+)", line):
                base = found.group(1)
                break
        assert base and key, "the server exited before listening"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the binary's server never became healthy")
        yield Served(base, key, process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_version_names_the_bundled_model(bare: Bare) -> None:
    shown = bare.ok("--version")
    assert re.match(r"personaizer \d+\.\d+", shown)
    assert "encoder: onnx" in shown and "model: bundled" in shown


@pytest.mark.anyio
async def test_the_contract_through_every_door(
    bare: Bare, served: Served, database_url: str
) -> None:
    """Async only for the `database_url` fixture; the calls block (`_contract`): nothing else
    runs on this loop."""
    _contract(bare, served, database_url)


def _contract(bare: Bare, served: Served, database_url: str) -> None:
    # A key from the CLI, beside the running server.
    key = bare.ok("keys", "create", DEMO_EMAIL, "--name", "smoke").strip().splitlines()[-1]
    headers = {"X-Api-Key": key}
    with httpx.Client(base_url=served.base, headers=headers, timeout=60) as http:
        batch = {
            "items": [
                {
                    "external_id": "smoke-lamp",
                    "title": "Aurora lamp",
                    "content": "The Aurora lamp charges over a USB-C port in two hours.",
                }
            ]
        }
        first = http.put("/api/knowledge/docs", json=batch)
        assert first.status_code == 200, first.text
        assert first.json()["results"][0]["status"] == "created"
        replay = http.put("/api/knowledge/docs", json=batch)
        assert replay.json()["results"][0]["status"] == "no_op"

        found = http.post("/api/knowledge/search", json={"query": "how do I charge the lamp"})
        assert found.status_code == 200, found.text
        assert "smoke-lamp" in found.text

        query = "{ knowledgeDocs(first: 200) { items { externalId } total } }"
        graphql = http.post("/graphql", json={"query": query})
        assert graphql.status_code == 200 and "errors" not in graphql.json(), graphql.text
        assert "smoke-lamp" in graphql.text

        mcp = {"Accept": "application/json, text/event-stream"}
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "smoke", "version": "0"},
            },
        }
        r = http.post("/mcp", json=init, headers=mcp)
        assert r.status_code == 200 and "serverInfo" in r.text, r.text
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "search_knowledge", "arguments": {"query": "USB-C lamp"}},
        }
        r = http.post("/mcp", json=call, headers=mcp)
        assert r.status_code == 200 and "smoke-lamp" in r.text, r.text

    # sync: a folder of files up through the public API (text extraction inside the binary).
    folder = bare.cwd / "notes"
    folder.mkdir()
    (folder / "kettle.md").write_text("# Kettle\n\nThe kettle boils a litre in ninety seconds.\n")
    (folder / "page.html").write_text(
        "<html><body><p>Opening hours: nine to five.</p></body></html>"
    )
    bare.ok("sync", str(folder), "--api-key", key, "--url", served.base, "--strict")
    with httpx.Client(base_url=served.base, headers=headers, timeout=60) as http:
        r = http.post("/api/knowledge/search", json={"query": "how fast does the kettle boil"})
        assert "Kettle" in r.text or "kettle" in r.text, r.text

    # The operator's commands against the served database.
    assert DEMO_EMAIL in bare.ok("users", "list")
    bare.ok("users", "create", "smoke@example.com", "--plan", "free")
    assert "smoke" in bare.ok("keys", "list", DEMO_EMAIL)
    bare.ok("db", "upgrade")
    assert "type Query" in bare.ok("export-schema")
    if not database_url:
        bare.ok("backup", str(bare.cwd / "backup.db"))
        assert (bare.cwd / "backup.db").stat().st_size > 0


def test_restore_and_init_on_sqlite(bare: Bare) -> None:
    bare.ok("init", "--data-dir", "one")
    bare.ok("users", "create", "a@example.com", "--data-dir", "one")
    bare.ok("backup", "copy.db", "--data-dir", "one")
    bare.ok("users", "delete", "a@example.com", "--data-dir", "one", "--yes")
    bare.ok("restore", "copy.db", "--data-dir", "one")
    assert "a@example.com" in bare.ok("users", "list", "--data-dir", "one")


def test_a_database_of_a_newer_schema_is_refused(bare: Bare) -> None:
    bare.ok("init", "--data-dir", "data")
    with sqlite3.connect(bare.cwd / "data" / "personaizer.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    bare.refused("serve", "--port", "0", "--data-dir", "data", match="newer")
    bare.refused("users", "list", "--data-dir", "data", match="newer")


def test_a_damaged_model_directory_is_refused(bare: Bare, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "personaizer-model.json").write_text('{"export_version": 1, "sha256": "0"}')
    (broken / "tokenizer.json").write_text("{}")
    (broken / "model.onnx").write_bytes(b"not a graph")
    bare.env["PERSONAIZER_ENCODER_MODEL_DIR"] = str(broken)
    bare.refused("--version", match="damaged")
    bare.refused("serve", "--port", "0", match="damaged")


def test_a_damaged_binary_fails_loudly(bare: Bare, tmp_path: Path) -> None:
    """Cut short (a download interrupted), it must say so and exit non-zero, never serve."""
    whole = Path(BINARY).read_bytes()
    cut = tmp_path / "personaizer-cut"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    cut.chmod(0o755)
    done = subprocess.run(
        [str(cut), "--version"], cwd=bare.cwd, env=bare.env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert done.stderr.strip(), "a damaged binary must say why it failed"


def test_the_torch_encoder_is_refused_in_one_line(bare: Bare) -> None:
    bare.env["PERSONAIZER_ENCODER"] = "torch"
    bare.refused("--version", match="torch")
    shutil.rmtree(bare.cwd / "data", ignore_errors=True)
