"""The Dockerfile, which cannot be built here (no Docker engine): its final stage installs the
lean runtime only (`scripts/build_binary.py --lean-requirements` and the app's wheel without
dependencies), and that requirement set, resolved through the installed packages' own metadata
(offline), pulls in nothing of torch or the exporter."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "Dockerfile"
#: What the final image must not hold: the reference encoder, the exporter, their GPU stacks.
HEAVY = {"torch", "sentence-transformers", "transformers", "onnx", "onnxscript", "triton"}


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text("utf-8"))
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_final_stage_installs_the_lean_runtime_only() -> None:
    export, final = _stages()
    assert any(
        "build_binary.py --lean-requirements > /opt/lean-requirements.txt" in i for i in export
    )
    installs = [
        part.strip()
        for instruction in final
        if instruction.startswith("RUN ")
        for part in instruction[4:].split("&&")
        if part.strip().startswith("pip install")
    ]
    assert installs, final
    for install in installs:
        assert "-r /tmp/install/lean-requirements.txt" in install or "--no-deps" in install, install
    # The build itself fails if torch slipped in.
    assert any("find_spec(m) for m in ('torch', 'sentence_transformers')" in i for i in final)


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, by the installed packages' metadata."""
    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen and set(req.extras) <= seen[name]:
            continue
        extras = seen.setdefault(name, set())
        extras.update(req.extras)
        requires = importlib.metadata.distribution(req.name).requires or []
        for line in requires:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(
                marker.evaluate({**default_environment(), "extra": extra})
                for extra in (extras or {""})
            ):
                todo.append(dependency)
    return set(seen)


def test_the_lean_requirements_pull_in_nothing_of_torch() -> None:
    listed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_binary.py"), "--lean-requirements"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert "onnxruntime>=1.20" in listed or any(r.startswith("onnxruntime") for r in listed)
    closure = _closure(listed)
    assert {"onnxruntime", "tokenizers", "numpy", "mcp", "strawberry-graphql"} <= closure
    heavy = sorted(n for n in closure if n in HEAVY or n.startswith("nvidia-"))
    assert not heavy, heavy
    # The full install does hold them: the check would see torch if the set let it in.
    assert "torch" in _closure(["personaizer"])
