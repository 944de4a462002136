"""GraphQL: Personas (API.md section 6) over `app.services.personas`. A persona's attached
documents (`knowledgeExternalIds`, `knowledge`) come through the request's DataLoaders, so a
page of personas costs a fixed number of statements, not a few per persona."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.scalars import JSON
from strawberry.types.unset import UNSET

from app.graphql.context import Info, KnowledgePageKey
from app.graphql.descriptions import METADATA, at_most
from app.graphql.errors import given, validated
from app.graphql.knowledge import KnowledgeDocPage, doc_page, wants_content
from app.graphql.pages import (
    AFTER_DESCRIPTION,
    DEFAULT_LIMIT,
    FIRST_DESCRIPTION,
    Page,
    page_query,
)
from app.graphql.scopes import NeedsScope
from app.models import (
    KNOWLEDGE_FILTER_PREFIXES_MAX,
    PERSONA_DESCRIPTION_MAX,
    PERSONA_GREETING_MAX,
    PERSONA_INSTRUCTIONS_MAX,
    PERSONA_NAME_MAX,
    PersonaCreate,
    PersonaKnowledgeBody,
    PersonaListItem,
    PersonaPublic,
    PersonaUpdate,
)
from app.models import KnowledgeFilterPublic as KnowledgeFilterModel
from app.services import personas

_FILTER = (
    "Knowledge by rule: every document matching it belongs to the persona besides the "
    "attached ones, now and later. Metadata filters are AND'ed, prefixes OR'ed; with both, a "
    "document must match the metadata and one prefix."
)


@strawberry.type(name="KnowledgeFilter", description=_FILTER)
class KnowledgeFilterType:
    metadata: JSON = strawberry.field(
        description="Equality filters on top-level metadata keys (JSON equality: `true` is not `1`)."
    )
    external_id_prefixes: list[str] = strawberry.field(
        description="A document matches when its external_id starts with any of these."
    )

    @classmethod
    def of(cls, rule: KnowledgeFilterModel | None) -> KnowledgeFilterType | None:
        if rule is None:
            return None
        return cls(metadata=JSON(rule.metadata), external_id_prefixes=rule.external_id_prefixes)


@strawberry.input(description=_FILTER + " At least one of the two is given.")
class KnowledgeFilterInput:
    metadata: JSON | None = strawberry.field(
        default=UNSET,
        description="Equality filters on top-level metadata keys; `{}` when left out.",
    )
    external_id_prefixes: list[str] | None = strawberry.field(
        default=UNSET,
        description=f"At most {KNOWLEDGE_FILTER_PREFIXES_MAX} external_id prefixes; `[]` when left out.",
    )


def _with_filter(input: object) -> dict[str, object]:
    """`given(input)` with its knowledge filter (a nested input) as the REST body has it."""
    data = given(input)
    rule = data.get("knowledge_filter")
    if rule is not None and not isinstance(rule, dict):
        data["knowledge_filter"] = given(rule)
    return data


async def _knowledge_external_ids(root: PersonaType, info: Info) -> list[str]:
    if root.known_external_ids is not None:
        return root.known_external_ids
    return await info.context.loaders.knowledge_ids.load(root.id)


async def _knowledge(
    root: PersonaType,
    info: Info,
    first: Annotated[int, strawberry.argument(description=FIRST_DESCRIPTION)] = DEFAULT_LIMIT,
    after: Annotated[str | None, strawberry.argument(description=AFTER_DESCRIPTION)] = None,
) -> KnowledgeDocPage:
    page = page_query(first, after)
    key = KnowledgePageKey(root.id, page.limit, page.cursor, wants_content(info))
    return doc_page(await info.context.loaders.knowledge_pages.load(key))


@strawberry.type(name="Persona", description="A persona.")
class PersonaType:
    id: strawberry.ID = strawberry.field(description="`per_` + a ULID: sorts by creation.")
    name: str
    description: str
    instructions: str
    greeting: str | None
    metadata: JSON
    knowledge_filter: KnowledgeFilterType | None = strawberry.field(
        description="Knowledge by rule, or null for none."
    )
    knowledge_count: int = strawberry.field(
        description="How many documents the persona's knowledge holds: attached or by filter."
    )
    created_at: datetime
    updated_at: datetime
    #: Known when the persona came from a single lookup; else loaded in a batch when asked for.
    known_external_ids: strawberry.Private[list[str] | None] = None

    knowledge_external_ids: list[str] = strawberry.field(
        resolver=_knowledge_external_ids,
        description="The external_ids of the attached documents, sorted.",
    )
    knowledge: KnowledgeDocPage = strawberry.field(
        resolver=_knowledge,
        description=(
            "The persona's knowledge (attached, or by its filter: see each document's `via`), "
            "ordered by external_id."
        ),
        extensions=[NeedsScope()],  # the documents themselves: docs:read
    )

    @classmethod
    def of(cls, persona: PersonaListItem) -> PersonaType:
        return cls(
            id=strawberry.ID(persona.id),
            name=persona.name,
            description=persona.description,
            instructions=persona.instructions,
            greeting=persona.greeting,
            metadata=JSON(persona.metadata),
            knowledge_filter=KnowledgeFilterType.of(persona.knowledge_filter),
            knowledge_count=persona.knowledge_count,
            created_at=persona.created_at,
            updated_at=persona.updated_at,
            known_external_ids=(
                persona.knowledge_external_ids if isinstance(persona, PersonaPublic) else None
            ),
        )


PersonaPage = Page[PersonaType]


@strawberry.type
class PersonaKnowledgeResult:
    persona_id: strawberry.ID
    external_ids: list[str] = strawberry.field(
        description="The attached set after the call, sorted."
    )
    added: int = strawberry.field(description="How many documents were newly attached.")
    removed: int = strawberry.field(description="How many documents were detached.")


@strawberry.type
class DeletePersonaPayload:
    id: strawberry.ID
    deleted: bool = strawberry.field(
        description="False when there was no such persona (deleting is idempotent)."
    )


@strawberry.input
class PersonaCreateInput:
    name: str = strawberry.field(description=f"1-{PERSONA_NAME_MAX} characters.")
    description: str | None = strawberry.field(
        default=UNSET, description=f'{at_most(PERSONA_DESCRIPTION_MAX)}; `""` when left out.'
    )
    instructions: str | None = strawberry.field(
        default=UNSET, description=f'{at_most(PERSONA_INSTRUCTIONS_MAX)}; `""` when left out.'
    )
    greeting: str | None = strawberry.field(
        default=UNSET, description=f"{at_most(PERSONA_GREETING_MAX)}, or null."
    )
    metadata: JSON | None = strawberry.field(
        default=UNSET, description=f"{METADATA}; `{{}}` when left out."
    )
    knowledge_filter: KnowledgeFilterInput | None = strawberry.field(
        default=UNSET, description="Knowledge by rule; null (the default) for none."
    )


@strawberry.input(
    description=(
        "A partial update: only the fields given change. `greeting` may be null; the others "
        "may be left out but not null."
    )
)
class PersonaUpdateInput:
    name: str | None = strawberry.field(
        default=UNSET, description=f"1-{PERSONA_NAME_MAX} characters."
    )
    description: str | None = strawberry.field(
        default=UNSET, description=f"{at_most(PERSONA_DESCRIPTION_MAX)}."
    )
    instructions: str | None = strawberry.field(
        default=UNSET, description=f"{at_most(PERSONA_INSTRUCTIONS_MAX)}."
    )
    greeting: str | None = strawberry.field(
        default=UNSET, description=f"{at_most(PERSONA_GREETING_MAX)}, or null."
    )
    metadata: JSON | None = strawberry.field(
        default=UNSET, description=f"{METADATA} (replaced as a whole)."
    )
    knowledge_filter: KnowledgeFilterInput | None = strawberry.field(
        default=UNSET, description="Knowledge by rule (replaced as a whole); null removes it."
    )


# --- resolvers -----------------------------------------------------------------------------


async def list_personas(
    info: Info,
    first: Annotated[int, strawberry.argument(description=FIRST_DESCRIPTION)] = DEFAULT_LIMIT,
    after: Annotated[str | None, strawberry.argument(description=AFTER_DESCRIPTION)] = None,
) -> PersonaPage:
    """The caller's personas, ordered by creation."""
    page = page_query(first, after)
    result = await personas.list_personas(
        runtime=info.context.runtime,
        principal=info.context.principal,
        limit=page.limit,
        cursor=page.cursor,
    )
    return PersonaPage(
        items=[PersonaType.of(p) for p in result.items],
        next_cursor=result.next_cursor,
        total=result.total,
    )


