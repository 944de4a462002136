"""Knowledge documents and their chunks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict
from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.models.base import (
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
    created_at: datetime = time_field()
    updated_at: datetime = time_field()


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

    items: list[KnowledgeDocItem] = Field(min_length=1)


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
