"""REST: `POST /api/knowledge/search` (API.md section 9)."""

from __future__ import annotations

from starlette.responses import Response

from app.errors import InvalidExternalId, PersonaNotFound
from app.models import SearchRequest, SearchResponse
from app.rest.operations import Call, Operation, json_response
from app.services import search as search_service

_W = search_service.SEMANTIC_WEIGHT
DESCRIPTION = f"""\
Searches the user's documents: all of them, or only those attached to `persona_id`, or only \
`external_ids`, or only those whose metadata has the given top-level keys equal to the given \
JSON values. Scopes combine (a hit matches every one given) and are applied inside the search, \
so a small scope still gets its own best documents.

Results are best first, at most `k`, one per document: the document's best-matching chunk \
(`chunk_index`, `text`). `score` is 0 to 1, higher is better, and comparable from one query to \
the next within a mode, so a threshold (`min_score`) means the same for every query:

- `semantic`: the cosine similarity of the query's embedding and the chunk's (all-MiniLM-L6-v2), \
below 0 taken as 0.
- `keyword`: BM25 of the chunk (porter-stemmed words of the title and text, the query's words \
OR-ed) per query word, saturated: `x / (x + {search_service.KEYWORD_HALF:g})` for \
`x` = BM25 / words.
- `hybrid` (default): `{_W:g} * semantic + {1 - _W:g} * keyword` over the top \
{search_service.FUSION_DEPTH} of each ranking (a document without any query word has keyword \
0). When hits reach the junk threshold, the query's embedding is moved towards the best \
{search_service.FEEDBACK_DOCS} of them and the semantic ranking is run again (pseudo-relevance \
feedback), so `semantic_score` is then the similarity to that moved query.

Each hit also carries `semantic_score` and `keyword_score`, the two parts, where the mode \
computed them (null otherwise). **Junk threshold: {search_service.JUNK_THRESHOLD:g}.** In \
`hybrid` and `semantic` mode a hit scoring below it is most likely unrelated to the query \
(`"min_score": {search_service.JUNK_THRESHOLD:g}` leaves those out; measured: off-topic \
queries such as "chocolate cake recipe" score at most about 0.3 against a technical corpus, \
the top hit of 99 real queries in 100 0.55 or more; docs/decisions.md). `keyword` scores count shared words only and cannot \
tell junk from hits.

Any text is a valid query: operators and punctuation (quotes, `AND`, `NEAR`, `*`, `:`) are \
treated as plain words. A query without any word finds nothing in `keyword` mode. Unknown \
`external_ids` are ignored; an empty list matches nothing. An unknown persona is 404 \
`persona.not_found`. `took_ms` is the server's time for the search."""


async def search(call: Call) -> Response:
    body: SearchRequest = call.body
    result = await search_service.search(
        runtime=call.runtime, principal=call.principal, request=body
    )
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
        scope="search",
        idempotent=True,
        body=SearchRequest,
        responses={200: (SearchResponse, "The hits, best first.")},
        errors=(InvalidExternalId, PersonaNotFound),
    ),
]
