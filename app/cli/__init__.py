"""`personaizer`: the operator's door (API.md section 9).

Every command takes `--data-dir` and `--database-url` after its own name (or the
`PERSONAIZER_DATA_DIR` / `PERSONAIZER_DATABASE_URL` environment variables). A command that fails
exits non-zero with one clear line on stderr.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from app.client.batching import DEFAULT_BATCH_CHARS
from app.embedding.embedder import Embedder
from app.errors import AppError
from app.services import accounts
from app.services.runtime import Runtime
from app.settings import Settings
from app.storage.database import Database, SchemaError

if TYPE_CHECKING:
    from app.sync import SyncReport

T = TypeVar("T")

cli = typer.Typer(
    name="personaizer",
    help="PersonAIzer self-hosted: serve the API and manage users and keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
users_cli = typer.Typer(help="Manage users.", no_args_is_help=True)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
cli.add_typer(keys_cli, name="keys")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the data lives [env PERSONAIZER_DATA_DIR; ./data]"),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL [env PERSONAIZER_DATABASE_URL]"),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Fail(Exception):
    """A clean failure: its message is the one line printed on stderr, exit status 1."""


def load_settings(data_dir: Path | None, database_url: str | None, **extra: Any) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise Fail(f"invalid configuration: {where}: {first['msg']}") from exc


def run_with_runtime(
    settings: Settings, use: Callable[[Runtime], Awaitable[T]], *, create: bool = False
) -> T:
    """Run `use` against the database; only `create=True` (serve, init) may make a new one."""
    check_database(settings, create=create)

    async def main() -> T:
        db = Database(settings)
        try:
            await db.migrate(create=create)
            return await use(Runtime(settings=settings, db=db, embedder=Embedder()))
        finally:
            await db.dispose()

    return _run(main())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except AppError as exc:
        raise Fail(exc.detail) from exc
    except SchemaError as exc:
        raise Fail(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise Fail(
            f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}"
        ) from exc


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file the settings point at, or None for a server database (PostgreSQL):
    there the server says whether the database exists, and no file can be made by mistake."""
    try:
        url = make_url(settings.effective_database_url)
    except ArgumentError as exc:
        raise Fail(f"invalid database URL: {exc}") from exc
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def check_database(settings: Settings, *, create: bool) -> None:
    """Data-dir safety: a command run with the wrong --data-dir (or from another folder) must
    not make a new empty database and report success there. Only `serve` and `init` create."""
    path = sqlite_file(settings)
    if path is None:
        return
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise Fail(f"{folder} is a file, not a data folder (check --data-dir)")
            break
    if path.is_dir():
        raise Fail(f"{path} is a folder, not a database file")
    if not path.exists() and not create:
        where = f"--data-dir {path.parent}" if not settings.database_url else "--database-url"
        raise Fail(
            f"no database at {path.resolve()}: run `personaizer init {where}` to make one, "
            "or point --data-dir at an existing one"
        )


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- serve ----------------------------------------------------------------------------------


