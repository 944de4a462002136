"""The layer contract (pyproject.toml, [tool.importlinter]) holds on the tree, and it is a real
check: a copy of the tree where a door imports storage, or storage imports a service, breaks it.

import-linter builds the import graph from the files on disk (grimp), so the doctored copy is
linted as it stands, without importing it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__", "static")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text, module
    module.write_text(text.replace(marker, marker + "\n" + line + "\n", 1))


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # A door reaching past the services into storage.
        (
            "rest/search.py",
            "import app.storage.database",
            "app.rest is not allowed to import app.storage",
        ),
        # A door on another door.
        ("mcp/tools.py", "import app.rest.operations", "app.mcp is not allowed to import app.rest"),
        # A door opening a database driver itself.
        ("web/pages.py", "import sqlalchemy", "app.web is not allowed to import sqlalchemy"),
        # Storage looking up at a service.
        ("storage/backup.py", "import app.services.usage", "app.storage"),
        # A service on a web framework.
        (
            "services/personas.py",
            "import starlette.requests",
            "app.services is not allowed to import starlette",
        ),
        # The client importing the server.
        ("client/errors.py", "import app.models", "app.client is not allowed to import app.models"),
        # A door on the client side (file reading is shared through app.reading instead).
        ("web/documents.py", "import app.sync.folder", "app.web is not allowed to import app.sync"),
    ],
)
def test_a_wrong_way_import_breaks_the_contract(
    tree_copy: Path, module: str, line: str, expected: str
) -> None:
    add_import(tree_copy / "app" / module, line)
    result = lint(tree_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout
