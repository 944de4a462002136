"""`personaizer serve`: the server, in one process or several (`--workers`), optionally with a
demo account and sample data (`--demo`)."""

from __future__ import annotations

import asyncio
import errno
import socket
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from app.cli.common import (
    DatabaseUrl,
    DataDir,
    Fail,
    err,
    load_settings,
    out,
    run_with_runtime,
)
from app.services import demo as demos
from app.services import encoder, operations
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also make a demo user, key and sample data.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port (more than one needs PERSONAIZER_REDIS_URL).",
        ),
    ] = 1,
) -> None:
    """Start the server on the embedded default (a SQLite file under the data dir), or on the
    database named by --database-url."""
    import uvicorn

    from app.http import logs
    from app.http.serving import ServeConfig
    from app.main import create_app

    settings = load_settings(data_dir, database_url, host=host, port=port)
    logs.configure(settings.log_level, json_lines=settings.log_format == "json")
    # A damaged model directory or a missing package: one line now, not a server that listens
    # and never becomes ready.
    encoder.check(settings)
    if workers > 1 and not settings.redis_url:
        raise Fail(
            "--workers above 1 needs PERSONAIZER_REDIS_URL: rate limits counted in each "
            "process's memory would multiply every user's budget by the number of workers"
        )
    if workers > 1 and demo:
        raise Fail("--demo runs with one worker; start once with --demo, then with --workers")
    # The port first: a busy one fails before anything is made (the lock below creates the
    # data dir), so a server that never started leaves no empty data dir behind.
    sock = listen_socket(host, port)
    # Held until the process ends: `personaizer restore` refuses while any server holds it.
    _held.enter_context(operations.serving_lock(settings))
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    # Open (create, upgrade or refuse) the database before serving, so a file this build cannot
    # use is one line on stderr rather than a failed lifespan inside uvicorn. A database server
    # that cannot be reached yet (PostgreSQL starting or restarting) is not a reason to exit:
    # the server starts, answers /livez and a 503 /readyz, and opens it once it answers.
    try:
        run_with_runtime(settings, lambda runtime: asyncio.sleep(0), create=True)
    except operations.OperationError as exc:
        if not getattr(exc.__cause__, "transient", False):
            raise
        err.print(f"warning: {exc}; serving anyway, the database opens once it answers")
    # Every process signs dashboard cookies with this one (and a restart keeps it).
    settings = settings.model_copy(update={"session_secret": operations.session_secret(settings)})
    if workers > 1:
        _serve_workers(settings, workers, sock)
        return
    with operations.reported():
        app = create_app(settings)
    if demo:
        install_demo(app, out)
    out.print(f"PersonAIzer listening on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    out.print(f"Data: {app.state.runtime.db.where}")
    # Timeouts and connection limits against slow and greedy clients: app/http/serving.py.
    server = uvicorn.Server(ServeConfig(app, settings))
    with operations.reported():
        server.run(sockets=[sock])
    if not server.started:
        raise Fail(f"the server did not start on {host}:{port} (see the log above)")


#: What `serve` holds for its whole run (the server lock).
_held = ExitStack()


def _serve_workers(settings: Settings, workers: int, sock: socket.socket) -> None:
    """N processes on one port (uvicorn's supervisor): each builds its own app from the same
    PERSONAIZER_* environment, so what `serve` settled here is passed on through it: the
    command-line options (the MCP door answers the Host it listens as) and the session secret
    (a cookie signed by one worker must be good in every other)."""
    import os

    passed = {
        "DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.effective_database_url,
        "HOST": settings.host,
        "PORT": str(settings.port),
        "SESSION_SECRET": settings.session_secret,
    }
    os.environ.update({f"PERSONAIZER_{name}": value for name, value in passed.items()})
    host, port = settings.host, settings.port
    out.print(
        f"PersonAIzer listening on http://{host}:{port} with {workers} workers"
        f"  (docs: http://{host}:{port}/docs)"
    )
    out.print(f"Data: {operations.where(settings)}")
    from uvicorn.supervisors import Multiprocess

    from app.http.serving import ServeConfig

    # What uvicorn.run does for workers, with the same limits as one process (app/http/serving.py).
    config = ServeConfig("app.main:app_from_environment", settings, factory=True, workers=workers)
    Multiprocess(config, sockets=[sock]).run()


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything claims the server listens: a busy port is one
    line on stderr, and uvicorn serves on this very socket (so `--port 0` prints the real one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # connections accepted from a socket whose proto says TCP. Without it every response after
    # the first on a keep-alive connection waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn does: a port left in TIME_WAIT by a previous run is free to use at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Fail(
                f"port {port} on {host} is already in use (is another server running?)"
            ) from exc
        raise Fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def install_demo(app: Starlette, console: Console) -> None:
    """Make (or reuse) the demo account now, so its key can be printed, and load the samples
    once the server is up and the model ready."""
    settings: Settings = app.state.runtime.settings
    saved_at = settings.data_dir / demos.CREDENTIALS_FILE
    account = run_with_runtime(
        settings, lambda runtime: demos.ensure_demo_account(runtime, saved_at), create=True
    )
    if account.how == "reused":
        console.print(f"Demo user exists; its password and key are the ones saved in {saved_at}")
    elif account.how == "reset":
        console.print(
            "Demo user exists but its saved credentials were missing or no longer work: "
            "its password was reset and its demo key replaced"
        )
    console.print(f"Demo user: {demos.DEMO_EMAIL}  password: {account.password}")
    console.print(f"Demo API key: {account.key}")
    app.state.startup_hooks.append(partial(demos.load_samples, key=account.key))
