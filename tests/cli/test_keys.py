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


def test_tokens_mint_prints_a_token_for_the_key(tmp_path: Path) -> None:
    import jwt

    secret = "s" * 43
    r = run(
        "tokens", "mint", "--key", "pa_live_abcdEFGH" + "x" * 30, "--signing-secret", secret,
        "--expires-in", "600", "--sub", "u1", "--personas", "per_A,per_B",
        data_dir=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    claims = jwt.decode(r.stdout.strip().splitlines()[-1], secret, algorithms=["HS256"])
    assert claims["kid"] == "pa_live_abcd" and claims["sub"] == "u1"
    assert claims["persona_ids"] == ["per_A", "per_B"]
    r = run("tokens", "mint", "--key", "k", "--signing-secret", secret, "--expires-in", "999999",
            data_dir=tmp_path)  # fmt: skip
    assert r.returncode != 0
