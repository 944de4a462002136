"""`personaizer users ...`: create, list, re-plan, set a password for, and delete users."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import (
    DatabaseUrl,
    DataDir,
    Fail,
    JsonFlag,
    dump,
    load_settings,
    out,
    run_with_runtime,
)
from app.services import accounts
from app.text import plural

cli = typer.Typer(help="Manage users.", no_args_is_help=True)


@cli.command("create")
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
    password = read_password() if password_stdin else None
    user = run_with_runtime(
        settings,
        lambda runtime: accounts.create_user(
            runtime=runtime, email=email, plan_id=plan, password=password
        ),
    )
    if json_out:
        out.print(dump(user.model_dump(mode="json")))
    else:
        out.print(f"created user {user.email} on plan {user.plan}")


@cli.command("list")
def users_list(
    json_out: JsonFlag = False, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """List users."""
    users = run_with_runtime(
        load_settings(data_dir, database_url), lambda runtime: accounts.list_users(runtime=runtime)
    )
    if json_out:
        out.print(dump([u.model_dump(mode="json") for u in users]))
        return
    table = Table("email", "plan", "created_at")
    for u in users:
        row = u.model_dump(mode="json")
        table.add_row(row["email"], row["plan"], row["created_at"])
    out.print(table)


@cli.command("set-plan")
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
        out.print(dump(user.model_dump(mode="json")))
    else:
        out.print(f"{user.email} is now on plan {user.plan}")


def read_password() -> str:
    """One line of stdin (never an argument: arguments show in `ps` and shell history)."""
    password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise Fail("the password must have at least 8 characters")
    return password


@cli.command("set-password")
def users_set_password(
    email: str, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Set a user's dashboard password, read from one line of stdin."""
    settings = load_settings(data_dir, database_url)
    password = read_password()
    user = run_with_runtime(
        settings,
        lambda runtime: accounts.set_password(runtime=runtime, email=email, password=password),
    )
    out.print(f"password set for {user.email}")


@cli.command("delete")
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
        held = run_with_runtime(
            settings, lambda runtime: accounts.user_data(runtime=runtime, email=email)
        )
        raise Fail(
            f"{held.email} has {_owned(held.keys, held.documents, held.personas)}; "
            "add --yes to delete the user with all of it"
        )
    gone = run_with_runtime(
        settings, lambda runtime: accounts.delete_user(runtime=runtime, email=email)
    )
    out.print(f"deleted {gone.email} with {_owned(gone.keys, gone.documents, gone.personas)}")


def _owned(keys: int, documents: int, personas: int) -> str:
    return (
        f"{plural(keys, 'key')}, {plural(documents, 'document')} and {plural(personas, 'persona')}"
    )
