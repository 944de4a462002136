"""What every resolver gets: the request, the runtime, the caller, this request's DataLoaders and
the response headers collected on the way (the RateLimit fields, a Retry-After)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

import strawberry
from starlette.requests import Request
from strawberry.dataloader import DataLoader

from app.errors import AppError
from app.http.guard import Guard
from app.models import KnowledgeDocPublic, Page
from app.services import personas
from app.services.runtime import Principal, Runtime


class KnowledgePageKey(NamedTuple):
    """One persona's page of attached documents: the persona and the page asked for."""

    persona_id: str
    limit: int
    cursor: str | None
    include_content: bool


KnowledgePage: TypeAlias = Page[KnowledgeDocPublic]


@dataclass
class Loaders:
    """Batch the per-persona lookups of one request into one service call each. Made per
    request: a loader caches what it loaded, and that must never outlive the request (or cross
    users)."""

    knowledge_ids: DataLoader[str, list[str]]
    knowledge_pages: DataLoader[KnowledgePageKey, KnowledgePage]

    @classmethod
    def for_caller(cls, runtime: Runtime, principal: Principal) -> Loaders:
        async def load_ids(persona_ids: list[str]) -> Sequence[list[str]]:
            found = await personas.attached_external_ids(
                runtime=runtime, principal=principal, persona_ids=persona_ids
            )
            return [found[p] for p in persona_ids]

        async def load_pages(
            keys: list[KnowledgePageKey],
        ) -> Sequence[KnowledgePage | BaseException]:
            # Personas asking for the same page (the usual case: one list, one `first`) share
            # one call; a bad cursor fails only the fields that passed it.
            groups: dict[tuple[int, str | None, bool], list[str]] = {}
            for key in keys:
                groups.setdefault((key.limit, key.cursor, key.include_content), []).append(
                    key.persona_id
                )
            results: dict[KnowledgePageKey, KnowledgePage | BaseException] = {}
            for (limit, cursor, content), ids in groups.items():
                pages: dict[str, KnowledgePage] | AppError
                try:
                    pages = await personas.knowledge_for_personas(
                        runtime=runtime,
                        principal=principal,
                        persona_ids=ids,
                        limit=limit,
                        cursor=cursor,
                        include_content=content,
                    )
                except AppError as exc:
                    pages = exc
                for persona_id in ids:
                    key = KnowledgePageKey(persona_id, limit, cursor, content)
                    results[key] = pages if isinstance(pages, AppError) else pages[persona_id]
            return [results[key] for key in keys]

        return cls(
            knowledge_ids=DataLoader(load_fn=load_ids),
            knowledge_pages=DataLoader(load_fn=load_pages),
        )


@dataclass
class Context:
    request: Request
    runtime: Runtime
    guard: Guard
    principal: Principal
    loaders: Loaders
    #: Headers for the HTTP response: the RateLimit fields of the charge, and any an error adds.
    response_headers: dict[str, str] = field(default_factory=dict)


Info: TypeAlias = strawberry.Info[Context, None]


async def get_context(request: Request) -> Context:
    """Authenticate the caller (as REST does, before anything else) and set up the request's
    loaders. Raises `Unauthorized` or `RateLimited` (too many failed attempts). Scopes are
    checked per field (`app.graphql.scopes`), not here."""
    runtime: Runtime = request.app.state.runtime
    guard: Guard = request.app.state.guard
    principal = await guard.authenticate(request)
    return Context(
        request=request,
        runtime=runtime,
        guard=guard,
        principal=principal,
        loaders=Loaders.for_caller(runtime, principal),
    )
