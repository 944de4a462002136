"""Real processes for tests that cross process boundaries: a private redis-server, a private
PgBouncer, and `personaizer serve` started as an operator would, each on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).with_name("personaizer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def clean_env(**settings: str) -> dict[str, str]:
    """The environment without the caller's PERSONAIZER_* settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    env.update({f"PERSONAIZER_{k.upper()}": v for k, v in settings.items()})
    return env


def personaizer(
    *args: str, env: Mapping[str, str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=dict(env),
        timeout=timeout,
        check=False,
    )


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server in `workdir`; yields its URL, stops it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def pgbouncer(workdir: Path, *, socket_dir: str, database: str, pool_size: int) -> Iterator[str]:
    """A private PgBouncer in transaction pooling mode in `workdir`, in front of the PostgreSQL
    listening on `socket_dir`, with at most `pool_size` server connections for `database`;
    yields a URL for it, stops it afterwards. PgBouncer refuses to run as root: as root it runs
    as the embedded PostgreSQL's own user, who may read that server's socket."""
    binary = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{database} = host={socket_dir} dbname={database} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    (workdir / "users.txt").write_text('"postgres" ""\n')
    command = [binary, str(config)]
    if os.geteuid() == 0:
        for path in (workdir, *workdir.parents):
            path.chmod(path.stat().st_mode | 0o005)  # others may traverse (and read workdir)
        workdir.chmod(0o777)
        command[1:1] = ["-u", "embedded_postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = workdir / "pgbouncer.log"
                raise RuntimeError(
                    f"pgbouncer did not start on port {port}: "
                    f"{log.read_text() if log.exists() else process.returncode}"
                )
            time.sleep(0.05)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serve(*args: str, env: Mapping[str, str], log: Path) -> Iterator[str]:
    """`personaizer serve ARGS` on a free port until /healthz is 200 (the model loaded);
    yields its base URL, stops it (SIGTERM) afterwards. Its output goes to `log`."""
    port = free_port()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 240
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited early:\n{log.read_text()}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not become healthy:\n{log.read_text()}")
                time.sleep(0.3)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
