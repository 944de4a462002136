"""Personas and the documents attached to them."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict
from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from app.models.base import (
    BYTE_ORDERED_TEXT,
    ExternalId,
    JsonObject,
    Metadata,
    PublicModel,
    RequestModel,
    Timestamp,
    time_field,
)
from app.models.json_equality import StoredJson


class Persona(SQLModel, table=True):
    __tablename__ = "personas"
    __table_args__ = (Index("ix_personas_user_id", "user_id", "id"),)

    #: `per_` + a ULID: sortable by creation, opaque to callers.
    id: str = Field(primary_key=True, sa_type=BYTE_ORDERED_TEXT)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    name: str
    description: str = ""
    instructions: str = ""
    greeting: str | None = None
    metadata_: JsonObject = Field(default_factory=dict, sa_column=Column("metadata", StoredJson))
    created_at: datetime = time_field()
    updated_at: datetime = time_field()


class PersonaKnowledge(SQLModel, table=True):
    __tablename__ = "persona_knowledge"

    persona_id: str = Field(
        foreign_key="personas.id", ondelete="CASCADE", primary_key=True, sa_type=BYTE_ORDERED_TEXT
    )
    doc_id: str = Field(
        foreign_key="knowledge_docs.id", ondelete="CASCADE", primary_key=True, index=True
    )


PERSONA_NAME_MAX = 120
PERSONA_DESCRIPTION_MAX = 2000
PERSONA_INSTRUCTIONS_MAX = 20000
PERSONA_GREETING_MAX = 2000
#: Documents named in one `PUT /api/personas/{id}/knowledge`: the body (and any error naming
#: the unknown ones) stays small, and it matches how many a search may name.
PERSONA_KNOWLEDGE_MAX = 1000


class PersonaCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Ava",
                    "instructions": "You are a friendly support agent.",
                    "greeting": "Hi, I am Ava.",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=PERSONA_NAME_MAX)
    description: str = Field(default="", max_length=PERSONA_DESCRIPTION_MAX)
    instructions: str = Field(default="", max_length=PERSONA_INSTRUCTIONS_MAX)
    greeting: str | None = Field(default=None, max_length=PERSONA_GREETING_MAX)
    metadata: Metadata = Field(default_factory=dict)


class PersonaUpdate(RequestModel):
    """A partial update: only the fields sent (`model_fields_set`) change, so a field left out
    is never read. `greeting` may be set to null; the others may be left out but not null
    (their types say so, and defaults are not validated)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"greeting": None}]})

    name: str = Field(default=None, min_length=1, max_length=PERSONA_NAME_MAX)
    description: str = Field(default=None, max_length=PERSONA_DESCRIPTION_MAX)
    instructions: str = Field(default=None, max_length=PERSONA_INSTRUCTIONS_MAX)
    greeting: str | None = Field(default=None, max_length=PERSONA_GREETING_MAX)
    metadata: Metadata = Field(default=None)


class PersonaKnowledgeBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"external_ids": ["faq-shipping"]}]})

    external_ids: list[ExternalId] = Field(
        max_length=PERSONA_KNOWLEDGE_MAX,
        description=f"The whole attached set, at most {PERSONA_KNOWLEDGE_MAX} external_ids.",
    )


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
