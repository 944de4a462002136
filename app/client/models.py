"""What the client returns: typed views of the v1 responses (API.md sections 5-9).

They ignore fields they do not know, as the contract asks of clients (additive changes only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

UpsertStatus = Literal["created", "updated", "no_op"]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Page(Model, Generic[T]):
    """One page of a list; `total` counts the whole list."""

    items: list[T]
    next_cursor: str | None
    total: int


class Document(Model):
    external_id: str
    title: str | None
    content: str | None = None
    metadata: dict[str, Any]
    content_sha256: str
    char_count: int
    chunk_count: int
    created_at: datetime
    updated_at: datetime


class PersonaDocument(Document):
    """A document of a persona's knowledge: `via` is `attached` (also when its filter matches
    it too) or `filter`."""

    via: str


class Change(Model):
    """One entry of the changes feed: `document` (without content) for `upsert`, None for
    `delete`."""

    external_id: str
    op: Literal["upsert", "delete"]
    updated_at: datetime
    document: Document | None


class ChangesPage(Model):
    """One call's worth of the changes feed. Store `next_since` once its `changes` are
    applied: the next call with it misses nothing."""

    changes: list[Change]
    next_since: str
    has_more: bool


class DocInput(Model):
    """One document to upsert."""

    external_id: str
    content: str
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def size(self) -> int:
        """What the batch budget counts: the characters the server will chunk and store."""
        return len(self.content) + len(self.title or "") + len(str(self.metadata))


class UpsertResult(Model):
    external_id: str
    status: UpsertStatus


class UpsertSummary(Model):
    created: int = 0
    updated: int = 0
    no_op: int = 0


class BatchResult(Model):
    results: list[UpsertResult]
    summary: UpsertSummary


class SingleUpsert(Model):
    status: UpsertStatus
    document: Document


class KnowledgeFilter(Model):
    """Knowledge by rule: documents matching it belong to the persona (API.md section 13)."""

    metadata: dict[str, Any]
    external_id_prefixes: list[str]


class PersonaSummary(Model):
    """A persona as lists show it (without its attached external_ids)."""

    id: str
    name: str
    description: str
    instructions: str
    greeting: str | None
    metadata: dict[str, Any]
    #: None from a server before section 13, as from a persona without a rule.
    knowledge_filter: KnowledgeFilter | None = None
    knowledge_count: int
    created_at: datetime
    updated_at: datetime


class Persona(PersonaSummary):
    knowledge_external_ids: list[str]


class PersonaKnowledge(Model):
    persona_id: str
    external_ids: list[str]
    added: int
    removed: int


class SearchHit(Model):
    external_id: str
    title: str | None
    score: float
    chunk_index: int
    text: str
    metadata: dict[str, Any]


class SearchResults(Model):
    results: list[SearchHit]
    mode: str
    took_ms: float


class PlanRef(Model):
    id: str
    name: str


class PlanLimits(Model):
    knowledge_docs: int
    knowledge_chars: int
    doc_chars: int
    personas: int
    batch_items: int
    reads_per_minute: int
    writes_per_minute: int
    searches_per_minute: int


class Subscription(Model):
    plan: PlanRef
    status: str
    current_period_start: datetime
    current_period_end: datetime
    limits: PlanLimits


class UsedOfLimit(Model):
    used: int
    limit: int


class Used(Model):
    used: int


class UsageBreakdown(Model):
    knowledge_docs: UsedOfLimit
    knowledge_chars: UsedOfLimit
    personas: UsedOfLimit
    embedded_chunks: Used
    requests: Used


class Usage(Model):
    period_start: datetime
    period_end: datetime
    usage: UsageBreakdown
