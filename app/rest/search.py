"""REST: `POST /api/knowledge/search` (API.md section 9)."""

from __future__ import annotations

from starlette.responses import Response

from app.errors import InvalidExternalId, PersonaNotFound
from app.models import SearchRequest, SearchResponse
from app.rest.operations import Call, Operation, json_response
from app.services import search as search_service

DESCRIPTION = """\
Searches the user's documents: all of them, or only those attached to `persona_id`, or only \
`external_ids`, or only those whose metadata has the given top-level keys equal to the given \
JSON values. Scopes combine (a hit matches every one given) and are applied inside the search, \
so a small scope still gets its own best documents.

Results are best first, at most `k`, one per document: the document's best-matching chunk \
(`chunk_index`, `text`). `score` is higher for better hits; its scale depends on `mode`:

- `semantic`: cosine similarity (1 - cosine distance) of the query's embedding and the chunk's \
(all-MiniLM-L6-v2), from -1 to 1.
- `keyword`: the negated FTS5 BM25 score of the chunk (porter-stemmed words of the title and \
text, the query's words OR-ed); positive, unbounded, comparable only within one query.
- `hybrid` (default): reciprocal rank fusion of the two document rankings (top 100 of each): \
the sum over rankings of 1 / (60 + rank); at most 2/61.

Any text is a valid query: operators and punctuation (quotes, `AND`, `NEAR`, `*`, `:`) are \
treated as plain words. A query without any word finds nothing in `keyword` mode. Unknown \
`external_ids` are ignored; an empty list matches nothing. An unknown persona is 404 \
`persona.not_found`. `took_ms` is the server's time for the search."""


async def search(call: Call) -> Response:
    body: SearchRequest = call.body
    result = await search_service.search(core=call.core, principal=call.principal, request=body)
    return json_response(result)


OPERATIONS = [
    Operation(
        method="POST",
        path="/api/knowledge/search",
        operation_id="searchKnowledge",
        summary="Search knowledge documents",
        description=DESCRIPTION,
        handler=search,
        tag="KnowledgeDocs",
        policy="search",
        idempotent=True,
        body=SearchRequest,
        responses={200: (SearchResponse, "The hits, best first.")},
        errors=(InvalidExternalId, PersonaNotFound),
    ),
]
