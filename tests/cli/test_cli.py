"""The `personaizer` command as an operator runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).with_name("personaizer")


def run(*args: str, data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    return subprocess.run(
        [str(BIN), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=60,
        check=False,
    )


def test_users_and_keys_lifecycle(tmp_path: Path) -> None:
    r = run("init", data_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "personaizer.db").exists()
    r = run("users", "create", "ops@example.com", "--plan", "pro", data_dir=tmp_path)
    assert r.returncode == 0, r.stderr

    r = run("users", "create", "ops@example.com", data_dir=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "exists" in r.stderr

    r = run("users", "list", "--json", data_dir=tmp_path)
    assert [u["plan"] for u in json.loads(r.stdout)] == ["pro"]

    r = run("users", "set-plan", "ops@example.com", "unlimited", data_dir=tmp_path)
    assert r.returncode == 0
    r = run("users", "set-plan", "ops@example.com", "gold", data_dir=tmp_path)
    assert r.returncode == 1 and "gold" in r.stderr

    r = run("keys", "create", "ops@example.com", "--name", "cron", data_dir=tmp_path)
    assert r.returncode == 0
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("pa_live_") and len(key) >= 40

    r = run("keys", "create", "ops@example.com", "--json", data_dir=tmp_path)
    created = json.loads(r.stdout)
    assert created["key"].startswith("pa_live_") and created["prefix"] == created["key"][:12]

    r = run("keys", "list", "ops@example.com", "--json", data_dir=tmp_path)
    listed = json.loads(r.stdout)
    assert [k["name"] for k in listed] == ["cron", "default"]
    assert all("key" not in k and k["status"] == "active" for k in listed)
    assert key not in r.stdout

    r = run("keys", "disable", key[:12], data_dir=tmp_path)
    assert r.returncode == 0
    r = run("keys", "list", "ops@example.com", "--json", data_dir=tmp_path)
    assert [k["status"] for k in json.loads(r.stdout)] == ["disabled", "active"]

    r = run("keys", "disable", "pa_live_none", data_dir=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("error:")
    r = run("keys", "create", "nobody@example.com", data_dir=tmp_path)
    assert r.returncode == 1 and "nobody@example.com" in r.stderr


def test_password_from_stdin(tmp_path: Path) -> None:
    assert run("init", data_dir=tmp_path).returncode == 0
    r = run(
        "users", "create", "p@example.com", "--password-stdin", data_dir=tmp_path, stdin="short\n"
    )
    assert r.returncode == 1 and "8 characters" in r.stderr
    r = run(
        "users",
        "create",
        "p@example.com",
        "--password-stdin",
        data_dir=tmp_path,
        stdin="correct horse battery\n",
    )
    assert r.returncode == 0


def test_bad_database_is_one_line_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    r = subprocess.run(
        [str(BIN), "users", "list", "--database-url", f"sqlite:///{junk}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and r.stderr.strip().count("\n") == 0
    r = subprocess.run(
        [str(BIN), "users", "list", "--database-url", "mysql://x/y"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1 and "unsupported database URL" in r.stderr


def test_serve_refuses_a_newer_database_in_one_line(tmp_path: Path) -> None:
    import sqlean

    assert run("init", data_dir=tmp_path).returncode == 0
    conn = sqlean.connect(str(tmp_path / "personaizer.db"))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    r = run("serve", "--port", "0", data_dir=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "newer than this server" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_end_to_end(tmp_path: Path) -> None:
    """The README's first command, for real: a server process, the model loaded from disk."""
    assert run("init", data_dir=tmp_path).returncode == 0
    assert run("users", "create", "e2e@example.com", data_dir=tmp_path).returncode == 0
    key = (
        run("keys", "create", "e2e@example.com", data_dir=tmp_path).stdout.strip().splitlines()[-1]
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--data-dir", str(tmp_path), "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    early: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{base}/healthz", timeout=2).status_code
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert status == 200
        h = {"X-Api-Key": key}
        r = httpx.put(
            f"{base}/api/knowledge/docs/by-external-id/hello", json={"content": "hi"}, headers=h
        )
        assert r.status_code == 201, r.text
        assert httpx.get(f"{base}/api/knowledge/docs", headers=h).json()["total"] == 1

        # --demo printed a key of its own and loads sample personas and documents.
        assert proc.stdout is not None
        demo_key = ""
        while not demo_key:
            line = proc.stdout.readline()
            early.append(line)
            assert line, "no demo key printed"
            if line.startswith("Demo API key: "):
                demo_key = line.split(": ", 1)[1].strip()
        d = {"X-Api-Key": demo_key}
        while time.monotonic() < deadline:
            personas = httpx.get(f"{base}/api/personas", headers=d).json()
            if personas["total"] == 2:
                break
            time.sleep(0.3)
        assert [p["name"] for p in personas["items"]] == ["Ava", "Leo"]
        ava = httpx.get(f"{base}/api/personas/{personas['items'][0]['id']}", headers=d).json()
        assert ava["knowledge_external_ids"] == ["faq-shipping", "guide-reset-password"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        # read() and not communicate(): lines already buffered by readline() must not be lost.
        assert proc.stdout is not None
        out = "".join(early) + proc.stdout.read()
        proc.stdout.close()
    assert f"http://127.0.0.1:{port}" in out
    assert str(tmp_path.resolve()) in out
    assert "PUT /api/knowledge/docs/by-external-id/hello 201" in out
