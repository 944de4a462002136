"""The MCP door's prompts and resources: each persona as a prompt, each document as a resource.

They are the caller's own (a user's personas, a user's documents), so they are not registered
with the SDK's managers, which hold one fixed set for every caller: `app.mcp.errors.Gate`
answers these methods itself from `METHODS`, for the caller the edge authenticated, over the
same service functions REST calls. A caller without the scope is offered none (empty lists) and
refused one by name; a failure is a JSON-RPC error whose `data` is the problem body REST would
answer, so an agent reads the same stable `code`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mcp_types import (
    GetPromptRequestParams,
    GetPromptResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    PaginatedRequestParams,
    Prompt,
    PromptMessage,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
    TextContent,
    TextResourceContents,
)
from pydantic import BaseModel, Field, ValidationError

from app.errors import RouteNotFound
from app.http.validation import from_validation_error
from app.models import Scope as KeyScope
from app.models.knowledge import DOC_PAGE_DEFAULT_CHARS, KnowledgeDocPage
from app.models.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.services import knowledge, personas
from app.services.runtime import Principal, Runtime

#: A document's URI: `personaizer://docs/{external_id}`, `?offset=N` for a later page.
DOC_URI_PREFIX = "personaizer://docs/"
DOC_URI_TEMPLATE = "personaizer://docs/{external_id}{?offset}"

Handler = Callable[[Runtime, Principal, Mapping[str, Any]], Awaitable[BaseModel]]


async def list_prompts(runtime: Runtime, principal: Principal, raw: Mapping[str, Any]) -> BaseModel:
    params = PaginatedRequestParams.model_validate(raw)
    page = await personas.list_personas(
        runtime=runtime, principal=principal, limit=MAX_LIMIT, cursor=params.cursor
    )
    prompts = [
        Prompt(
            name=p.id,
            title=p.name,
            description=p.description or f"Take on the persona {p.name}.",
            arguments=[],
        )
        for p in page.items
    ]
    return ListPromptsResult(prompts=prompts, next_cursor=page.next_cursor)


async def get_prompt(runtime: Runtime, principal: Principal, raw: Mapping[str, Any]) -> BaseModel:
    """The persona's instructions as the opening user message (MCP prompts have no system
    role), then its greeting as the assistant's first turn, so an agent continues as it."""
    params = GetPromptRequestParams.model_validate(raw)
    persona = await personas.get_persona(
        runtime=runtime, principal=principal, persona_id=params.name
    )
    opening = f"Take on the persona {persona.name!r} for the rest of this conversation."
    if persona.instructions:
        opening += f" Its instructions:\n\n{persona.instructions}"
    messages = [PromptMessage(role="user", content=TextContent(type="text", text=opening))]
    if persona.greeting:
        messages.append(
            PromptMessage(role="assistant", content=TextContent(type="text", text=persona.greeting))
        )
    return GetPromptResult(description=persona.description or persona.name, messages=messages)


async def list_resources(
    runtime: Runtime, principal: Principal, raw: Mapping[str, Any]
) -> BaseModel:
    params = PaginatedRequestParams.model_validate(raw)
    page = await knowledge.list_docs(
        runtime=runtime, principal=principal, limit=DEFAULT_LIMIT, cursor=params.cursor
    )
    resources = [
        Resource(
            uri=DOC_URI_PREFIX + d.external_id,
            name=d.external_id,
            title=d.title,
            description=f"{d.char_count:,} characters.",
            mime_type="text/plain",
        )
        for d in page.items
    ]
    return ListResourcesResult(resources=resources, next_cursor=page.next_cursor)


async def list_resource_templates(
    runtime: Runtime, principal: Principal, raw: Mapping[str, Any]
) -> BaseModel:
    template = ResourceTemplate(
        uri_template=DOC_URI_TEMPLATE,
        name="document",
        title="Knowledge document",
        description=(
            f"A document's text by external_id, {DOC_PAGE_DEFAULT_CHARS:,} characters from "
            "`offset` (default 0); the content's _meta gives next_offset (null at the end)."
        ),
        mime_type="text/plain",
    )
    return ListResourceTemplatesResult(resource_templates=[template])


class _ResourceQuery(BaseModel):
    """A document URI's query, as lax as REST's query parameters."""

    offset: int = Field(0, ge=0)


async def read_resource(
    runtime: Runtime, principal: Principal, raw: Mapping[str, Any]
) -> BaseModel:
    params = ReadResourceRequestParams.model_validate(raw)
    parts = urlsplit(params.uri)
    if not params.uri.startswith(DOC_URI_PREFIX) or parts.fragment:
        raise RouteNotFound(f"No resource {params.uri!r}; documents are {DOC_URI_TEMPLATE}.")
    external_id = params.uri[len(DOC_URI_PREFIX) :].split("?", 1)[0]
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    try:
        offset = _ResourceQuery.model_validate(query).offset
    except ValidationError as exc:
        raise from_validation_error(exc, parameter=True) from None
    doc = await knowledge.get_doc(runtime=runtime, principal=principal, external_id=external_id)
    page = KnowledgeDocPage.of(doc, offset=offset, max_chars=DOC_PAGE_DEFAULT_CHARS)
    meta = {"offset": page.offset, "total_chars": page.total_chars, "next_offset": page.next_offset}
    contents = TextResourceContents(
        uri=params.uri, text=page.content, mime_type="text/plain", _meta=meta
    )
    return ReadResourceResult(contents=[contents])


#: The methods the gate answers itself: each one's scope, whether a caller without it gets an
#: empty answer (a list) rather than a refusal, and its handler.
METHODS: dict[str, tuple[KeyScope, bool, Handler]] = {
    "prompts/list": ("personas:read", True, list_prompts),
    "prompts/get": ("personas:read", False, get_prompt),
    "resources/list": ("docs:read", True, list_resources),
    "resources/templates/list": ("docs:read", True, list_resource_templates),
    "resources/read": ("docs:read", False, read_resource),
}

#: What an empty list looks like, for a caller without the scope.
EMPTY: dict[str, BaseModel] = {
    "prompts/list": ListPromptsResult(prompts=[]),
    "resources/list": ListResourcesResult(resources=[]),
    "resources/templates/list": ListResourceTemplatesResult(resource_templates=[]),
}
