"""Subscription: the caller's plan and this period's usage (API.md section 7).

Stateful usage (documents, characters, personas) is counted from the tables themselves, so it
always equals what the list endpoints show; event counts (embedded chunks, requests) come from
`UsageCounter`, plus the requests still pending in memory.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import col, select

from app.models import (
    KnowledgeDoc,
    Persona,
    PlanLimitsPublic,
    PlanRef,
    SubscriptionPublic,
    UsageBreakdown,
    UsageCounter,
    UsagePublic,
    Used,
    UsedOfLimit,
)
from app.services.runtime import Principal, Runtime, current_period, period_key


async def get_subscription(*, runtime: Runtime, principal: Principal) -> SubscriptionPublic:
    start, end = current_period()
    plan = principal.plan
    return SubscriptionPublic(
        plan=PlanRef(id=plan.id, name=plan.name),
        status="active",
        current_period_start=start,
        current_period_end=end,
        limits=PlanLimitsPublic(**plan.limits.model_dump()),
    )


async def get_usage(*, runtime: Runtime, principal: Principal) -> UsagePublic:
    start, end = current_period()
    period = period_key(start)
    limits = principal.plan.limits
    user_id = principal.user_id
    async with runtime.db.read() as session:
        docs, chars = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(KnowledgeDoc.char_count), 0)).where(
                    col(KnowledgeDoc.user_id) == user_id
                )
            )
        ).one()
        personas = (
            await session.execute(
                select(func.count()).select_from(Persona).where(col(Persona.user_id) == user_id)
            )
        ).scalar_one()
        embedded = (
            await session.execute(
                select(UsageCounter.embedded_chunks).where(
                    UsageCounter.user_id == user_id, UsageCounter.period == period
                )
            )
        ).scalar_one_or_none()
        requests = await runtime.requests.total(session, user_id, period)
    return UsagePublic(
        period_start=start,
        period_end=end,
        usage=UsageBreakdown(
            knowledge_docs=UsedOfLimit(used=docs, limit=limits.knowledge_docs),
            knowledge_chars=UsedOfLimit(used=chars, limit=limits.knowledge_chars),
            personas=UsedOfLimit(used=personas, limit=limits.personas),
            embedded_chunks=Used(used=embedded or 0),
            requests=Used(used=requests),
        ),
    )
