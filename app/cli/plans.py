"""`personaizer plans ...`: the plans every server reads, from the database's `plans` table."""

from __future__ import annotations

import json
from typing import Annotated, Any

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
from app.services import plans
from app.settings import Plan, PlanLimits

cli = typer.Typer(
    help="Manage plans (the database's plans table, which every server reads).",
    no_args_is_help=True,
)

_LIMITS = tuple(PlanLimits.model_fields)


def _plan_json(plan: Plan, users: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = plan.model_dump(mode="json")
    if users is not None:
        body["users"] = users
    return body


@cli.command("list")
def plans_list(
    json_out: JsonFlag = False, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """List the plans with the number of users on each."""
    found = run_with_runtime(
        load_settings(data_dir, database_url), lambda runtime: plans.list_plans(runtime=runtime)
    )
    if json_out:
        out.print(dump([_plan_json(e.plan, e.users) for e in found]))
        return
    table = Table("id", "name", "users", *_LIMITS)
    for e in found:
        limits = e.plan.limits.model_dump()
        table.add_row(e.plan.id, e.plan.name, str(e.users), *(str(limits[k]) for k in _LIMITS))
    out.print(table)


@cli.command("show")
def plans_show(
    plan_id: Annotated[str, typer.Argument(metavar="ID")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print one plan as JSON, with the number of users on it."""
    entry = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: plans.show_plan(runtime=runtime, plan_id=plan_id),
    )
    out.print(dump(_plan_json(entry.plan, entry.users)))


Limit = Annotated[int | None, typer.Option(min=0, show_default=False)]


@cli.command("set")
def plans_set(
    plan_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[
        str | None, typer.Option(help="Display name [the current one; else ID]")
    ] = None,
    limits: Annotated[
        str | None,
        typer.Option(
            "--limits",
            help="JSON object of limits, e.g. '{\"personas\": 5}' (merged over the plan's)",
        ),
    ] = None,
    knowledge_docs: Limit = None,
    knowledge_chars: Limit = None,
    doc_chars: Limit = None,
    personas: Limit = None,
    batch_items: Limit = None,
    reads_per_minute: Limit = None,
    writes_per_minute: Limit = None,
    searches_per_minute: Limit = None,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a plan (every limit given) or change one (the limits given); every server uses
    it within PERSONAIZER_PLANS_REFRESH_S seconds."""
    given: dict[str, Any] = {}
    if limits is not None:
        try:
            parsed = json.loads(limits)
        except ValueError as exc:
            raise Fail(f"--limits is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise Fail('--limits must be a JSON object, e.g. {"personas": 5}')
        given.update(parsed)
    flags = {
        "knowledge_docs": knowledge_docs,
        "knowledge_chars": knowledge_chars,
        "doc_chars": doc_chars,
        "personas": personas,
        "batch_items": batch_items,
        "reads_per_minute": reads_per_minute,
        "writes_per_minute": writes_per_minute,
        "searches_per_minute": searches_per_minute,
    }
    given.update({k: v for k, v in flags.items() if v is not None})
    plan, new = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: plans.set_plan(runtime=runtime, plan_id=plan_id, name=name, limits=given),
    )
    if json_out:
        out.print(dump(_plan_json(plan)))
    else:
        out.print(f"{'created' if new else 'changed'} plan {plan.id}")


@cli.command("delete")
def plans_delete(
    plan_id: Annotated[str, typer.Argument(metavar="ID")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete a plan no user is on (nor the default plan)."""
    plan = run_with_runtime(
        load_settings(data_dir, database_url),
        lambda runtime: plans.delete_plan(runtime=runtime, plan_id=plan_id),
    )
    out.print(f"deleted plan {plan.id}")


@cli.command("import")
def plans_import(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Write the configured plans (the defaults, PERSONAIZER_PLANS, PERSONAIZER_PLANS_FILE) into
    the table, replacing plans of the same id; other plans stay."""
    done = run_with_runtime(
        load_settings(data_dir, database_url), lambda runtime: plans.import_plans(runtime=runtime)
    )
    out.print(f"imported {len(done)} plans: {', '.join(p.id for p in done)}")
