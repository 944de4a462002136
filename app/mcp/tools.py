"""The MCP door's tools: five read-only tools over the same service functions REST calls.

The SDK checks a call's arguments against the tool's schema (built from the signature below);
the tool then validates them with the REST request model and calls the service, through
`app.mcp.errors.answer`, which turns its failures into tool results with the contract's codes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, get_type_hints

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import BaseModel, Field, create_model, field_validator

from app.errors import FieldError, ValidationFailed
from app.mcp.errors import Gate, answer
from app.models import (
    METADATA_MAX_BYTES,
    SEARCH_EXTERNAL_IDS_MAX,
    SEARCH_K_MAX,
    SEARCH_METADATA_KEYS_MAX,
    SEARCH_QUERY_MAX,
    Page,
    PersonaListItem,
    PersonaPublic,
    SearchMode,
    SearchRequest,
    SearchResponse,
    parse_api_time,
)
from app.models.base import JsonObject, PublicModel, Timestamp
from app.models.knowledge import (
    DOC_NEIGHBOURS_MAX,
    DOC_PAGE_DEFAULT_CHARS,
    DOC_PAGE_MAX_CHARS,
    DocFilters,
    KnowledgeDocPage,
)
from app.models.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.services import knowledge, passages, personas
from app.services import search as search_service
from app.services.runtime import Principal, Runtime

INSTRUCTIONS = f"""\
PersonAIzer knowledge: documents a user uploaded, and personas (assistants with instructions, \
a greeting and attached documents). Use search_knowledge to find passages (scoped to a persona \
with persona_id); get_document to read a document a page at a time ({DOC_PAGE_DEFAULT_CHARS:,} \
characters by default: call again with offset=next_offset until it is null), or a hit's passage \
with around_chunk=<the hit's chunk_index>; list_documents to see which documents there are (by \
metadata, e.g. {{"source": ...}}, or external_id_prefix); list_personas and get_persona to learn \
a persona's instructions. \
Each persona is also a prompt (prompts/get: take it on), each document a resource \
(personaizer://docs/{{external_id}}). A failed call has isError and a stable `code` in \
structuredContent (described at /problems/{{code}}), with `errors[]` pointing at the arguments \
at fault."""


async def search_knowledge(
    ctx: Context,
    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=SEARCH_QUERY_MAX,
            description=SearchRequest.model_fields["query"].description,
        ),
    ],
    k: Annotated[int, Field(ge=1, le=SEARCH_K_MAX, description="How many documents.")] = 5,
    mode: Annotated[
        SearchMode,
        Field(description="`hybrid` (keyword and vector rankings fused), `semantic`, `keyword`."),
    ] = "hybrid",
    persona_id: Annotated[
        str | None, Field(description="Only documents attached to this persona.")
    ] = None,
    external_ids: Annotated[
        list[str] | None,
        Field(
            description=(
                f"Only these documents (at most {SEARCH_EXTERNAL_IDS_MAX} external_ids); unknown "
                "ones are ignored."
            )
        ),
    ] = None,
    metadata: Annotated[
        JsonObject | None,
        Field(
            description=(
                f"Equality filters on at most {SEARCH_METADATA_KEYS_MAX} top-level metadata keys "
                f"({METADATA_MAX_BYTES:,} bytes of JSON at most), e.g. "
                '{"lang": "en"}.'
            )
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        # The model's own text: it also gives the threshold (`SEARCH_JUNK_THRESHOLD`) below
        # which a hit is most likely unrelated, which an agent can use as is.
        Field(ge=0, le=1, description=SearchRequest.model_fields["min_score"].description),
    ] = None,
) -> Annotated[CallToolResult, SearchResponse]:
    """Search the user's knowledge documents. Best first, at most `k`, one hit per document (its
    best-matching chunk: `text`, `chunk_index`); `score` is higher for better hits. Scopes
    (persona_id, external_ids, metadata) combine: a hit matches every one given."""
    arguments = {
        "query": query,
        "k": k,
        "mode": mode,
        "persona_id": persona_id,
        "external_ids": external_ids,
        "metadata": metadata,
        "min_score": min_score,
    }

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        request = SearchRequest.model_validate(arguments)
        return await search_service.search(runtime=runtime, principal=principal, request=request)

    return await answer(ctx, work)


