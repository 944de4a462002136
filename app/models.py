"""SQLModel tables and the data models that cross the boundary.

Table models (`table=True`) stay inside services; the doors see only the `*Public` models here
(REST) or their own Strawberry types (GraphQL). Request models validate exactly what the contract
says and nothing more; unknown fields are ignored (API.md section 1).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import JSON, Column, Index, String, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
METADATA_MAX_BYTES = 8 * 1024
TITLE_MAX = 512

JsonObject = dict[str, Any]


def utcnow() -> datetime:
    """Now, in UTC, truncated to the millisecond the API shows (so values round-trip)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds and `Z`, the contract's only time format."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class UTCDateTime(TypeDecorator[datetime]):
    """Times stored as fixed-width RFC 3339 text, so they sort and compare as strings do."""

    impl = String(24)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        return None if value is None else format_time(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


#: A time as the API shows it: RFC 3339, UTC, milliseconds, `Z`.
Timestamp = Annotated[
    datetime,
    PlainSerializer(format_time, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "example": "2026-11-29T10:00:00.123Z"}
    ),
]


def _time_field(nullable: bool = False) -> Any:
    return Field(sa_type=UTCDateTime, nullable=nullable)


# --- validators shared by request models -------------------------------------------------


def check_external_id(value: str) -> str:
    if not EXTERNAL_ID_RE.match(value):
        raise PydanticCustomError(
            "knowledge.invalid_external_id",
            "external_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        )
    return value


def _check_metadata(value: JsonObject) -> JsonObject:
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            "metadata must serialize to at most 8 KiB of JSON (got {size} bytes)",
            {"size": size},
        )
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "content must not be blank")
    return value


ExternalId = Annotated[
    str,
    AfterValidator(check_external_id),
    # Documented, but checked by `check_external_id` so the error carries the contract's code.
    WithJsonSchema(
        {"type": "string", "pattern": EXTERNAL_ID_RE.pattern, "minLength": 1, "maxLength": 128}
    ),
]
Metadata = Annotated[JsonObject, AfterValidator(_check_metadata)]
Content = Annotated[str, AfterValidator(_not_blank)]
Title = Annotated[str | None, Field(default=None, max_length=TITLE_MAX)]


class RequestModel(BaseModel):
    """Base of request bodies. Plain pydantic, like the Public models: a SQLModel class may not
    have a field named `metadata` (it is the table registry), and the contract needs one."""

    model_config = ConfigDict(extra="ignore")


class PublicModel(BaseModel):
    """Base of response bodies (REST) and service results."""


# --- accounts ----------------------------------------------------------------------------


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=Column(String(320), unique=True, nullable=False))
    password_hash: str | None = None
    plan_id: str
    created_at: datetime = _time_field()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    name: str
    prefix: str = Field(index=True)
    key_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    status: str = "active"
    created_at: datetime = _time_field()
    last_used_at: datetime | None = _time_field(nullable=True)


KeyStatus = Literal["active", "disabled"]


class UserPublic(PublicModel):
    email: str
    plan: str
    created_at: Timestamp


class ApiKeyPublic(PublicModel):
    name: str
    prefix: str
    status: KeyStatus
    created_at: Timestamp
    last_used_at: Timestamp | None


class ApiKeyCreated(ApiKeyPublic):
    """The only model that ever carries a full key: the answer to its creation."""

    key: str


# --- knowledge ---------------------------------------------------------------------------


