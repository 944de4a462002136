"""GraphQL: the caller (`viewer`), their plan and limits (`plan`) and this period's usage
(`usage`), API.md section 7, over `app.services.subscription`."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from app.graphql.context import Info
from app.graphql.scalars import BigInt
from app.models import SubscriptionPublic, UsagePublic, UsedOfLimit
from app.services import subscription


@strawberry.type
class Plan:
    id: str
    name: str


@strawberry.type(description="The signed-in user: whose key made the request.")
class Viewer:
    email: str
    plan: Plan


@strawberry.enum
class SubscriptionStatus(Enum):
    ACTIVE = "active"


@strawberry.type(description="The plan's limits; rates are per minute.")
class PlanLimits:
    knowledge_docs: BigInt
    knowledge_chars: BigInt
    doc_chars: BigInt
    personas: BigInt
    batch_items: BigInt
    reads_per_minute: BigInt
    writes_per_minute: BigInt
    searches_per_minute: BigInt


@strawberry.type(name="SubscriptionInfo", description="The plan, its limits and the period.")
class SubscriptionInfo:
    plan: Plan
    status: SubscriptionStatus
    current_period_start: datetime
    current_period_end: datetime = strawberry.field(
        description="Exclusive: the next period's start."
    )
    limits: PlanLimits

    @classmethod
    def of(cls, sub: SubscriptionPublic) -> SubscriptionInfo:
        return cls(
            plan=Plan(id=sub.plan.id, name=sub.plan.name),
            status=SubscriptionStatus(sub.status),
            current_period_start=sub.current_period_start,
            current_period_end=sub.current_period_end,
            limits=PlanLimits(**{k: BigInt(v) for k, v in sub.limits.model_dump().items()}),
        )


@strawberry.type(name="UsedOfLimit")
class UsedOfLimitType:
    used: BigInt
    limit: BigInt

    @classmethod
    def of(cls, value: UsedOfLimit) -> UsedOfLimitType:
        return cls(used=BigInt(value.used), limit=BigInt(value.limit))


@strawberry.type
class Used:
    used: BigInt


@strawberry.type
class UsageBreakdown:
    knowledge_docs: UsedOfLimitType
    knowledge_chars: UsedOfLimitType
    personas: UsedOfLimitType
    embedded_chunks: Used = strawberry.field(
        description="Chunks embedded this period (reused vectors not)."
    )
    requests: Used = strawberry.field(
        description="Authenticated API requests this period, this one included."
    )


@strawberry.type
class Usage:
    period_start: datetime
    period_end: datetime = strawberry.field(description="Exclusive: the next period's start.")
    usage: UsageBreakdown

    @classmethod
    def of(cls, usage: UsagePublic) -> Usage:
        u = usage.usage
        return cls(
            period_start=usage.period_start,
            period_end=usage.period_end,
            usage=UsageBreakdown(
                knowledge_docs=UsedOfLimitType.of(u.knowledge_docs),
                knowledge_chars=UsedOfLimitType.of(u.knowledge_chars),
                personas=UsedOfLimitType.of(u.personas),
                embedded_chunks=Used(used=BigInt(u.embedded_chunks.used)),
                requests=Used(used=BigInt(u.requests.used)),
            ),
        )


# --- resolvers -----------------------------------------------------------------------------


def viewer(info: Info) -> Viewer:
    """The caller, as authentication found them."""
    principal = info.context.principal
    return Viewer(email=principal.email, plan=Plan(id=principal.plan.id, name=principal.plan.name))


async def plan(info: Info) -> SubscriptionInfo:
    """The caller's plan, its limits and the current period (the calendar month in UTC)."""
    sub = await subscription.get_subscription(
        runtime=info.context.runtime, principal=info.context.principal
    )
    return SubscriptionInfo.of(sub)


async def usage(info: Info) -> Usage:
    """Usage in the current period, this request included."""
    return Usage.of(
        await subscription.get_usage(runtime=info.context.runtime, principal=info.context.principal)
    )
