"""What a search is restricted to, as conditions on the user's documents.

The conditions are plain SQLAlchemy except metadata equality, whose SQL each engine supplies
(SQLite's `json_each`, PostgreSQL's jsonb operators)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement
from sqlmodel import col, select

from app.models import KnowledgeDoc, PersonaKnowledge

#: (position, key, value) -> SQL that holds when `knowledge_docs.metadata` has key == value.
MetadataCondition = Callable[[int, str, Any], ColumnElement[bool]]


@dataclass(frozen=True, slots=True)
class Scope:
    """A search's restriction: the user's documents, of which all the given conditions hold."""

    user_id: int
    persona_id: str | None = None
    external_ids: Sequence[str] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def everything(self) -> bool:
        """No condition beyond the user."""
        return self.persona_id is None and self.external_ids is None and not self.metadata

    @property
    def nothing(self) -> bool:
        """Known to match no document without asking the database (`external_ids: []`)."""
        return self.external_ids is not None and not self.external_ids

    def conditions(self, metadata_condition: MetadataCondition) -> list[ColumnElement[bool]]:
        """Conditions on `knowledge_docs` rows."""
        where: list[ColumnElement[bool]] = [col(KnowledgeDoc.user_id) == self.user_id]
        if self.persona_id is not None:
            where.append(
                col(KnowledgeDoc.id).in_(
                    select(PersonaKnowledge.doc_id).where(
                        PersonaKnowledge.persona_id == self.persona_id
                    )
                )
            )
        if self.external_ids is not None:
            where.append(col(KnowledgeDoc.external_id).in_(list(self.external_ids)))
        for i, (key, value) in enumerate(self.metadata.items()):
            where.append(metadata_condition(i, key, value))
        return where
