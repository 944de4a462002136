"""`personaizer keys create` with restrictions, and `keys list` showing them (API.md section 12)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import run


def test_keys_create_with_restrictions_and_list_them(tmp_path: Path) -> None:
    assert run("init", data_dir=tmp_path).returncode == 0
    assert run("users", "create", "ops@example.com", data_dir=tmp_path).returncode == 0
    r = run(
        "keys", "create", "ops@example.com", "--name", "widget",
        "--scopes", "search,personas:read",
        "--origins", "https://Shop.example,http://localhost:8080",
        "--expires", "2999-01-01T00:00:00Z",
        "--rate-limit", "5",
        "--json",
        data_dir=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["scopes"] == ["personas:read", "search"]
    assert created["allowed_origins"] == ["https://shop.example", "http://localhost:8080"]
    assert created["expires_at"] == "2999-01-01T00:00:00.000Z"
    assert created["rate_limit"] == 5 and created["persona_ids"] is None
    assert len(created["signing_secret"]) >= 32

    r = run("keys", "create", "ops@example.com", "--scopes", "docs:read", data_dir=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith("pa_live_")
    assert "signing secret" not in r.stderr

    r = run("keys", "create", "ops@example.com", "--scopes", "root", data_dir=tmp_path)
    assert r.returncode == 1 and "root" in r.stderr and r.stderr.strip().count("\n") == 0
    r = run("keys", "create", "ops@example.com", "--expires", "soon", data_dir=tmp_path)
    assert r.returncode != 0

    r = run("keys", "list", "ops@example.com", "--json", data_dir=tmp_path)
    listed = json.loads(r.stdout)
    assert [k["scopes"] for k in listed] == [["personas:read", "search"], ["docs:read"]]
    assert all("signing_secret" not in k for k in listed)
    r = run("keys", "list", "ops@example.com", data_dir=tmp_path)
    assert "origins=https://shop.example" in r.stdout.replace("\n", "") or "origins=" in r.stdout
    assert "rate=5" in r.stdout
