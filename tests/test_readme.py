"""The README's walk-through runs as written: its marked shell blocks, command by command, with the
real CLI on PATH (as `source .venv/bin/activate` puts it) against a real server started in the
same folder (./data), and its retrieve-then-your-LLM loop with a stand-in for the LLM call only.

What is substituted is what the README itself tells the reader to fill in: `<next_cursor>` and
`<next_since>` from the previous answer, and `api_key`, `persona_id`, `question` in the Python
loop. The server listens on a free port instead of 8000 (other test runs share this machine),
so the address `http://127.0.0.1:8000` is replaced by the server's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import BIN, clean_env, free_port

README = Path(__file__).resolve().parents[1] / "README.md"
README_URL = "http://127.0.0.1:8000"


def marked_blocks(kind: str) -> list[str]:
    """The fenced blocks right after a `<!-- walkthrough:KIND ... -->` line, in order."""
    text = README.read_text("utf-8")
    pattern = rf"<!-- walkthrough:{kind}\b[^>]*-->\s*\n```\w*\n(.*?)\n```"
    return re.findall(pattern, text, flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands: comment lines dropped, a command taken whole across `\\`
    continuations and quotes that span lines."""
    found: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        found.append(pending)
        pending = ""
    assert not pending, f"an unfinished command in the README: {pending!r}"
    return found


@dataclass
class Step:
    command: str
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Walk:
    url: str
    folder: Path
    steps: list[Step]
    variables: dict[str, str]
    #: The shell variables after the last step (`declare -p`), and the environment.
    state: Path
    env: dict[str, str]

    def again(self, step: Step) -> Step:
        """Run a step's command once more, as a reader would, with the variables as they are."""
        script = f"set -o pipefail\nsource {shlex.quote(str(self.state))}\n{step.command}\n"
        script = script.replace(README_URL, self.url)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (step.command, done.stderr)
        return Step(step.command, done.stdout, done.stderr)