async def get_document(
    ctx: Context,
    external_id: Annotated[str, Field(description="The document's external_id.")],
    offset: Annotated[
        int, Field(ge=0, description="Where to start, in characters: a page's next_offset.")
    ] = 0,
    max_chars: Annotated[
        int,
        Field(
            ge=1,
            le=DOC_PAGE_MAX_CHARS,
            description=f"Characters to return, at most {DOC_PAGE_MAX_CHARS:,}.",
        ),
    ] = DOC_PAGE_DEFAULT_CHARS,
    around_chunk: Annotated[
        int | None,
        Field(
            ge=0,
            description=(
                "A search hit's chunk_index: read the passage around it (that chunk and "
                "`neighbours` chunks on each side) instead of from `offset`."
            ),
        ),
    ] = None,
    neighbours: Annotated[
        int,
        Field(
            ge=0,
            le=DOC_NEIGHBOURS_MAX,
            description=(
                f"With around_chunk: chunks before and after the hit's, at most "
                f"{DOC_NEIGHBOURS_MAX} (a chunk is about 200 tokens)."
            ),
        ),
    ] = 1,
) -> Annotated[CallToolResult, KnowledgeDocPage]:
    """One knowledge document, a page at a time: `content` holds the characters from `offset`
    (at most `max_chars`), with the document's title, metadata and `total_chars`; call again
    with `next_offset` until it is null. With `around_chunk` (a search hit's chunk_index), the
    page is that chunk with its neighbours instead (`chunks` names them; still at most
    `max_chars`), and `next_offset` reads on after it."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        if around_chunk is None:
            doc = await knowledge.get_doc(
                runtime=runtime, principal=principal, external_id=external_id
            )
            return KnowledgeDocPage.of(doc, offset=offset, max_chars=max_chars)
        if offset:
            message = "give offset or around_chunk, not both"
            raise ValidationFailed(
                f"offset: {message}.",
                errors=[FieldError("/offset", ValidationFailed.code, message)],
            )
        return await passages.read_around(
            runtime=runtime,
            principal=principal,
            external_id=external_id,
            around_chunk=around_chunk,
            neighbours=neighbours,
            max_chars=max_chars,
        )

    return await answer(ctx, work)


class DocumentListItem(PublicModel):
    """A document as `list_documents` lists it: without its content."""

    external_id: str
    title: str | None
    metadata: JsonObject
    char_count: int
    updated_at: Timestamp


async def list_documents(
    ctx: Context,
    limit: Annotated[
        int, Field(ge=1, le=MAX_LIMIT, description="Documents per page.")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Field(description="The next_cursor of the previous page.")
    ] = None,
    updated_since: Annotated[
        str | None,
        Field(
            description=(
                "Only documents updated at or after this time: RFC 3339 with an offset "
                "(e.g. 2026-11-29T10:00:00Z)."
            )
        ),
    ] = None,
    metadata: Annotated[
        JsonObject | None,
        Field(
            description=(
                "Only documents whose metadata has each of these top-level keys with an equal "
                f"JSON value (`true` is not `1`, `1` is `1.0`); at most {SEARCH_METADATA_KEYS_MAX} "
                'keys, e.g. {"source": "handbook"}.'
            )
        ),
    ] = None,
    external_id_prefix: Annotated[
        str | None,
        Field(description="Only documents whose external_id starts with this (case-sensitive)."),
    ] = None,
) -> Annotated[CallToolResult, Page[DocumentListItem]]:
    """The user's documents by external_id, without content, with cursor pagination (read one
    with get_document). Filters combine (all must hold) and `total` counts the filtered list."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        # One model for the three, so that every bad one is named at once, as REST does.
        filters = _ListDocsArguments.model_validate(
            {
                "updated_since": updated_since,
                "metadata": metadata,
                "external_id_prefix": external_id_prefix,
            }
        )
        page = await knowledge.list_docs(
            runtime=runtime,
            principal=principal,
            limit=limit,
            cursor=cursor,
            updated_since=filters.updated_since,
            metadata=filters.metadata,
            external_id_prefix=filters.external_id_prefix,
        )
        items = [
            DocumentListItem(
                external_id=d.external_id,
                title=d.title,
                metadata=d.metadata,
                char_count=d.char_count,
                updated_at=d.updated_at,
            )
            for d in page.items
        ]
        return Page[DocumentListItem](items=items, next_cursor=page.next_cursor, total=page.total)

    return await answer(ctx, work)


