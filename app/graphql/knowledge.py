"""GraphQL: KnowledgeDocs (API.md section 5) over `app.services.knowledge`."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry
from strawberry.scalars import JSON
from strawberry.types.unset import UNSET

from app.graphql.context import Info
from app.graphql.descriptions import EXTERNAL_ID, METADATA, at_most
from app.graphql.errors import given, located, validated
from app.graphql.pages import (
    AFTER_DESCRIPTION,
    DEFAULT_LIMIT,
    FIRST_DESCRIPTION,
    Page,
    page_query,
    selects,
)
from app.models import (
    CHANGES_DEFAULT_LIMIT,
    CHANGES_MAX_LIMIT,
    TITLE_MAX,
    BatchUpsertResponse,
    ChangesQuery,
    DocFilters,
    KnowledgeChanges,
    KnowledgeDocBatch,
    KnowledgeDocBody,
    KnowledgeDocPublic,
    PersonaKnowledgeDoc,
)
from app.models import Page as PublicPage
from app.services import feed, knowledge


@strawberry.enum(description="What an upsert did to one document.")
class UpsertStatus(Enum):
    CREATED = "created"
    UPDATED = "updated"
    NO_OP = "no_op"


@strawberry.enum(description="How a document belongs to a persona's knowledge.")
class KnowledgeVia(Enum):
    ATTACHED = "attached"
    FILTER = "filter"


def _content(root: KnowledgeDocType) -> str:
    # Loaded exactly when selected (see `wants_content`), so it is here when asked for.
    assert root.loaded_content is not None, "content selected but not loaded"
    return root.loaded_content


@strawberry.type(name="KnowledgeDoc", description="A knowledge document.")
class KnowledgeDocType:
    external_id: str = strawberry.field(description="The caller's id of the document.")
    title: str | None
    metadata: JSON
    content_sha256: str = strawberry.field(description="Hex SHA-256 of the content.")
    char_count: int
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    loaded_content: strawberry.Private[str | None]
    content: str = strawberry.field(resolver=_content, description="The document's text.")
    via: KnowledgeVia | None = strawberry.field(
        default=None,
        description=(
            "In a persona's `knowledge`: how the document belongs to it (`ATTACHED`, also when "
            "its filter matches too, or `FILTER`); null elsewhere."
        ),
    )

    @classmethod
    def of(cls, doc: KnowledgeDocPublic) -> KnowledgeDocType:
        return cls(
            external_id=doc.external_id,
            title=doc.title,
            metadata=JSON(doc.metadata),
            content_sha256=doc.content_sha256,
            char_count=doc.char_count,
            chunk_count=doc.chunk_count,
            created_at=doc.created_at,
            updated_at=doc.updated_at,
            loaded_content=doc.content,
            via=KnowledgeVia(doc.via) if isinstance(doc, PersonaKnowledgeDoc) else None,
        )


KnowledgeDocPage = Page[KnowledgeDocType]


def doc_page(page: PublicPage[KnowledgeDocPublic]) -> KnowledgeDocPage:
    return KnowledgeDocPage(
        items=[KnowledgeDocType.of(d) for d in page.items],
        next_cursor=page.next_cursor,
        total=page.total,
    )


def wants_content(info: Info) -> bool:
    """Whether the documents' `content` is selected: only then is it worth loading."""
    return selects(info.selected_fields, "content")


@strawberry.enum(description="What happened to a document: written (`UPSERT`) or deleted.")
class ChangeOp(Enum):
    UPSERT = "upsert"
    DELETE = "delete"


@strawberry.type(description="One entry of the changes feed.")
class KnowledgeChange:
    external_id: str
    op: ChangeOp
    updated_at: datetime = strawberry.field(
        description="When the document was last written, or deleted (`DELETE`)."
    )
    document: KnowledgeDocType | None = strawberry.field(
        description="The document as it is now (`UPSERT`); null for `DELETE`."
    )


@strawberry.type(description="A page of the changes feed, oldest change first.")
class KnowledgeChangesPage:
    changes: list[KnowledgeChange]
    next_since: str = strawberry.field(
        description="Pass as `since` next time: never older than the `since` sent."
    )
    has_more: bool = strawberry.field(description="More changes are already there.")

    @classmethod
    def of(cls, page: KnowledgeChanges) -> KnowledgeChangesPage:
        return cls(
            changes=[
                KnowledgeChange(
                    external_id=c.external_id,
                    op=ChangeOp(c.op),
                    updated_at=c.updated_at,
                    document=None if c.document is None else KnowledgeDocType.of(c.document),
                )
                for c in page.changes
            ],
            next_since=page.next_since,
            has_more=page.has_more,
        )


@strawberry.type
class UpsertResult:
    external_id: str
    status: UpsertStatus


@strawberry.type
class UpsertSummary:
    created: int
    updated: int
    no_op: int


@strawberry.type(description="Per-item outcomes, in request order, and a summary.")
class UpsertKnowledgeDocsPayload:
    results: list[UpsertResult]
    summary: UpsertSummary

    @classmethod
    def of(cls, response: BatchUpsertResponse) -> UpsertKnowledgeDocsPayload:
        return cls(
            results=[
                UpsertResult(external_id=r.external_id, status=UpsertStatus(r.status))
                for r in response.results
            ],
            summary=UpsertSummary(**response.summary.model_dump()),
        )


