"""`personaizer keys ...`: create, list and disable API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import (
    DatabaseUrl,
    DataDir,
    JsonFlag,
    dump,
    err,
    load_settings,
    out,
    run_with_runtime,
)
from app.services import accounts

cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@cli.command("create")
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
        out.print(dump(key.model_dump(mode="json")))
        return
    err.print(f"API key {key.prefix}… for {email} ({key.name}); it is shown only once:")
    out.print(key.key)


@cli.command("list")
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
        out.print(dump([k.model_dump(mode="json") for k in keys]))
        return
    table = Table("prefix", "name", "status", "created_at", "last_used_at")
    for k in keys:
        row = k.model_dump(mode="json")
        table.add_row(
            row["prefix"], row["name"], row["status"], row["created_at"], row["last_used_at"] or "-"
        )
    out.print(table)


@cli.command("disable")
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
        out.print(dump(key.model_dump(mode="json")))
    else:
        out.print(f"disabled {key.prefix}… ({key.name})")
