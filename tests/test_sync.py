"""`personaizer sync`: a folder of files through the public API, against the real app."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette

from app.sync import SyncError, collect, external_id_for, sync_folder
from tests.conftest import client_for, new_key

pytestmark = pytest.mark.anyio


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def test_external_ids_from_paths() -> None:
    assert external_id_for("guides/Reset password.md") == "guides:Reset-password.md"
    assert external_id_for("a/b/c.txt") == "a:b:c.txt"


def test_collect(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "a.md": "# Shipping times\n\nOrders ship in two days.",
            "notes/b.txt": "plain text",
            "empty.txt": "  \n",
            "latin1.txt": b"caf\xe9",
            "image.png": b"\x89PNG",
            ".hidden/x.md": "secret",
        },
    )
    docs, skipped = collect(root)
    assert [(d.external_id, d.title) for d in docs] == [
        ("a.md", "Shipping times"),
        ("notes:b.txt", "b"),
    ]
    assert sorted(skipped) == ["empty.txt: empty", "latin1.txt: not UTF-8"]


def test_colliding_ids_are_refused(tmp_path: Path) -> None:
    tree(tmp_path, {"a b.md": "x", "a-b.md": "y"})
    with pytest.raises(SyncError, match="both map to"):
        collect(tmp_path)


async def test_sync_then_resync_then_prune(app: Starlette, tmp_path: Path) -> None:
    key = await new_key(app, plan="free")
    root = tree(tmp_path / "kb", {"a.md": "# A\nalpha", "b.txt": "beta", "c/d.md": "delta"})
    async with client_for(app, **{"X-Api-Key": key}) as api:
        await api.put("/api/knowledge/docs/by-external-id/manual", json={"content": "not mine"})
        seen: list[tuple[int, int]] = []
        report = await sync_folder(api, root, on_progress=lambda d, t: seen.append((d, t)))
        assert (report.created, report.updated, report.no_op) == (3, 0, 0)
        assert seen[-1] == (3, 3)
        doc = (await api.get("/api/knowledge/docs/by-external-id/c:d.md")).json()
        assert doc["metadata"] == {"source": "personaizer-sync", "path": "c/d.md"}

        embedded = app.state.core.embedder.stats.texts
        report = await sync_folder(api, root)
        assert (report.created, report.updated, report.no_op) == (0, 0, 3)
        assert app.state.core.embedder.stats.texts == embedded

        (root / "b.txt").unlink()
        (root / "a.md").write_text("# A\nalpha, revised", encoding="utf-8")
        report = await sync_folder(api, root, prune=True)
        assert (report.created, report.updated, report.no_op, report.deleted) == (0, 1, 1, 1)
        ids = [d["external_id"] for d in (await api.get("/api/knowledge/docs")).json()["items"]]
        assert ids == ["a.md", "c:d.md", "manual"]


async def test_sync_reports_refusals(app: Starlette, tmp_path: Path) -> None:
    root = tree(tmp_path / "kb", {"big.txt": "x" * 100_001})
    key = await new_key(app, plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        with pytest.raises(SyncError, match=r"big.txt is over the plan's 100000 characters"):
            await sync_folder(api, root)
    async with client_for(app, **{"X-Api-Key": "pa_live_" + "x" * 40}) as api:
        with pytest.raises(SyncError, match=r"401 auth\.unauthorized"):
            await sync_folder(api, root)


def test_cli_sync_fails_in_one_line_when_server_is_down(tmp_path: Path) -> None:
    import subprocess
    import sys

    tree(tmp_path, {"a.md": "x"})
    r = subprocess.run(
        [
            str(Path(sys.executable).with_name("personaizer")),
            "sync",
            str(tmp_path),
            "--api-key",
            "pa_live_" + "x" * 40,
            "--url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error: cannot reach") and r.stderr.strip().count("\n") == 0