class _ListDocsArguments(DocFilters):
    """The list's filters, checked as REST's and GraphQL's are (`DocFilters`), and
    `updated_since` parsed as REST's list parses it (the same parser for every door)."""

    updated_since: datetime | None = None

    @field_validator("updated_since", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        return None if value is None else parse_api_time(value, name="updated_since")


async def list_personas(
    ctx: Context,
    limit: Annotated[
        int, Field(ge=1, le=MAX_LIMIT, description="Personas per page.")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Field(description="The next_cursor of the previous page.")
    ] = None,
) -> Annotated[CallToolResult, Page[PersonaListItem]]:
    """The user's personas, oldest first, with cursor pagination."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        return await personas.list_personas(
            runtime=runtime, principal=principal, limit=limit, cursor=cursor
        )

    return await answer(ctx, work)


class AttachedDocument(PublicModel):
    external_id: str
    title: str | None
    char_count: int


class PersonaForAgent(PersonaPublic):
    """A persona as `get_persona` answers it: with the titles of its attached documents."""

    documents: list[AttachedDocument] = Field(
        description=(
            f"The attached documents by external_id, the first {MAX_LIMIT}; empty for a key "
            "without docs:read (knowledge_external_ids still names them)."
        )
    )


async def get_persona(
    ctx: Context,
    persona_id: Annotated[str, Field(description="The persona's id (per_...).")],
) -> Annotated[CallToolResult, PersonaForAgent]:
    """One persona: its instructions and greeting, and its attached documents (search within
    them with search_knowledge's persona_id)."""

    async def work(runtime: Runtime, principal: Principal) -> BaseModel:
        persona = await personas.get_persona(
            runtime=runtime, principal=principal, persona_id=persona_id
        )
        documents: list[AttachedDocument] = []
        # Titles and sizes are the documents' own data: REST shows them to docs:read only.
        if "docs:read" in principal.scopes:
            pages = await personas.knowledge_for_personas(
                runtime=runtime, principal=principal, persona_ids=[persona.id], limit=MAX_LIMIT
            )
            documents = [
                AttachedDocument(external_id=d.external_id, title=d.title, char_count=d.char_count)
                for d in pages[persona.id].items
            ]
        return PersonaForAgent(**persona.model_dump(), documents=documents)

    return await answer(ctx, work)


_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


TOOLS: tuple[Callable[..., Awaitable[CallToolResult]], ...] = (
    search_knowledge,
    get_document,
    list_documents,
    list_personas,
    get_persona,
)


def arguments_model(tool: Callable[..., object]) -> type[BaseModel]:
    """A tool's arguments as a model of their own, from its signature: the same types, bounds
    and defaults the SDK builds the tool's schema from (the context left out), for the gate to
    say which arguments the SDK refused and why (`app.mcp.errors.Gate`)."""
    hints = get_type_hints(tool, include_extras=True)
    fields: dict[str, Any] = {
        name: (hints[name], ... if p.default is p.empty else p.default)
        for name, p in inspect.signature(tool).parameters.items()
        if name != "ctx"
    }
    model: type[BaseModel] = create_model(f"{tool.__name__}_arguments", **fields)
    return model


def build_server() -> MCPServer:
    server = MCPServer(
        "personaizer",
        title="PersonAIzer knowledge",
        instructions=INSTRUCTIONS,
        version="1",
        middleware=[Gate({t.__name__: arguments_model(t) for t in TOOLS})],
    )
    for tool in TOOLS:
        server.add_tool(tool, annotations=_READ_ONLY)
    return server
