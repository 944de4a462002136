"""The `plans` table (revision 0009) at the level of rows: seeding it from the configuration,
reading it back as `Plan`s. The use cases (`personaizer plans ...`) are app/services/plans.py."""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.models.base import format_time, utcnow
from app.settings import Plan, PlanLimits

_INSERT = text("INSERT INTO plans (id, name, limits, updated_at) VALUES (:id, :name, :limits, :at)")


def row_values(plan: Plan) -> dict[str, str]:
    return {
        "id": plan.id,
        "name": plan.name,
        "limits": json.dumps(plan.limits.model_dump(), sort_keys=True),
        "at": format_time(utcnow()),
    }


def plan_of(plan_id: str, name: str, limits: str) -> Plan:
    return Plan(id=plan_id, name=name, limits=PlanLimits.model_validate_json(limits))


def seed_if_empty(conn: Connection, plans: Mapping[str, Plan]) -> int:
    """Fill an empty table with `plans` (the configuration's); a table with any row is left
    alone, whatever the configuration says now: from then on it is the truth, changed only by
    `personaizer plans ...`. Returns how many rows were written. The caller's transaction (the
    one that upgraded the schema, under the migration lock) makes it once for several servers
    starting together."""
    if conn.execute(text("SELECT 1 FROM plans LIMIT 1")).first() is not None:
        return 0
    for plan in plans.values():
        conn.execute(_INSERT, row_values(plan))
    return len(plans)
