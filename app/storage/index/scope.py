"""What a search is restricted to, as conditions on the user's documents.

The conditions are plain SQLAlchemy except metadata equality, whose SQL each engine supplies
(SQLite's `json_each`, PostgreSQL's jsonb operators).

A persona's knowledge is its attached set plus the documents its `knowledge_filter` matches
(`persona_knowledge`): the one definition behind the search's persona scope, the persona's
knowledge listing and its `knowledge_count`, so they all see the same set."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_
from sqlmodel import col, select

from app.models import KnowledgeDoc, KnowledgeFilter, PersonaKnowledge

#: (position, key, value) -> SQL that holds when `knowledge_docs.metadata` has key == value.
#: The position names the condition's bound parameters: unique within one statement.
MetadataCondition = Callable[[int, str, Any], ColumnElement[bool]]

#: The character after the last of the external_id alphabet (`z`, 0x7A) in byte order, which
#: both engines use for external_id (BYTE_ORDERED_TEXT): an id starts with `p` exactly when
#: `p <= id < p + "{"`. A range, not LIKE: `_` is a LIKE wildcard and LIKE's case rules differ
#: between the engines; and a range can use the (user_id, external_id) index.
_AFTER_ALPHABET = "{"


def prefix_condition(prefix: str) -> ColumnElement[bool]:
    """The document's external_id starts with `prefix` (case-sensitive)."""
    external_id = col(KnowledgeDoc.external_id)
    return and_(external_id >= prefix, external_id < prefix + _AFTER_ALPHABET)


def metadata_conditions(
    metadata: Mapping[str, Any], metadata_condition: MetadataCondition, positions: Iterator[int]
) -> list[ColumnElement[bool]]:
    """Each of `metadata`'s equality filters, as conditions to AND."""
    return [metadata_condition(next(positions), k, v) for k, v in metadata.items()]


def filter_condition(
    rule: KnowledgeFilter, metadata_condition: MetadataCondition, positions: Iterator[int]
) -> ColumnElement[bool]:
    """A document matches a knowledge filter: all of its metadata filters AND one of its
    prefixes (when it has prefixes)."""
    where = metadata_conditions(rule.metadata, metadata_condition, positions)
    if rule.external_id_prefixes:
        where.append(or_(*(prefix_condition(p) for p in rule.external_id_prefixes)))
    return and_(*where) if where else false()


def attached_to(persona_id: str) -> ColumnElement[bool]:
    """The document is attached to the persona."""
    return col(KnowledgeDoc.id).in_(
        select(PersonaKnowledge.doc_id).where(PersonaKnowledge.persona_id == persona_id)
    )


def persona_knowledge(
    persona_id: str,
    rule: KnowledgeFilter | None,
    metadata_condition: MetadataCondition,
    positions: Iterator[int],
) -> ColumnElement[bool]:
    """The document belongs to the persona's knowledge: attached, or matching its filter."""
    attached = attached_to(persona_id)
    if rule is None:
        return attached
    return or_(attached, filter_condition(rule, metadata_condition, positions))


def filter_values(rules: Iterable[KnowledgeFilter | None]) -> list[Any]:
    """Every metadata value the rules compare (an engine may need to prepare for some)."""
    return [v for rule in rules if rule is not None for v in rule.metadata.values()]


@dataclass(frozen=True, slots=True)
class Scope:
    """A search's restriction: the user's documents, of which all the given conditions hold."""

    user_id: int
    persona_id: str | None = None
    #: The persona's knowledge filter (read with the persona); its documents are in scope too.
    persona_filter: KnowledgeFilter | None = None
    external_ids: Sequence[str] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Only the knowledge of these personas (id -> its filter): a key restricted to them,
    #: searching without `persona_id`. `{}` matches nothing.
    within_personas: Mapping[str, KnowledgeFilter | None] | None = None

    @property
    def everything(self) -> bool:
        """No condition beyond the user."""
        return (
            self.persona_id is None
            and self.external_ids is None
            and not self.metadata
            and self.within_personas is None
        )

    @property
    def nothing(self) -> bool:
        """Known to match no document without asking the database (`external_ids: []`)."""
        return (self.external_ids is not None and not self.external_ids) or (
            self.within_personas is not None and not self.within_personas
        )

    @property
    def metadata_values(self) -> list[Any]:
        """Every metadata value the scope compares, the persona filter's included."""
        rules = [self.persona_filter, *(self.within_personas or {}).values()]
        return [*self.metadata.values(), *filter_values(rules)]

    def conditions(self, metadata_condition: MetadataCondition) -> list[ColumnElement[bool]]:
        """Conditions on `knowledge_docs` rows."""
        positions = itertools.count()
        where: list[ColumnElement[bool]] = [col(KnowledgeDoc.user_id) == self.user_id]
        if self.persona_id is not None:
            where.append(
                persona_knowledge(
                    self.persona_id, self.persona_filter, metadata_condition, positions
                )
            )
        if self.within_personas is not None:
            where.append(
                or_(
                    false(),
                    *(
                        persona_knowledge(pid, rule, metadata_condition, positions)
                        for pid, rule in sorted(self.within_personas.items())
                    ),
                )
            )
        if self.external_ids is not None:
            where.append(col(KnowledgeDoc.external_id).in_(list(self.external_ids)))
        where.extend(metadata_conditions(self.metadata, metadata_condition, positions))
        return where
