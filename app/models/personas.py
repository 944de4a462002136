"""Personas and the documents attached to them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from app.models.base import (
    BYTE_ORDERED_TEXT,
    ExternalId,
    JsonObject,
    Metadata,
    OptionalStoredText,
    PublicModel,
    RequestModel,
    StoredText,
    Timestamp,
    time_field,
)
from app.models.json_equality import StoredJson
from app.models.knowledge import KnowledgeDocPublic
from app.models.search import check_metadata_filter


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
    #: `KnowledgeFilter.stored()` or SQL NULL (no rule); revision 0010.
    knowledge_filter: JsonObject | None = Field(
        default=None,
        sa_column=Column("knowledge_filter", StoredJson(none_as_null=True), nullable=True),
    )
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
#: Prefixes in one knowledge filter: each is one range condition in every persona-scoped query.
KNOWLEDGE_FILTER_PREFIXES_MAX = 20

#: How a document belongs to a persona's knowledge: attached by `PUT .../knowledge`, or matching
#: the persona's `knowledge_filter`. A document that is both is `attached`.
KnowledgeVia = Literal["attached", "filter"]


def _unique(prefixes: list[str]) -> list[str]:
    return list(dict.fromkeys(prefixes))


class KnowledgeFilter(RequestModel):
    """A persona's knowledge by rule: every document of the user matching it belongs to the
    persona, now and later. `metadata`'s filters are AND'ed (each key present with an equal
    JSON value, as the search's `metadata` filter compares: `true` is not `1`); the prefixes
    are OR'ed; with both, a document must match the metadata AND one of the prefixes. At least
    one of the two must be given (an empty rule would take every document)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"metadata": {"source": "support"}, "external_id_prefixes": ["faq-"]}],
            # `_names_something`, stated in the schema: at least one of the two, not empty.
            "anyOf": [
                {"required": ["metadata"], "properties": {"metadata": {"minProperties": 1}}},
                {
                    "required": ["external_id_prefixes"],
                    "properties": {"external_id_prefixes": {"minItems": 1}},
                },
            ],
        }
    )

    metadata: Annotated[JsonObject, AfterValidator(check_metadata_filter)] = Field(
        default_factory=dict,
        description=(
            "Equality filters on top-level metadata keys, all of which must hold (JSON "
            'equality: numbers by value, `true` is not `1`, `"1"` is not `1`).'
        ),
    )
    external_id_prefixes: Annotated[list[ExternalId], AfterValidator(_unique)] = Field(
        default_factory=list,
        max_length=KNOWLEDGE_FILTER_PREFIXES_MAX,
        description=(
            f"At most {KNOWLEDGE_FILTER_PREFIXES_MAX} prefixes (case-sensitive, in the "
            "external_id alphabet); a document matches when its external_id starts with any."
        ),
    )

    @model_validator(mode="after")
    def _names_something(self) -> KnowledgeFilter:
        if not self.metadata and not self.external_id_prefixes:
            raise PydanticCustomError(
                "empty_filter",
                "a knowledge_filter names metadata or external_id_prefixes (or is null)",
            )
        return self

    def stored(self) -> JsonObject:
        return {"metadata": self.metadata, "external_id_prefixes": self.external_id_prefixes}

    @classmethod
    def from_stored(cls, value: JsonObject | None) -> KnowledgeFilter | None:
        """The stored rule, trusted (it was validated when it was set)."""
        if value is None:
            return None
        return cls.model_construct(
            metadata=dict(value.get("metadata") or {}),
            external_id_prefixes=list(value.get("external_id_prefixes") or []),
        )


_FILTER_DESCRIPTION = (
    "Knowledge by rule: every document matching it belongs to the persona besides the attached "
    "ones, now and later; null (the default) for none."
)


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

    name: StoredText = Field(min_length=1, max_length=PERSONA_NAME_MAX)
    description: StoredText = Field(default="", max_length=PERSONA_DESCRIPTION_MAX)
    instructions: StoredText = Field(default="", max_length=PERSONA_INSTRUCTIONS_MAX)
    greeting: OptionalStoredText = Field(default=None, max_length=PERSONA_GREETING_MAX)
    metadata: Metadata = Field(default_factory=dict)
    knowledge_filter: KnowledgeFilter | None = Field(default=None, description=_FILTER_DESCRIPTION)


class PersonaUpdate(RequestModel):
    """A partial update: only the fields sent (`model_fields_set`) change, so a field left out
    is never read. `greeting` may be set to null; the others may be left out but not null
    (their types say so, and defaults are not validated)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"greeting": None}]})

    name: StoredText = Field(default=None, min_length=1, max_length=PERSONA_NAME_MAX)
    description: StoredText = Field(default=None, max_length=PERSONA_DESCRIPTION_MAX)
    instructions: StoredText = Field(default=None, max_length=PERSONA_INSTRUCTIONS_MAX)
    greeting: OptionalStoredText = Field(default=None, max_length=PERSONA_GREETING_MAX)
    metadata: Metadata = Field(default=None)
    knowledge_filter: KnowledgeFilter | None = Field(
        default=None, description=_FILTER_DESCRIPTION + " Null removes the rule."
    )


class PersonaKnowledgeBody(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"external_ids": ["faq-shipping"]}]})

    external_ids: list[ExternalId] = Field(
        max_length=PERSONA_KNOWLEDGE_MAX,
        description=f"The whole attached set, at most {PERSONA_KNOWLEDGE_MAX} external_ids.",
    )


class KnowledgeFilterPublic(PublicModel):
    metadata: JsonObject
    external_id_prefixes: list[str]


class PersonaKnowledgeDoc(KnowledgeDocPublic):
    """A document of a persona's knowledge, and why it is there."""

    via: KnowledgeVia = Field(
        default="attached",
        description="`attached` (also when the filter matches it too) or `filter`.",
    )


class PersonaListItem(PublicModel):
    """A persona as list items show it: without `knowledge_external_ids`."""

    id: str
    name: str
    description: str
    instructions: str
    greeting: str | None
    metadata: JsonObject
    knowledge_filter: KnowledgeFilterPublic | None = Field(description=_FILTER_DESCRIPTION)
    knowledge_count: int = Field(
        description="How many documents the persona's knowledge holds: attached or by filter."
    )
    created_at: Timestamp
    updated_at: Timestamp


class PersonaPublic(PersonaListItem):
    knowledge_external_ids: list[str] = Field(
        description="The attached set, sorted (documents by filter are not listed here)."
    )


class PersonaKnowledgeResult(PublicModel):
    persona_id: str
    external_ids: list[str] = Field(description="The attached set after the call, sorted.")
    added: int = Field(description="How many documents were newly attached.")
    removed: int = Field(description="How many documents were detached.")
