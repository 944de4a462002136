"""Knowledge documents and their chunks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, BeforeValidator, ConfigDict, ValidationInfo
from pydantic import BaseModel as PydanticBase
from pydantic_core import PydanticCustomError
from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType
from sqlmodel import Field, SQLModel

from app.models.base import (
    BYTE_ORDERED_TEXT,
    Content,
    ExternalId,
    JsonObject,
    Metadata,
    PublicModel,
    RequestModel,
    Timestamp,
    Title,
    time_field,
)
from app.models.json_equality import StoredJson
from app.models.search import check_metadata_filter


class KnowledgeDoc(SQLModel, table=True):
    __tablename__ = "knowledge_docs"
    __table_args__ = (
        UniqueConstraint("user_id", "external_id"),
        Index("ix_knowledge_docs_user_updated", "user_id", "updated_at"),
        Index("ix_knowledge_docs_user_change_seq", "user_id", "change_seq"),
    )

    id: str = Field(primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    #: Byte order on both engines (revision 0006): lists and cursors must not depend on the
    #: database's collation.
    external_id: str = Field(sa_type=BYTE_ORDERED_TEXT)
    title: str | None = None
    content: str
    metadata_: JsonObject = Field(default_factory=dict, sa_column=Column("metadata", StoredJson))
    content_sha256: str
    char_count: int
    chunk_count: int
    created_at: datetime = time_field()
    updated_at: datetime = time_field()
    #: The user's change sequence number of the write that made this version (revision 0007):
    #: assigned inside the write transaction, which holds the user's write lock, so a user's
    #: seqs commit in order. The changes feed reads documents and tombstones above a token's seq.
    change_seq: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})


class KnowledgeTombstone(SQLModel, table=True):
    """A deleted document, for the changes feed: kept at least the retention period, and
    removed as soon as the external_id is created again (the document's own seq then tells)."""

    __tablename__ = "knowledge_tombstones"
    __table_args__ = (Index("ix_knowledge_tombstones_user_seq", "user_id", "seq"),)

    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    external_id: str = Field(sa_type=BYTE_ORDERED_TEXT, primary_key=True)
    seq: int = Field(sa_type=BigInteger)
    deleted_at: datetime = time_field()


class KnowledgeFeedState(SQLModel, table=True):
    """Per user: the last change seq handed out, and the highest seq of a purged tombstone (a
    feed token at or above it has missed nothing)."""

    __tablename__ = "knowledge_feeds"

    user_id: int = Field(
        foreign_key="users.id",
        ondelete="CASCADE",
        primary_key=True,
        sa_column_kwargs={"autoincrement": False},
    )
    last_seq: int = Field(default=0, sa_type=BigInteger)
    purged_seq: int = Field(default=0, sa_type=BigInteger)


#: Dimensions of the embedding model's vectors (all-MiniLM-L6-v2).
EMBEDDING_DIMS = 384
#: A batch of embeddings: one unit-length float32 row of `EMBEDDING_DIMS` per text.
Vectors = npt.NDArray[np.float32]


class _PgVector(UserDefinedType[Any]):
    """pgvector's `vector(n)`; values cross as numpy arrays (app/storage/postgres_driver.py's codec)."""

    cache_ok = True
    # Batched ORM inserts put parameters in a VALUES list, where PostgreSQL would take an
    # uncast one for text: the cast makes asyncpg encode it with the vector codec.
    render_bind_cast = True

    def __init__(self, dims: int = EMBEDDING_DIMS) -> None:
        self.dims = dims

    def get_col_spec(self, **kw: Any) -> str:
        return f"vector({self.dims})"


# So that reflecting a PostgreSQL table (the schema check at start) knows the type.
ischema_names["vector"] = _PgVector


class Embedding(TypeDecorator[np.ndarray]):
    """A chunk's float32 vector, a numpy array in Python: a little-endian blob on SQLite,
    pgvector's `vector(384)` on PostgreSQL (where the HNSW index reads it)."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PgVector())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        vector = np.ascontiguousarray(value, dtype=np.float32)
        return vector if dialect.name == "postgresql" else vector.tobytes()

    def process_result_value(self, value: Any, dialect: Dialect) -> np.ndarray | None:
        if value is None or isinstance(value, np.ndarray):
            return value
        return np.frombuffer(value, dtype=np.float32)


class Chunk(SQLModel, table=True):
    """One embedded window of a document. Its id is the rowid in the vector and FTS indexes."""

    __tablename__ = "chunks"
    #: SQLite: ids are never reused (revision 0004), so an id names one vector for good, which
    #: the search's vector cache relies on (app/storage/index/vector_cache.py).
    __table_args__ = {"sqlite_autoincrement": True}

    #: SQLite: INTEGER PRIMARY KEY AUTOINCREMENT, the rowid its vec0 row shares.
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    doc_id: str = Field(foreign_key="knowledge_docs.id", ondelete="CASCADE", index=True)
    user_id: int
    chunk_index: int
    text: str
    #: sha256 of the text that was embedded (title folded in): equal hash, reusable vector.
    embed_sha256: str
    #: The embedding, unit length, `EMBEDDING_DIMS` float32.
    embedding: Any = Field(sa_column=Column(Embedding(), nullable=False))


class KnowledgeDocItem(RequestModel):
    """One item of a batch upsert."""

    external_id: ExternalId
    title: Title
    content: Content
    metadata: Metadata = Field(default_factory=dict)


def _within_batch_items(items: Any, info: ValidationInfo) -> Any:
    """Refuse a batch over the plan's `batch_items` from its length alone, before any item is
    validated: a 10 MB batch of tiny items would otherwise be checked item by item first. The
    limit comes from the validation context (`app.http.validation.validation_context`); without one
    the service checks it, after validation."""
    limit = (info.context or {}).get("batch_items")
    if isinstance(items, list) and isinstance(limit, int) and len(items) > limit:
        raise PydanticCustomError(
            "knowledge.batch_too_large",
            "at most {limit} items on this plan, not {count}",
            {"limit": limit, "count": len(items)},
        )
    return items


class KnowledgeDocBatch(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "external_id": "faq-shipping",
                            "title": "Shipping",
                            "content": "Orders ship within two days.",
                        },
                        {
                            "external_id": "lamp",
                            "content": "The Aurora lamp has a USB-C port.",
                            "metadata": {"lang": "en"},
                        },
                    ]
                }
            ]
        }
    )

    items: Annotated[list[KnowledgeDocItem], BeforeValidator(_within_batch_items)] = Field(
        min_length=1, description="1 to the plan's batch_items documents."
    )


class KnowledgeDocBody(RequestModel):
    """Body of the single upsert: the external_id comes from the path."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "title": "Returns",
                    "content": "Return any item within 30 days.",
                    "metadata": {"lang": "en"},
                }
            ]
        }
    )

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