class KnowledgeDoc(SQLModel, table=True):
    __tablename__ = "knowledge_docs"
    __table_args__ = (
        UniqueConstraint("user_id", "external_id"),
        Index("ix_knowledge_docs_user_updated", "user_id", "updated_at"),
    )

    id: str = Field(primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    external_id: str
    title: str | None = None
    content: str
    metadata_: JsonObject = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    content_sha256: str
    char_count: int
    chunk_count: int
    created_at: datetime = _time_field()
    updated_at: datetime = _time_field()


class Chunk(SQLModel, table=True):
    """One embedded window of a document. Its id is the rowid in the vector and FTS indexes."""

    __tablename__ = "chunks"

    id: int | None = Field(default=None, primary_key=True)
    doc_id: str = Field(foreign_key="knowledge_docs.id", ondelete="CASCADE", index=True)
    user_id: int
    chunk_index: int
    text: str
    #: sha256 of the text that was embedded (title folded in): equal hash, reusable vector.
    embed_sha256: str
    #: The embedding: float32 little-endian, `DIMS` of them (app/vectors.py `to_blob`).
    embedding: bytes


class KnowledgeDocItem(RequestModel):
    """One item of a batch upsert."""

    external_id: ExternalId
    title: Title
    content: Content
    metadata: Metadata = Field(default_factory=dict)


class KnowledgeDocBatch(RequestModel):
    items: list[KnowledgeDocItem] = Field(min_length=1)


class KnowledgeDocBody(RequestModel):
    """Body of the single upsert: the external_id comes from the path."""

    external_id: ExternalId | None = None
    title: Title
    content: Content
    metadata: Metadata = Field(default_factory=dict)


UpsertStatus = Literal["created", "updated", "no_op"]


class KnowledgeDocPublic(PublicModel):
    external_id: str
    title: str | None
    content: str | None = Field(
        default=None, description="Left out of list items unless include_content=true."
    )
    metadata: JsonObject
    content_sha256: str
    char_count: int
    chunk_count: int
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, doc: KnowledgeDoc, *, include_content: bool) -> KnowledgeDocPublic:
        return cls(
            external_id=doc.external_id,
            title=doc.title,
            content=doc.content if include_content else None,
            metadata=doc.metadata_,
            content_sha256=doc.content_sha256,
            char_count=doc.char_count,
            chunk_count=doc.chunk_count,
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


class UpsertResult(PublicModel):
    external_id: str
    status: UpsertStatus


class UpsertSummary(PublicModel):
    created: int = 0
    updated: int = 0
    no_op: int = 0


class BatchUpsertResponse(PublicModel):
    results: list[UpsertResult]
    summary: UpsertSummary


class SingleUpsertResponse(PublicModel):
    status: UpsertStatus
    document: KnowledgeDocPublic


# --- personas ----------------------------------------------------------------------------


class Persona(SQLModel, table=True):
    __tablename__ = "personas"
    __table_args__ = (Index("ix_personas_user_id", "user_id", "id"),)

    #: `per_` + a ULID: sortable by creation, opaque to callers.
    id: str = Field(primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    name: str
    description: str = ""
    instructions: str = ""
    greeting: str | None = None
    metadata_: JsonObject = Field(default_factory=dict, sa_column=Column("metadata", JSON))
    created_at: datetime = _time_field()
    updated_at: datetime = _time_field()


class PersonaKnowledge(SQLModel, table=True):
    __tablename__ = "persona_knowledge"

    persona_id: str = Field(foreign_key="personas.id", ondelete="CASCADE", primary_key=True)
    doc_id: str = Field(
        foreign_key="knowledge_docs.id", ondelete="CASCADE", primary_key=True, index=True
    )


PERSONA_NAME_MAX = 120
PERSONA_DESCRIPTION_MAX = 2000
PERSONA_INSTRUCTIONS_MAX = 20000
PERSONA_GREETING_MAX = 2000


class PersonaCreate(RequestModel):
    name: str = Field(min_length=1, max_length=PERSONA_NAME_MAX)
    description: str = Field(default="", max_length=PERSONA_DESCRIPTION_MAX)
    instructions: str = Field(default="", max_length=PERSONA_INSTRUCTIONS_MAX)
    greeting: str | None = Field(default=None, max_length=PERSONA_GREETING_MAX)
    metadata: Metadata = Field(default_factory=dict)


class PersonaUpdate(RequestModel):
    """A partial update: only the fields sent (`model_fields_set`) change, so a field left out
    is never read. `greeting` may be set to null; the others may be left out but not null
    (their types say so, and defaults are not validated)."""

    name: str = Field(default=None, min_length=1, max_length=PERSONA_NAME_MAX)
    description: str = Field(default=None, max_length=PERSONA_DESCRIPTION_MAX)
    instructions: str = Field(default=None, max_length=PERSONA_INSTRUCTIONS_MAX)
    greeting: str | None = Field(default=None, max_length=PERSONA_GREETING_MAX)
    metadata: Metadata = Field(default=None)


class PersonaKnowledgeBody(RequestModel):
    external_ids: list[ExternalId]


class PersonaListItem(PublicModel):
    """A persona as list items show it: without `knowledge_external_ids`."""

    id: str
    name: str
    description: str
    instructions: str
    greeting: str | None
    metadata: JsonObject
    knowledge_count: int
    created_at: Timestamp
    updated_at: Timestamp


class PersonaPublic(PersonaListItem):
    knowledge_external_ids: list[str] = Field(description="Sorted.")


class PersonaKnowledgeResult(PublicModel):
    persona_id: str
    external_ids: list[str] = Field(description="The attached set after the call, sorted.")
    added: int = Field(description="How many documents were newly attached.")
    removed: int = Field(description="How many documents were detached.")


# --- subscription ------------------------------------------------------------------------


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


# --- lists -------------------------------------------------------------------------------


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list: `total` counts the whole list, not the page."""

    items: list[T]
    next_cursor: str | None
    total: int


class UsageCounter(SQLModel, table=True):
    """Per-user, per-calendar-month (UTC) counters that are events, not state."""

    __tablename__ = "usage_counters"

    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    #: `YYYY-MM`
    period: str = Field(primary_key=True)
    embedded_chunks: int = 0
    requests: int = 0


# --- search ------------------------------------------------------------------------------

SEARCH_QUERY_MAX = 1000
SEARCH_K_MAX = 50
SEARCH_EXTERNAL_IDS_MAX = 1000
SEARCH_METADATA_KEYS_MAX = 32
_INT64 = 2**63

SearchMode = Literal["hybrid", "semantic", "keyword"]


def _query_not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "query must not be blank")
    return value


def _check_metadata_filter(value: JsonObject) -> JsonObject:
    if len(value) > SEARCH_METADATA_KEYS_MAX:
        raise PydanticCustomError(
            "too_many_filters",
            "metadata may name at most {limit} keys",
            {"limit": SEARCH_METADATA_KEYS_MAX},
        )
    for key, item in value.items():
        # SQLite holds 64-bit integers; a larger one could never equal a stored value anyway.
        if isinstance(item, int) and not isinstance(item, bool) and not -_INT64 <= item < _INT64:
            raise PydanticCustomError(
                "integer_too_large", "metadata filter {key} is outside the 64-bit range", {"key": key}
            )
    return _check_metadata(value)


class SearchRequest(RequestModel):
    """Body of `POST /api/knowledge/search`. Scopes combine: a hit must match all given."""

    query: Annotated[
        str, Field(min_length=1, max_length=SEARCH_QUERY_MAX), AfterValidator(_query_not_blank)
    ] = Field(description="What to look for: free text; any characters are safe.")
    k: int = Field(5, ge=1, le=SEARCH_K_MAX, description="How many documents to return.")
    mode: SearchMode = Field(
        "hybrid",
        description="`hybrid` (keyword and vector rankings fused), `semantic` or `keyword`.",
    )
    persona_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Only documents attached to this persona (404 if it is not yours).",
    )
    external_ids: list[ExternalId] | None = Field(
        None,
        max_length=SEARCH_EXTERNAL_IDS_MAX,
        description="Only these documents; unknown ones are ignored, `[]` matches nothing.",
    )
    metadata: Annotated[JsonObject, AfterValidator(_check_metadata_filter)] | None = Field(
        None,
        description=(
            "Equality filters on top-level metadata keys: a document matches when each key is "
            "present with an equal JSON value (numbers compare by value, `true` is not `1`)."
        ),
    )


class SearchHit(PublicModel):
    external_id: str
    title: str | None
    score: float = Field(description="Higher is better; its scale depends on the mode.")
    chunk_index: int = Field(description="Which chunk of the document matched best (from 0).")
    text: str = Field(description="The text of that chunk.")
    metadata: JsonObject


class SearchResponse(PublicModel):
    results: list[SearchHit] = Field(description="Best first, at most one hit per document.")
    mode: SearchMode
    took_ms: float = Field(description="Time the server spent on the search, in milliseconds.")