def _start(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    # In the folder, with no --data-dir: the README's `serve` (its data in ./data).
    with (folder / "serve.log").open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (folder / "serve.log").read_text("utf-8")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise AssertionError("server not ready in 180 s")


def _placeholders(command: str, steps: list[Step]) -> str:
    """`<name>` is the `name` of the latest answer that has one, as the README says to do."""
    for name in re.findall(r"<([a-z_]+)>", command):
        for step in reversed(steps):
            try:
                value = step.json().get(name)
            except (ValueError, AttributeError):
                continue
            if value is not None:
                command = command.replace(f"<{name}>", str(value))
                break
        else:
            raise AssertionError(f"no earlier answer gives <{name}> for {command!r}")
    return command


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    folder = tmp_path_factory.mktemp("readme")
    venv_bin = str(Path(sys.executable).parent)
    # `source .venv/bin/activate`: the venv's bin first on PATH, so `personaizer` is found.
    env = clean_env(PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    proc, url = _start(folder, env)
    state = folder / "walk.vars"
    state.write_text("", "utf-8")
    steps: list[Step] = []
    variables: list[str] = []
    try:
        for block in marked_blocks("shell"):
            for command in commands(block):
                variables += re.findall(r"(?:^|;\s*)([A-Z][A-Z0-9_]*)=", command, flags=re.M)
                run = _placeholders(command.replace(README_URL, url), steps)
                keep = " ".join(dict.fromkeys(variables))
                script = (
                    f"set -o pipefail\nsource {shlex.quote(str(state))}\n{run}\nrc=$?\n"
                    + (f"declare -p {keep} > {shlex.quote(str(state))}\n" if keep else "")
                    + "exit $rc\n"
                )
                done = subprocess.run(
                    ["bash", "-c", script],
                    cwd=folder,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, (command, done.stdout, done.stderr)
                steps.append(Step(command, done.stdout, done.stderr))
        names = list(dict.fromkeys(variables))
        printed = subprocess.run(
            [
                "bash",
                "-c",
                f"source {shlex.quote(str(state))}\n"
                'for v in "$@"; do printf "%s=%s\\0" "$v" "${!v}"; done',
                "walk",
                *names,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        known = dict(v.split("=", 1) for v in printed.split("\0") if "=" in v)
        yield Walk(url, folder, steps, known, state, env)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _one(walk: Walk, fragment: str) -> Step:
    found = [s for s in walk.steps if fragment in s.command]
    assert len(found) == 1, (fragment, [s.command for s in found])
    return found[0]


def test_the_blocks_are_found() -> None:
    # A marker lost in an edit would leave nothing to run, and the walk would pass vacuously.
    shell = [c for b in marked_blocks("shell") for c in commands(b)]
    assert len(marked_blocks("shell")) == 2 and len(shell) >= 20
    assert any("personaizer users create" in c for c in shell)
    assert any("/graphql" in c for c in shell)
    assert len(marked_blocks("python")) == 1


def test_the_shell_walk_through_runs_as_written(walk: Walk) -> None:
    assert walk.variables["KEY"].startswith("pa_live_")
    assert walk.variables["P"].startswith("per_")

    batch = _one(walk, 'PUT $U/api/knowledge/docs -H "$H" -H "$J" -d \'{"items"').json()
    assert batch["summary"] == {"created": 2, "updated": 0, "no_op": 0}
    assert [r["external_id"] for r in batch["results"]] == ["faq-shipping", "lamp"]
    # "run it again: every item is a no_op"
    step = _one(walk, 'PUT $U/api/knowledge/docs -H "$H" -H "$J" -d \'{"items"')
    replay = walk.again(step).json()
    assert replay["summary"] == {"created": 0, "updated": 0, "no_op": 2}
    single = _one(walk, "-X PUT $U/api/knowledge/docs/by-external-id/returns").json()
    assert single["status"] == "created" and single["document"]["title"] == "Returns"
    read = _one(walk, 'curl -s $U/api/knowledge/docs/by-external-id/returns -H "$H"').json()
    assert read["content"] == "Return any item within 30 days."

    first = _one(walk, '"$U/api/knowledge/docs?limit=2"').json()
    assert [d["external_id"] for d in first["items"]] == ["faq-shipping", "lamp"]
    assert first["total"] == 3 and "content" not in first["items"][0]
    second = _one(walk, "cursor=").json()
    assert [d["external_id"] for d in second["items"]] == ["returns"]
    assert second["items"][0]["content"] == "Return any item within 30 days."
    assert second["next_cursor"] is None
    assert _one(walk, "updated_since=").json()["total"] == 3

    changes = _one(walk, "changes?limit=100").json()
    assert {c["external_id"] for c in changes["changes"]} == {"faq-shipping", "lamp", "returns"}
    assert _one(walk, "changes?since=").json()["changes"] == []
    deleted = _one(walk, "-X DELETE")
    assert deleted.stdout.startswith("HTTP/1.1 204")

    attached = _one(walk, "-X PUT $U/api/personas/$P/knowledge").json()
    assert attached["external_ids"] == ["faq-shipping", "lamp"] and attached["added"] == 2
    listing = _one(walk, 'curl -s $U/api/personas/$P/knowledge -H "$H"').json()
    assert [(d["external_id"], d["via"]) for d in listing["items"]] == [
        ("faq-shipping", "attached"),
        ("lamp", "attached"),
    ]
    assert _one(walk, "-X PATCH").json()["greeting"] == "Hi, I am Ava."
    personas = _one(walk, 'curl -s $U/api/personas -H "$H"').json()
    assert [p["name"] for p in personas["items"]] == ["Ava"]

    delivery = _one(walk, "how long does delivery take").json()
    assert delivery["mode"] == "hybrid" and delivery["results"][0]["external_id"] == "faq-shipping"
    usb = _one(walk, '\\"usb\\"').json()
    assert usb["mode"] == "keyword" and [h["external_id"] for h in usb["results"]] == ["lamp"]

    assert _one(walk, "/api/subscription -H").json()["plan"]["id"] == "pro"
    usage = _one(walk, "/api/subscription/usage").json()["usage"]
    assert usage["knowledge_docs"]["used"] == 2 and usage["personas"]["used"] == 1

    bad = _one(walk, "bad%20id").json()
    assert bad["code"] == "knowledge.invalid_external_id" and bad["status"] == 422
    assert bad["request_id"]
    assert "knowledge.invalid_external_id" in _one(walk, "/problems/").stdout

    graphql = _one(walk, "$U/graphql").json()
    assert "errors" not in graphql
    (ava,) = graphql["data"]["personas"]["items"]
    assert ava["name"] == "Ava"
    assert [d["externalId"] for d in ava["knowledge"]["items"]] == ["faq-shipping", "lamp"]


def test_the_llm_loop_runs_with_a_stand_in_llm(walk: Walk) -> None:
    (code,) = marked_blocks("python")
    prompts: list[str] = []

    class StandInLLM:
        """The one thing not run for real: the README leaves the model to the reader."""

        def complete(self, prompt: str) -> str:
            prompts.append(prompt)
            return "Orders ship within two days."

    scope: dict[str, Any] = {
        "api_key": walk.variables["KEY"],
        "persona_id": walk.variables["P"],
        "question": "how long does delivery take",
        "my_llm": StandInLLM(),
    }
    exec(compile(code.replace(README_URL, walk.url), "README.md", "exec"), scope)
    (prompt,) = prompts
    assert scope["answer"] == "Orders ship within two days."
    assert prompt.startswith("You are a friendly support agent.\n\nAnswer from these sources only")
    # The persona's documents as cited sources, best first, and the question last.
    assert "[Shipping]\nOrders ship within two days." in prompt
    assert "The Aurora lamp has a USB-C port." in prompt
    assert prompt.index("[Shipping]") < prompt.index("USB-C")
    assert prompt.endswith("Question: how long does delivery take")
