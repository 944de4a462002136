"""A throwaway `personaizer serve` for the scripts that measure a real server.

`own_server` makes a temporary data dir (or uses the empty database it is given), creates the
users it is asked for on the `unlimited` plan with one API key each, starts `personaizer serve`
on a free port, waits until /healthz says the model is loaded, and stops and removes it all at
the end. scripts/eval_cranfield.py (search quality) and scripts/bench.py --e2e (speed) both use
it, so both measure the server exactly as an operator starts it: its own process, its own
model, HTTP on a socket.

The scripts import it as a sibling module (`python scripts/<name>.py` puts scripts/ first on
sys.path); it needs nothing from the project but the `personaizer` executable.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

HEALTH_TIMEOUT_S = 120.0


class SetupError(Exception):
    """The own server could not be prepared or started."""


@dataclass(frozen=True)
class OwnServer:
    """A running own server: where it listens, an API key per user, its process id."""

    base_url: str
    #: email -> API key, in the order the users were asked for.
    api_keys: dict[str, str]
    pid: int
    log_path: Path

    @property
    def api_key(self) -> str:
        """The first user's key."""
        return next(iter(self.api_keys.values()))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def find_personaizer() -> str:
    """The ``personaizer`` executable next to the running interpreter, else on PATH."""
    bin_dir = Path(sys.executable).parent
    for name in ("personaizer", "personaizer.exe"):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("personaizer")
    if found is None:
        raise SetupError(f"no 'personaizer' executable in {bin_dir} or on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_cli(exe: str, args: Sequence[str], env: Mapping[str, str]) -> str:
    completed = subprocess.run(
        [exe, *args], capture_output=True, text=True, env=dict(env), check=False, timeout=300
    )
    if completed.returncode != 0:
        message = completed.stderr.strip() or completed.stdout.strip()
        raise SetupError(f"personaizer {args[0]} {args[1]} failed: {message}")
    return completed.stdout


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _new_user(exe: str, email: str, data_dir: Path, env: Mapping[str, str]) -> str:
    """Create `email` on the `unlimited` plan (no rate limit in the way); return a fresh key."""
    where = ["--data-dir", str(data_dir)]
    _run_cli(exe, ["users", "create", email, "--plan", "unlimited", *where], env)
    out = _run_cli(exe, ["keys", "create", email, "--json", *where], env)
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        key_doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        key_doc = None
    if not isinstance(key_doc, dict) or not isinstance(key_doc.get("key"), str):
        raise SetupError(f"personaizer keys create --json printed no key: {out[:200]!r}")
    key: str = key_doc["key"]
    return key


@contextlib.contextmanager
def own_server(
    database_url: str | None = None,
    emails: Sequence[str] = ("eval@example.com",),
    encoder: str | None = None,
) -> Iterator[OwnServer]:
    """Start ``personaizer serve`` on a temporary data dir (or on the empty database at
    `database_url`, e.g. a PostgreSQL one) with a user and key per email, and `encoder` as its
    PERSONAIZER_ENCODER when given; yield it running."""
    if not emails:
        raise SetupError("own_server needs at least one user")
    exe = find_personaizer()
    # The own server must not touch a database configured for something else.
    env = {k: v for k, v in os.environ.items() if k != "PERSONAIZER_DATABASE_URL"}
    if database_url:
        env["PERSONAIZER_DATABASE_URL"] = database_url
    if encoder:
        env["PERSONAIZER_ENCODER"] = encoder
    with tempfile.TemporaryDirectory(prefix="personaizer-own-", ignore_cleanup_errors=True) as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        chosen = env.get("PERSONAIZER_ENCODER", "default")
        log(f"starting own server ({exe}, data dir {data_dir}, encoder {chosen})")
        # Only `serve` and `init` create a database; every other command refuses a missing one.
        _run_cli(exe, ["init", "--data-dir", str(data_dir)], env)
        keys = {email: _new_user(exe, email, data_dir, env) for email in emails}

        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "serve.log"
        serve_cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port)]
        serve_cmd += ["--data-dir", str(data_dir)]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                serve_cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            try:
                _wait_healthy(base_url, process, log_path)
                log(f"own server ready at {base_url}")
                yield OwnServer(base_url, keys, process.pid, log_path)
            finally:
                _stop(process)


def _wait_healthy(base_url: str, process: "subprocess.Popen[bytes]", log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last = "no answer yet"
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SetupError(
                    f"personaizer serve exited with {process.returncode}:\n{_tail(log_path)}"
                )
            try:
                response = client.get("/healthz")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise SetupError(
        f"server not healthy after {HEALTH_TIMEOUT_S:g} s ({last}):\n{_tail(log_path)}"
    )


def _stop(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