@cli.command()
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
    if settings.encoder == "onnx":
        from app.embedding.onnx_encoder import EncoderUnavailable, check_available

        try:
            check_available()
        except EncoderUnavailable as exc:
            raise Fail(str(exc)) from exc
    if workers > 1 and not settings.redis_url:
        raise Fail(
            "--workers above 1 needs PERSONAIZER_REDIS_URL: rate limits counted in each "
            "process's memory would multiply every user's budget by the number of workers"
        )
    if workers > 1 and demo:
        raise Fail("--demo runs with one worker; start once with --demo, then with --workers")
    database = sqlite_file(settings)
    if database is not None:
        from app.files import private_dir
        from app.storage.backup import server_lock

        # Held until the process ends: `personaizer restore` refuses while any server holds it.
        private_dir(database.parent)
        _held.enter_context(server_lock(database))
    sock = listen_socket(host, port)
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    # Open (create, upgrade or refuse) the database before serving, so a file this build cannot
    # use is one line on stderr rather than a failed lifespan inside uvicorn.
    run_with_runtime(settings, lambda runtime: asyncio.sleep(0), create=True)
    if workers > 1:
        _serve_workers(settings, workers, sock)
        return
    try:
        app = create_app(settings)
    except SchemaError as exc:
        raise Fail(str(exc)) from exc
    if demo:
        from app.services.demo import install_demo

        install_demo(app, out)
    out.print(f"PersonAIzer listening on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    out.print(f"Data: {app.state.runtime.db.where}")
    # Timeouts and connection limits against slow and greedy clients: app/http/serving.py.
    server = uvicorn.Server(ServeConfig(app, settings))
    try:
        server.run(sockets=[sock])
    except SchemaError as exc:
        raise Fail(str(exc)) from exc
    if not server.started:
        raise Fail(f"the server did not start on {host}:{port} (see the log above)")


#: What `serve` holds for its whole run (the server lock).
_held = ExitStack()


def _serve_workers(settings: Settings, workers: int, sock: socket.socket) -> None:
    """N processes on one port (uvicorn's supervisor): each builds its own app from the same
    PERSONAIZER_* environment, so the options given here are passed on through it."""
    import os

    os.environ["PERSONAIZER_DATA_DIR"] = str(settings.data_dir)
    os.environ["PERSONAIZER_DATABASE_URL"] = settings.effective_database_url
    host, port = settings.host, settings.port
    out.print(
        f"PersonAIzer listening on http://{host}:{port} with {workers} workers"
        f"  (docs: http://{host}:{port}/docs)"
    )
    out.print(f"Data: {Database(settings).where}")
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


@cli.command()
def init(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Create a new, empty database (besides `serve`, the only command that creates one)."""
    settings = load_settings(data_dir, database_url)
    path = sqlite_file(settings)
    existed = path is not None and path.exists()
    run_with_runtime(settings, lambda runtime: asyncio.sleep(0), create=True)
    where = path.resolve() if path is not None else "the configured database"
    out.print(f"database ready at {where}" + (" (it existed already)" if existed else ""))


# --- users ----------------------------------------------------------------------------------


@users_cli.command("create")
def users_create(
    email: str,
    plan: Annotated[str | None, typer.Option(help="Plan id [the configured default]")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read a dashboard password from stdin.")
    ] = False,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user."""
    settings = load_settings(data_dir, database_url)
    password = _read_password() if password_stdin else None
    user = run_with_runtime(
        settings,
        lambda runtime: accounts.create_user(runtime=runtime, email=email, plan_id=plan, password=password),
    )
    if json_out:
        out.print(_dump(user.model_dump(mode="json")))
    else:
        out.print(f"created user {user.email} on plan {user.plan}")


@users_cli.command("list")
def users_list(
    json_out: JsonFlag = False, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """List users."""
    users = run_with_runtime(
        load_settings(data_dir, database_url), lambda runtime: accounts.list_users(runtime=runtime)
    )
    if json_out:
        out.print(_dump([u.model_dump(mode="json") for u in users]))
        return
    table = Table("email", "plan", "created_at")
    for u in users:
        row = u.model_dump(mode="json")
        table.add_row(row["email"], row["plan"], row["created_at"])
    out.print(table)


@users_cli.command("set-plan")
def users_set_plan(
    email: str,
    plan: str,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Put a user on a plan."""
    user = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: accounts.set_plan(runtime=runtime, email=email, plan_id=plan),
    )
    if json_out:
        out.print(_dump(user.model_dump(mode="json")))
    else:
        out.print(f"{user.email} is now on plan {user.plan}")


def _read_password() -> str:
    """One line of stdin (never an argument: arguments show in `ps` and shell history)."""
    password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise Fail("the password must have at least 8 characters")
    return password


@users_cli.command("set-password")
def users_set_password(
    email: str, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Set a user's dashboard password, read from one line of stdin."""
    settings = load_settings(data_dir, database_url)
    password = _read_password()
    user = run_with_runtime(
        settings, lambda runtime: accounts.set_password(runtime=runtime, email=email, password=password)
    )
    out.print(f"password set for {user.email}")


@users_cli.command("delete")
def users_delete(
    email: str,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: delete the user and all their data.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete a user with everything they own: keys, documents, personas, usage."""
    settings = load_settings(data_dir, database_url)
    if not yes:
        held = run_with_runtime(settings, lambda runtime: accounts.user_data(runtime=runtime, email=email))
        raise Fail(
            f"{held.email} has {held.keys} keys, {held.documents} documents and {held.personas} "
            "personas; add --yes to delete the user with all of it"
        )
    gone = run_with_runtime(settings, lambda runtime: accounts.delete_user(runtime=runtime, email=email))
    out.print(
        f"deleted {gone.email} with {gone.keys} keys, {gone.documents} documents and "
        f"{gone.personas} personas"
    )


# --- keys -----------------------------------------------------------------------------------


@keys_cli.command("create")
def keys_create(
    email: str,
    name: Annotated[str, typer.Option(help="A name to tell keys apart.")] = "default",
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key; it is shown this once (the last line of stdout)."""
    key = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: accounts.create_key(runtime=runtime, email=email, name=name),
    )
    if json_out:
        out.print(_dump(key.model_dump(mode="json")))
        return
    err.print(f"API key {key.prefix}… for {email} ({key.name}); it is shown only once:")
    out.print(key.key)


@keys_cli.command("list")
def keys_list(
    email: str,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List a user's keys (prefixes only; full keys are never stored)."""
    keys = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: accounts.list_keys(runtime=runtime, email=email),
    )
    if json_out:
        out.print(_dump([k.model_dump(mode="json") for k in keys]))
        return
    table = Table("prefix", "name", "status", "created_at", "last_used_at")
    for k in keys:
        row = k.model_dump(mode="json")
        table.add_row(
            row["prefix"], row["name"], row["status"], row["created_at"], row["last_used_at"] or "-"
        )
    out.print(table)


@keys_cli.command("disable")
def keys_disable(
    key_prefix: str,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Disable a key by its visible prefix; requests with it get 401 at once."""
    key = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: accounts.disable_key(runtime=runtime, prefix=key_prefix),
    )
    if json_out:
        out.print(_dump(key.model_dump(mode="json")))
    else:
        out.print(f"disabled {key.prefix}… ({key.name})")


# --- sync -----------------------------------------------------------------------------------


@cli.command()
def sync(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The folder to upload.")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="PERSONAIZER_API_KEY", help="The key to upload with.")
    ],
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    source: Annotated[
        str | None,
        typer.Option(help="Name of what this folder syncs into [the folder's name]."),
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete this source's documents whose file is gone.")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail, uploading nothing, if any file is skipped.")
    ] = False,
    batch_chars: Annotated[
        int, typer.Option(min=1, help="Characters per upload request, at most.")
    ] = DEFAULT_BATCH_CHARS,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for one request.")
    ] = 300.0,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Upload a folder through the public API: Markdown, text, reStructuredText, HTML, PDF and
    DOCX files (and text files without an extension). Unchanged files are no-ops. Every skipped
    file is listed on stderr with its reason. --data-dir/--database-url are accepted for
    uniformity and unused: sync only speaks HTTP."""
    from app.client import AsyncClient, ClientError, RequestTimeout
    from app.sync import SyncError, sync_folder
    from app.sync.progress import BarProgress, LineProgress

    progress: BarProgress | LineProgress = (
        BarProgress(err) if err.is_terminal else LineProgress(err)
    )

    async def main() -> SyncReport:
        async with AsyncClient(url, api_key, timeout=timeout, on_retry=progress.retrying) as api:
            return await sync_folder(
                api,
                directory,
                source=source,
                prune=prune,
                strict=strict,
                max_chars=batch_chars,
                progress=progress,
            )

    try:
        if isinstance(progress, BarProgress):
            with progress:
                report = asyncio.run(main())
        else:
            report = asyncio.run(main())
    except SyncError as exc:
        raise Fail(str(exc)) from exc
    except RequestTimeout as exc:
        raise Fail(f"{exc}; re-run sync: finished documents are no-ops") from exc
    except ClientError as exc:
        raise Fail(str(exc)) from exc
    for skipped in report.skipped:
        err.print(f"skipped {skipped}", markup=False)
    out.print(
        f"{report.source}: created {report.created}, updated {report.updated}, "
        f"unchanged {report.no_op}, deleted {report.deleted}, skipped {len(report.skipped)} "
        f"({report.batches} requests, {report.seconds:.1f} s)",
        markup=False,
    )


# --- export-schema --------------------------------------------------------------------------


@cli.command("export-schema")
def export_schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the SDL to this file.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print the GraphQL schema (SDL) the server serves, exactly as `schema.graphql` holds it
    (and as `strawberry export-schema app.graphql.schema:schema` prints it). --data-dir and
    --database-url are accepted for uniformity and unused: the schema needs no data."""
    from strawberry.printer import print_schema

    from app.graphql.schema import schema

    sdl = print_schema(schema) + "\n"
    if output is None:
        sys.stdout.write(sdl)  # not `out`: rich would read `[String!]` as markup
    else:
        output.write_text(sdl, encoding="utf-8")


# --- db, migrate -------------------------------------------------------------------------

db_cli = typer.Typer(help="The database: schema upgrades.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


@db_cli.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Bring the database's schema to this version's (the server does the same at start)."""
    from app.storage import migrations

    settings = load_settings(data_dir, database_url)
    check_database(settings, create=False)  # a SQLite file must exist; a server's schema may not

    async def upgrade() -> migrations.State:
        db = Database(settings)
        try:
            return await db.migrate()
        finally:
            await db.dispose()

    found = _run(upgrade())
    where = Database(settings).where
    if found.current:
        out.print(f"{where}: schema already at revision {migrations.head()}")
    elif found.revision is None:
        out.print(f"{where}: schema created at revision {migrations.head()}")
    else:
        out.print(f"{where}: schema upgraded from {found.revision} to {migrations.head()}")


@cli.command()
def migrate(
    to: Annotated[
        str, typer.Option("--to", help="URL of the empty target, e.g. postgresql://u:p@host/db")
    ],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Copy this deployment (users, keys, personas, documents, chunks with their vectors,
    usage) into an empty database, without re-embedding anything; then check the copy.
    Stop the server first: writes made during the copy would not be in it."""
    from app.storage.transfer import TransferError, copy_database

    source_settings = load_settings(data_dir, database_url)
    target_settings = load_settings(data_dir, to)
    check_database(source_settings, create=False)

    async def copy() -> None:
        source, target = Database(source_settings), Database(target_settings)
        if source.where == target.where:
            raise Fail("the target is the source; name another database with --to")
        try:
            await source.migrate(create=False)
            await target.migrate()
            report = await copy_database(source, target, progress=lambda line: out.print(line))
        except TransferError as exc:
            raise Fail(str(exc)) from exc
        finally:
            await source.dispose()
            await target.dispose()
        total = sum(report.rows.values())
        out.print(
            f"copied {total} rows from {source.where} to {target.where}; counts match, "
            f"searches agree for {report.users_checked} users"
        )

    _run(copy())


# --- backup, restore -----------------------------------------------------------------------

PG_BACKUP = "on PostgreSQL use pg_dump to back up and pg_restore to restore (see docs/scaling.md)"


@cli.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="The new file (or a folder to put it in).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Copy the SQLite database to DEST while the server runs: one consistent moment of it,
    checked, readable by its owner only."""
    from app.storage.backup import BackupError
    from app.storage.backup import backup as copy

    settings = load_settings(data_dir, database_url)
    database = sqlite_file(settings)
    if database is None:
        raise Fail(PG_BACKUP)
    check_database(settings, create=False)
    try:
        written = copy(database, dest)
    except BackupError as exc:
        raise Fail(str(exc)) from exc
    out.print(f"backed up {database} to {written}")


@cli.command()
def restore(
    src: Annotated[Path, typer.Argument(help="A file made by `personaizer backup`.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Put the backup SRC in place of the SQLite database (stop the server first; the replaced
    database is kept as a .bak beside it)."""
    from app.storage.backup import BackupError
    from app.storage.backup import restore as put_back

    settings = load_settings(data_dir, database_url)
    database = sqlite_file(settings)
    if database is None:
        raise Fail(PG_BACKUP)
    try:
        kept = put_back(src, database)
    except BackupError as exc:
        raise Fail(str(exc)) from exc
    where = f"; the replaced database is kept as {kept}" if kept else ""
    out.print(f"restored {database} from {src}{where}")


def main(argv: list[str] | None = None) -> None:
    """The `personaizer` entry point: every failure is one line on stderr and a non-zero exit,
    usage mistakes included (exit 2, as click has it)."""
    try:
        code = cli(args=argv, standalone_mode=False)
    except Fail as exc:
        _fail(str(exc), 1)
    except typer.TyperException as exc:
        # `personaizer` or `personaizer users` alone: the help, as asked (typer does not export
        # the class of this one).
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            out.print(exc.ctx.get_help(), markup=False)  # type: ignore[attr-defined]
            sys.exit(0)
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except OSError as exc:
        _fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", 1)
    except Exception as exc:
        # A bug: still one line for the operator; PERSONAIZER_TRACEBACK=1 shows where.
        if os.environ.get("PERSONAIZER_TRACEBACK") == "1":
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (PERSONAIZER_TRACEBACK=1 shows where)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, status: int) -> NoReturn:
    err.print(f"error: {' '.join(message.split())}", markup=False)
    sys.exit(status)
