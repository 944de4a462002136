"""`personaizer keys ...`: create, list and disable API keys."""

from __future__ import annotations

from datetime import datetime
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
    scopes: Annotated[
        str | None,
        typer.Option(help="Comma-separated scopes (default: all), e.g. search,personas:read."),
    ] = None,
    personas: Annotated[
        str | None, typer.Option(help="Comma-separated persona ids it may search and read.")
    ] = None,
    origins: Annotated[
        str | None, typer.Option(help="Comma-separated browser origins it may be used from.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="When it stops working (ISO-8601; UTC if no offset).")
    ] = None,
    rate_limit: Annotated[
        int | None, typer.Option(help="Requests per minute and policy, within the plan's.")
    ] = None,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key; it (and its signing secret, with the search scope) is shown this once
    (the key is the last line of stdout)."""
    expires_at = None
    if expires is not None:
        try:
            expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            raise typer.BadParameter(f"{expires!r} is not an ISO-8601 time.") from None
    key = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: accounts.create_key(
            runtime=runtime,
            email=email,
            name=name,
            scopes=_list(scopes),
            persona_ids=_list(personas),
            allowed_origins=_list(origins),
            expires_at=expires_at,
            rate_limit=rate_limit,
        ),
    )
    if json_out:
        out.print(dump(key.model_dump(mode="json")))
        return
    err.print(f"API key {key.prefix}… for {email} ({key.name}); it is shown only once:")
    err.print(f"restrictions: {_restrictions(key.model_dump(mode='json'))}")
    if key.signing_secret:
        err.print(f"signing secret (for tenant tokens), shown only once: {key.signing_secret}")
    out.print(key.key)


def _list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _restrictions(row: dict[str, object]) -> str:
    """A key's restrictions in one cell: what it may do, and only what differs from a full key."""
    scopes = row["scopes"]
    parts = [" ".join(scopes) if isinstance(scopes, list) else "-"]
    for label, field in (
        ("personas", "persona_ids"),
        ("origins", "allowed_origins"),
        ("expires", "expires_at"),
        ("rate", "rate_limit"),
    ):
        value = row[field]
        if value is not None:
            shown = ",".join(value) if isinstance(value, list) else str(value)
            parts.append(f"{label}={shown}")
    return "; ".join(parts)


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
    table = Table("prefix", "name", "status", "created_at", "last_used_at", "restrictions")
    for k in keys:
        row = k.model_dump(mode="json")
        table.add_row(
            row["prefix"],
            row["name"],
            row["status"],
            row["created_at"],
            row["last_used_at"] or "-",
            _restrictions(row),
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