async def persona(info: Info, id: strawberry.ID) -> PersonaType:
    """One persona; `persona.not_found` when there is none."""
    found = await personas.get_persona(
        runtime=info.context.runtime, principal=info.context.principal, persona_id=id
    )
    return PersonaType.of(found)


async def create_persona(info: Info, input: PersonaCreateInput) -> PersonaType:
    """Create a persona; `persona.quota_exceeded` past the plan's personas."""
    body = validated(PersonaCreate, _with_filter(input), at=("input",))
    created = await personas.create_persona(
        runtime=info.context.runtime, principal=info.context.principal, body=body
    )
    return PersonaType.of(created)


async def update_persona(info: Info, id: strawberry.ID, input: PersonaUpdateInput) -> PersonaType:
    """Change the fields given; `updatedAt` moves only when a value changes."""
    body = validated(PersonaUpdate, _with_filter(input), at=("input",))
    updated = await personas.update_persona(
        runtime=info.context.runtime, principal=info.context.principal, persona_id=id, body=body
    )
    return PersonaType.of(updated)


async def delete_persona(info: Info, id: strawberry.ID) -> DeletePersonaPayload:
    """Delete a persona (idempotent); its documents stay."""
    deleted = await personas.delete_persona(
        runtime=info.context.runtime, principal=info.context.principal, persona_id=id
    )
    return DeletePersonaPayload(id=id, deleted=deleted)


async def set_persona_knowledge(
    info: Info,
    id: strawberry.ID,
    external_ids: Annotated[
        list[str],
        strawberry.argument(
            description=PersonaKnowledgeBody.model_fields["external_ids"].description
        ),
    ],
) -> PersonaKnowledgeResult:
    """Replace the attached documents with `externalIds` (a set); unknown ones are refused
    with `knowledge.unknown_external_ids` and nothing changes."""
    body = validated(PersonaKnowledgeBody, {"external_ids": external_ids})
    result = await personas.set_knowledge(
        runtime=info.context.runtime,
        principal=info.context.principal,
        persona_id=id,
        external_ids=body.external_ids,
    )
    return PersonaKnowledgeResult(
        persona_id=strawberry.ID(result.persona_id),
        external_ids=result.external_ids,
        added=result.added,
        removed=result.removed,
    )
