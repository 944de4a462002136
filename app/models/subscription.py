"""Plans as the API shows them, usage, and the usage counters."""

from __future__ import annotations

from typing import Literal

from sqlmodel import Field, SQLModel

from app.models.base import PublicModel, Timestamp


class PlanRef(PublicModel):
    id: str
    name: str


class PlanLimitsPublic(PublicModel):
    knowledge_docs: int
    knowledge_chars: int
    doc_chars: int
    personas: int
    batch_items: int
    reads_per_minute: int
    writes_per_minute: int
    searches_per_minute: int


class SubscriptionPublic(PublicModel):
    plan: PlanRef
    status: Literal["active"]
    current_period_start: Timestamp
    current_period_end: Timestamp = Field(description="Exclusive: the next period's start.")
    limits: PlanLimitsPublic


class UsedOfLimit(PublicModel):
    used: int
    limit: int


class Used(PublicModel):
    used: int


class UsageBreakdown(PublicModel):
    knowledge_docs: UsedOfLimit
    knowledge_chars: UsedOfLimit
    personas: UsedOfLimit
    embedded_chunks: Used = Field(description="Chunks embedded this period (reused vectors not).")
    requests: Used = Field(description="Authenticated API requests this period, this one included.")


class UsagePublic(PublicModel):
    period_start: Timestamp
    period_end: Timestamp = Field(description="Exclusive: the next period's start.")
    usage: UsageBreakdown


class UsageCounter(SQLModel, table=True):
    """Per-user, per-calendar-month (UTC) counters that are events, not state."""

    __tablename__ = "usage_counters"

    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    #: `YYYY-MM`
    period: str = Field(primary_key=True)
    embedded_chunks: int = 0
    requests: int = 0