#: A page of a document as the MCP door's `get_document` answers it, in characters (code
#: points, as `char_count` counts them): the default is a few thousand tokens, which an agent's
#: context takes without thinking; the maximum keeps one call far below a whole long document
#: (a 70,000-character PDF is nine default pages, three maximal ones).
DOC_PAGE_DEFAULT_CHARS = 8_000
DOC_PAGE_MAX_CHARS = 32_000
#: How many chunks before and after a hit `get_document(around_chunk=...)` may add.
DOC_NEIGHBOURS_MAX = 3


class KnowledgeDocPage(PublicModel):
    """A slice of a document's content with the document's own fields: read on from
    `next_offset` until it is null."""

    external_id: str
    title: str | None
    metadata: JsonObject
    content_sha256: str
    char_count: int
    chunk_count: int
    created_at: Timestamp
    updated_at: Timestamp
    content: str = Field(description="The characters from `offset`, at most `max_chars` of them.")
    offset: int = Field(description="Where `content` starts, in characters.")
    total_chars: int = Field(description="The whole document's length in characters.")
    next_offset: int | None = Field(
        description="The offset of the next page; null when this page reaches the end."
    )
    chunks: list[int] | None = Field(
        default=None,
        description=(
            "Read around a chunk: the indexes of the chunks this page holds some of (the hit's "
            "and its neighbours'); null for a page read by offset."
        ),
    )

    @classmethod
    def of(
        cls,
        doc: KnowledgeDocPublic,
        *,
        offset: int,
        max_chars: int,
        chunks: list[int] | None = None,
    ) -> KnowledgeDocPage:
        text = doc.content or ""
        end = min(len(text), offset + max_chars)
        fields = doc.model_dump(exclude={"content"})
        return cls(
            **fields,
            content=text[offset:end],
            offset=offset,
            total_chars=len(text),
            next_offset=end if end < len(text) else None,
            chunks=chunks,
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


ChangeOp = Literal["upsert", "delete"]
CHANGES_DEFAULT_LIMIT = 100
CHANGES_MAX_LIMIT = 1000


class ChangesQuery(PydanticBase):
    """The query of the changes feed (API.md section 11): lax like every query string."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(
        CHANGES_DEFAULT_LIMIT,
        ge=1,
        le=CHANGES_MAX_LIMIT,
        description=f"Changes per call, 1-{CHANGES_MAX_LIMIT}.",
    )
    since: str | None = Field(
        None,
        description=(
            "The `next_since` of the previous call, passed back unchanged (empty: from the "
            "beginning of the retained history). Opaque: one that does not decode is 400 "
            "`request.invalid_cursor`; one older than the retained history is 410 "
            "`knowledge.changes_expired`."
        ),
    )


class KnowledgeChange(PublicModel):
    """One entry of the changes feed: a document as it is now, or its tombstone."""

    external_id: str
    op: ChangeOp
    updated_at: Timestamp = Field(
        description="When the document was last written, or deleted (`delete`)."
    )
    document: KnowledgeDocPublic | None = Field(
        description="The document without its content (`upsert`); null for `delete`."
    )


class KnowledgeChanges(PublicModel):
    """A page of the changes feed (API.md section 11)."""

    changes: list[KnowledgeChange]
    next_since: str = Field(
        description="Pass as `since` next time: never older than the `since` sent."
    )
    has_more: bool = Field(description="More changes are already there: call again at once.")


class DocFilters(RequestModel):
    """The knowledge list's filters, as GraphQL's `knowledgeDocs` takes them (REST reads them
    from `metadata.<key>` query parameters, then checks them alike)."""

    metadata: Annotated[JsonObject, AfterValidator(check_metadata_filter)] | None = None
    external_id_prefix: ExternalId | None = None
