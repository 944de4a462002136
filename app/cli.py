"""`personaizer`: the operator's door (API.md section 9).

Every command takes `--data-dir` and `--database-url` after its own name (or the
`PERSONAIZER_DATA_DIR` / `PERSONAIZER_DATABASE_URL` environment variables). A command that fails
exits non-zero with one clear line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from app.db import Database, SchemaError
from app.embedding import Embedder
from app.errors import AppError
from app.services import accounts
from app.services.core import Core
from app.settings import Settings

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


def run_with_core(settings: Settings, use: Callable[[Core], Awaitable[T]]) -> T:
    async def main() -> T:
        db = Database(settings)
        try:
            await db.migrate()
            return await use(Core(settings=settings, db=db, embedder=Embedder()))
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
        raise Fail(f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}") from exc


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
) -> None:
    """Start the server on the embedded default (a SQLite file under the data dir)."""
    import uvicorn

    from app import logs
    from app.main import create_app

    settings = load_settings(data_dir, database_url, host=host, port=port)
    logs.configure(settings.log_level)
    # Open (create, upgrade or refuse) the database before serving, so a file this build cannot
    # use is one line on stderr rather than a failed lifespan inside uvicorn.
    run_with_core(settings, lambda core: asyncio.sleep(0))
    try:
        app = create_app(settings)
    except SchemaError as exc:
        raise Fail(str(exc)) from exc
    if demo:
        from app.demo import install_demo

        install_demo(app, out)
    out.print(f"PersonAIzer listening on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    out.print(f"Data: {app.state.core.db.path.resolve()}")
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SchemaError as exc:
        raise Fail(str(exc)) from exc
    if not server.started:
        raise Fail(f"the server did not start on {host}:{port} (see the log above)")


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
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < 8:
            raise Fail("the password must have at least 8 characters")
    user = run_with_core(
        settings,
        lambda core: accounts.create_user(core=core, email=email, plan_id=plan, password=password),
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
    users = run_with_core(
        load_settings(data_dir, database_url), lambda core: accounts.list_users(core=core)
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
    user = run_with_core(
        load_settings(data_dir, database_url),
        lambda core: accounts.set_plan(core=core, email=email, plan_id=plan),
    )
    if json_out:
        out.print(_dump(user.model_dump(mode="json")))
    else:
        out.print(f"{user.email} is now on plan {user.plan}")


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
    key = run_with_core(
        load_settings(data_dir, database_url),
        lambda core: accounts.create_key(core=core, email=email, name=name),
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
    keys = run_with_core(
        load_settings(data_dir, database_url),
        lambda core: accounts.list_keys(core=core, email=email),
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
    key = run_with_core(
        load_settings(data_dir, database_url),
        lambda core: accounts.disable_key(core=core, prefix=key_prefix),
    )
    if json_out:
        out.print(_dump(key.model_dump(mode="json")))
    else:
        out.print(f"disabled {key.prefix}… ({key.name})")


# --- sync -----------------------------------------------------------------------------------


@cli.command()
def sync(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of .txt/.md files.")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="PERSONAIZER_API_KEY", help="The key to upload with.")
    ],
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete synced documents whose file is gone.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Upload a folder of text and Markdown files through the public API (external_id from
    the relative path). Unchanged files are no-ops; --data-dir/--database-url are accepted for
    uniformity and unused: sync only speaks HTTP."""
    import httpx
    from rich.progress import Progress

    from app.sync import SyncError, sync_folder

    async def main() -> None:
        headers = {"X-Api-Key": api_key, "User-Agent": "personaizer-sync"}
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task("uploading", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
                report = await sync_folder(client, directory, prune=prune, on_progress=on_progress)
        for line in report.skipped:
            err.print(f"skipped {line}")
        out.print(
            f"created {report.created}, updated {report.updated}, unchanged {report.no_op}"
            + (f", deleted {report.deleted}" if prune else "")
        )

    try:
        asyncio.run(main())
    except SyncError as exc:
        raise Fail(str(exc)) from exc
    except httpx.TransportError as exc:
        raise Fail(f"cannot reach {url}: {exc}") from exc


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


def main(argv: list[str] | None = None) -> None:
    try:
        cli(args=argv)
    except Fail as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
