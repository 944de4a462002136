"""`personaizer`: the operator's door (API.md section 9).

Every command takes `--data-dir` and `--database-url` after its own name (or the
`PERSONAIZER_DATA_DIR` / `PERSONAIZER_DATABASE_URL` environment variables). A command that fails
exits non-zero with one clear line on stderr.

One module per command group: serve.py, users.py, keys.py, data.py (init, db upgrade, migrate,
backup, restore), sync.py, schema.py (export-schema); common.py holds what they share. The use
cases are services (app/services/operations.py for the database itself); the other doors are
reached only through app.main's wiring.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from app.cli import data, keys, plans, schema, serve, sync, tokens, users
from app.cli.common import Fail, check_bundle, err, load_settings, out, version
from app.errors import AppError
from app.services import encoder
from app.services.operations import OperationError

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="personaizer",
    help="PersonAIzer self-hosted: serve the API and manage users and keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    """`--version`: this build, its encoder and where the model comes from, resolved as a
    server start would (a damaged model is an error here too)."""
    if not value:
        return
    info = encoder.describe(load_settings(None, None))
    out.print(f"personaizer {version()}", markup=False)
    out.print(info.line(), markup=False)
    raise typer.Exit()


@cli.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version, the encoder and where its model comes from.",
        ),
    ] = False,
) -> None:
    """PersonAIzer self-hosted: serve the API and manage users and keys."""


# In this order in `personaizer --help`.
cli.command()(serve.serve)
cli.command()(data.init)
cli.add_typer(users.cli, name="users")
cli.add_typer(plans.cli, name="plans")
cli.add_typer(keys.cli, name="keys")
cli.add_typer(tokens.cli, name="tokens")
cli.command()(sync.sync)
cli.command("export-schema")(schema.export_schema)
cli.add_typer(data.db_cli, name="db")
cli.command()(data.migrate)
cli.command()(data.backup)
cli.command()(data.restore)


def main(argv: list[str] | None = None) -> None:
    """The `personaizer` entry point: every failure is one line on stderr and a non-zero exit,
    usage mistakes included (exit 2, as click has it)."""
    try:
        check_bundle()
        code = cli(args=argv, standalone_mode=False)
    except (Fail, OperationError) as exc:
        _fail(str(exc), 1)
    except AppError as exc:
        _fail(exc.detail, 1)
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
