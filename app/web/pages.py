"""The signed-in dashboard's reading pages: usage, documents, personas and a search playground.

Every page reads through the service functions the API calls, acting as the session's user, so
it shows exactly what that user's keys would get. Nothing here writes (app/web/documents.py and
app/web/personas.py do): the pages are GETs (their forms too), and the playground's search is
charged to the user's search rate limit like an API search, since it embeds the query. A page
says once what the POST that redirected to it did (`take_flash`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.http.validation import from_validation_error
from app.models import SearchRequest
from app.models.search import SEARCH_QUERY_MAX
from app.services import knowledge, personas, search, subscription
from app.services.runtime import Principal
from app.web.common import csrf, no_api_keys, render, runtime_of, signed_in, take_flash, to

#: Rows per page of the documents and personas lists.
PAGE_SIZE = 25
#: Hits the playground shows.
PLAYGROUND_K = 10
#: Longest document search text kept (external_ids are at most 128 characters).
FIND_MAX = 200


async def _page(
    request: Request, name: str, section: str, *, principal: Principal, **context: Any
) -> Response:
    # `section` marks the current page in the navigation; the CSRF token is for sign-out.
    return render(
        name,
        principal=principal,
        section=section,
        csrf=csrf(request),
        flash=take_flash(request),
        **context,
    )


async def _principal(request: Request) -> Principal | None:
    no_api_keys(request)
    return await signed_in(request)


def _cursor(request: Request) -> str | None:
    return request.query_params.get("cursor") or None


async def dashboard(request: Request) -> Response:
    """The plan's limits and this period's use, each limit with a bar."""
    principal = await _principal(request)
    if principal is None:
        return to("/login")
    runtime = runtime_of(request)
    plan = await subscription.get_subscription(runtime=runtime, principal=principal)
    usage = await subscription.get_usage(runtime=runtime, principal=principal)
    return await _page(request, "usage.html", "usage", principal=principal, plan=plan, usage=usage)


async def documents(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return to("/login")
    runtime = runtime_of(request)
    text = request.query_params.get("q", "").strip()[:FIND_MAX]
    if text:
        page = await knowledge.find_docs(
            runtime=runtime,
            principal=principal,
            text=text,
            limit=PAGE_SIZE,
            cursor=_cursor(request),
        )
    else:
        page = await knowledge.list_docs(
            runtime=runtime, principal=principal, limit=PAGE_SIZE, cursor=_cursor(request)
        )
    return await _page(
        request,
        "documents.html",
        "documents",
        principal=principal,
        page=page,
        q=text,
        cursor=_cursor(request),
    )


async def document(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return to("/login")
    doc = await knowledge.get_doc(
        runtime=runtime_of(request),
        principal=principal,
        external_id=request.path_params["external_id"],
    )
    return await _page(request, "document.html", "documents", principal=principal, doc=doc)


async def persona_list(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return to("/login")
    page = await personas.list_personas(
        runtime=runtime_of(request), principal=principal, limit=PAGE_SIZE, cursor=_cursor(request)
    )
    return await _page(request, "personas.html", "personas", principal=principal, page=page)


async def persona(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return to("/login")
    runtime = runtime_of(request)
    persona_id = request.path_params["persona_id"]
    found = await personas.get_persona(runtime=runtime, principal=principal, persona_id=persona_id)
    attached = await personas.knowledge_for_personas(
        runtime=runtime,
        principal=principal,
        persona_ids=[found.id],
        limit=PAGE_SIZE,
        cursor=_cursor(request),
    )
    return await _page(
        request,
        "persona.html",
        "personas",
        principal=principal,
        persona=found,
        docs=attached[found.id],
    )


async def playground(request: Request) -> Response:
    """A search as the API would answer it: query, mode and persona from a GET form."""
    principal = await _principal(request)
    if principal is None:
        return to("/login")
    runtime = runtime_of(request)
    params = request.query_params
    query = params.get("q", "")
    mode = params.get("mode", "hybrid")
    persona_id = params.get("persona", "")
    # The persona picker lists the first page of personas, as the personas page does.
    choices = await personas.list_personas(runtime=runtime, principal=principal, limit=200)
    result = None
    if query.strip():
        try:
            wanted = SearchRequest.model_validate(
                {"query": query, "k": PLAYGROUND_K, "mode": mode, "persona_id": persona_id or None}
            )
        except ValidationError as exc:
            raise from_validation_error(exc, parameter=True) from None
        guard = request.app.state.guard
        await guard.charge(principal, "search")
        result = await search.search(runtime=runtime, principal=principal, request=wanted)
    return await _page(
        request,
        "search.html",
        "search",
        principal=principal,
        q=query,
        mode=mode,
        persona_id=persona_id,
        personas=choices.items,
        result=result,
        query_max=SEARCH_QUERY_MAX,
    )


def routes(session: list[Middleware]) -> list[BaseRoute]:
    """The pages, each behind the dashboard's session middleware."""
    return [
        Route(path, endpoint, methods=["GET"], middleware=session)
        for path, endpoint in (
            ("/dashboard", dashboard),
            ("/dashboard/documents", documents),
            ("/dashboard/documents/{external_id:str}", document),
            ("/dashboard/personas", persona_list),
            ("/dashboard/personas/{persona_id:str}", persona),
            ("/dashboard/search", playground),
        )
    ]
