"""Plans as the operator manages them (`personaizer plans ...`): the `plans` table is the one
source of truth every server reads (docs/scaling.md, "Plans"); the configuration's plans are
only imported into it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, text
from sqlmodel import select

from app.errors import UnknownPlan, ValidationFailed
from app.models import User
from app.services.runtime import Runtime
from app.settings import Plan, PlanLimits
from app.storage import plan_rows


@dataclass(frozen=True, slots=True)
class PlanInUse:
    plan: Plan
    #: Accounts on it.
    users: int


async def list_plans(*, runtime: Runtime) -> list[PlanInUse]:
    runtime.forget_plans()
    plans = await runtime.plans()
    counts = await _users_per_plan(runtime)
    return [PlanInUse(plan=p, users=counts.get(p.id, 0)) for p in plans.values()]


async def show_plan(*, runtime: Runtime, plan_id: str) -> PlanInUse:
    for entry in await list_plans(runtime=runtime):
        if entry.plan.id == plan_id:
            return entry
    raise UnknownPlan(f"No plan {plan_id!r}; the plans are: {await _known(runtime)}.")


async def set_plan(
    *,
    runtime: Runtime,
    plan_id: str,
    name: str | None = None,
    limits: Mapping[str, Any] | None = None,
) -> tuple[Plan, bool]:
    """Create or change a plan; `limits` are merged over the plan's current ones (a new plan
    needs all of them). Returns the plan and whether it is new."""
    runtime.forget_plans()
    current = (await runtime.plans()).get(plan_id)
    merged: dict[str, Any] = current.limits.model_dump() if current else {}
    merged.update(limits or {})
    unknown = sorted(set(merged) - set(PlanLimits.model_fields))
    if unknown:
        raise ValidationFailed(
            f"Unknown limits {unknown}; the limits are: {', '.join(PlanLimits.model_fields)}."
        )
    try:
        plan = Plan(
            id=plan_id,
            name=name or (current.name if current else plan_id),
            limits=PlanLimits.model_validate(merged, strict=True),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "plan"
        raise ValidationFailed(f"Plan {plan_id!r}: {where}: {first['msg']}.") from exc
    await _write(runtime, [plan])
    return plan, current is None


async def import_plans(*, runtime: Runtime) -> list[Plan]:
    """Write the configuration's plans (defaults, PERSONAIZER_PLANS, PERSONAIZER_PLANS_FILE)
    into the table, replacing rows of the same id; other rows stay."""
    plans = list(runtime.settings.all_plans.values())
    await _write(runtime, plans)
    return plans


async def delete_plan(*, runtime: Runtime, plan_id: str) -> Plan:
    """Delete a plan no account is on; the configured default plan is kept too (a user made
    without --plan would be refused)."""
    entry = await show_plan(runtime=runtime, plan_id=plan_id)
    if entry.users:
        raise ValidationFailed(
            f"{entry.users} users are on plan {plan_id!r}; move them with "
            "`personaizer users set-plan` first."
        )
    if plan_id == runtime.settings.default_plan:
        raise ValidationFailed(
            f"{plan_id!r} is the default plan (PERSONAIZER_DEFAULT_PLAN); change that first."
        )
    async with runtime.db.write() as session:
        # Checked again inside the transaction: a user put on it meanwhile keeps it.
        await session.execute(
            text(
                "DELETE FROM plans WHERE id = :id"
                " AND NOT EXISTS (SELECT 1 FROM users WHERE plan_id = :id)"
            ),
            {"id": plan_id},
        )
    runtime.forget_plans()
    if plan_id in await runtime.plans():
        raise ValidationFailed(f"A user was put on plan {plan_id!r} meanwhile; it was kept.")
    return entry.plan


async def _write(runtime: Runtime, plans: list[Plan]) -> None:
    async with runtime.db.write() as session:
        for plan in plans:
            values = plan_rows.row_values(plan)
            await session.execute(text("DELETE FROM plans WHERE id = :id"), {"id": plan.id})
            await session.execute(
                text(
                    "INSERT INTO plans (id, name, limits, updated_at)"
                    " VALUES (:id, :name, :limits, :at)"
                ),
                values,
            )
    runtime.forget_plans()


async def _users_per_plan(runtime: Runtime) -> dict[str, int]:
    async with runtime.db.read() as session:
        rows = await session.execute(select(User.plan_id, func.count()).group_by(User.plan_id))
        return {plan_id: count for plan_id, count in rows.all()}


async def _known(runtime: Runtime) -> str:
    return ", ".join(sorted(await runtime.plans()))