@strawberry.type
class UpsertKnowledgeDocPayload:
    status: UpsertStatus
    document: KnowledgeDocType


@strawberry.type
class DeleteKnowledgeDocPayload:
    external_id: str
    deleted: bool = strawberry.field(
        description="False when there was no such document (deleting is idempotent)."
    )


@strawberry.input(description="One document of a batch upsert.")
class KnowledgeDocItemInput:
    external_id: str = strawberry.field(description=EXTERNAL_ID)
    title: str | None = strawberry.field(default=None, description=f"{at_most(TITLE_MAX)}.")
    content: str = strawberry.field(description="Not blank; at most the plan's doc_chars.")
    metadata: JSON | None = strawberry.field(
        default=UNSET, description=f"{METADATA}; `{{}}` when left out."
    )


@strawberry.input(
    description="A whole document; what is left out is reset (title null, metadata {})."
)
class KnowledgeDocInput:
    title: str | None = strawberry.field(default=None, description=f"{at_most(TITLE_MAX)}.")
    content: str = strawberry.field(description="Not blank; at most the plan's doc_chars.")
    metadata: JSON | None = strawberry.field(
        default=UNSET, description=f"{METADATA}; `{{}}` when left out."
    )


# --- resolvers -----------------------------------------------------------------------------


async def knowledge_docs(
    info: Info,
    first: Annotated[int, strawberry.argument(description=FIRST_DESCRIPTION)] = DEFAULT_LIMIT,
    after: Annotated[str | None, strawberry.argument(description=AFTER_DESCRIPTION)] = None,
    updated_since: Annotated[
        datetime | None,
        strawberry.argument(description="Only documents updated at or after this time."),
    ] = None,
    metadata: Annotated[
        JSON | None,
        strawberry.argument(
            description=(
                "Only documents whose metadata has each of these top-level keys with an equal "
                "JSON value (`true` is not `1`, `1` is `1.0`); at most 32 keys."
            )
        ),
    ] = None,
    external_id_prefix: Annotated[
        str | None,
        strawberry.argument(
            description="Only documents whose external_id starts with this (case-sensitive)."
        ),
    ] = None,
) -> KnowledgeDocPage:
    """The caller's documents ordered by external_id (byte order). A cursor holds only where
    its page ended, so it may be passed with other filters: the list goes on after it."""
    page = page_query(first, after)
    filters = validated(
        DocFilters, {"metadata": metadata, "external_id_prefix": external_id_prefix}
    )
    result = await knowledge.list_docs(
        runtime=info.context.runtime,
        principal=info.context.principal,
        limit=page.limit,
        cursor=page.cursor,
        include_content=wants_content(info),
        updated_since=updated_since,
        metadata=filters.metadata,
        external_id_prefix=filters.external_id_prefix,
    )
    return doc_page(result)


async def knowledge_changes(
    info: Info,
    since: Annotated[
        str | None,
        strawberry.argument(
            description="The `nextSince` of the previous call; null: from the beginning."
        ),
    ] = None,
    first: Annotated[
        int, strawberry.argument(description=f"Changes per call, 1-{CHANGES_MAX_LIMIT}.")
    ] = CHANGES_DEFAULT_LIMIT,
) -> KnowledgeChangesPage:
    """Every write to the caller's documents after `since`, in commit order (the REST changes
    feed): `knowledge.changes_expired` when `since` is older than the retained history."""
    query = validated(ChangesQuery, {"limit": first, "since": since}, names={"limit": "first"})
    page = await feed.list_changes(
        runtime=info.context.runtime,
        principal=info.context.principal,
        since=query.since,
        limit=query.limit,
        include_content=wants_content(info),
    )
    return KnowledgeChangesPage.of(page)


async def knowledge_doc(info: Info, external_id: str) -> KnowledgeDocType:
    """One document; `knowledge.not_found` when there is none."""
    doc = await knowledge.get_doc(
        runtime=info.context.runtime, principal=info.context.principal, external_id=external_id
    )
    return KnowledgeDocType.of(doc)


async def upsert_knowledge_docs(
    info: Info, items: list[KnowledgeDocItemInput]
) -> UpsertKnowledgeDocsPayload:
    """Create or replace up to the plan's batch_items documents, all or nothing."""
    batch = validated(KnowledgeDocBatch, {"items": [given(i) for i in items]})
    result = await knowledge.upsert_many(
        runtime=info.context.runtime, principal=info.context.principal, items=batch.items
    )
    return UpsertKnowledgeDocsPayload.of(result)


async def upsert_knowledge_doc(
    info: Info, external_id: str, input: KnowledgeDocInput
) -> UpsertKnowledgeDocPayload:
    """Create or replace one document."""
    body = validated(KnowledgeDocBody, given(input), at=("input",))
    with located("input"):
        status, doc = await knowledge.upsert_one(
            runtime=info.context.runtime,
            principal=info.context.principal,
            external_id=external_id,
            body=body,
        )
    return UpsertKnowledgeDocPayload(status=UpsertStatus(status), document=KnowledgeDocType.of(doc))


async def delete_knowledge_doc(info: Info, external_id: str) -> DeleteKnowledgeDocPayload:
    """Delete one document (idempotent); it is detached from every persona."""
    deleted = await knowledge.delete_doc(
        runtime=info.context.runtime, principal=info.context.principal, external_id=external_id
    )
    return DeleteKnowledgeDocPayload(external_id=external_id, deleted=deleted)
