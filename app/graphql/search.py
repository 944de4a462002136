"""GraphQL: `search` (API.md section 9) over `app.services.search`. Selecting it charges the
`search` rate-limit policy instead of `reads`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from app.graphql.context import Info
from app.graphql.errors import validated
from app.models import (
    SEARCH_EXTERNAL_IDS_MAX,
    SEARCH_K_MAX,
    SEARCH_METADATA_KEYS_MAX,
    SEARCH_QUERY_MAX,
    SearchRequest,
    SearchResponse,
)
from app.models import SearchHit as SearchHitModel
from app.services import search as search_service

#: The root field whose selection makes an operation a `search` for the rate limiter.
SEARCH_FIELD = "search"


@strawberry.enum(description="How hits are ranked.")
class SearchMode(Enum):
    HYBRID = strawberry.enum_value("hybrid", description="Keyword and vector rankings fused.")
    SEMANTIC = strawberry.enum_value("semantic", description="Cosine similarity of embeddings.")
    KEYWORD = strawberry.enum_value(
        "keyword", description="BM25 over the words (each user's own statistics)."
    )


@strawberry.type
class SearchHit:
    external_id: str
    title: str | None
    score: float = strawberry.field(description=SearchHitModel.model_fields["score"].description)
    semantic_score: float | None = strawberry.field(
        description=SearchHitModel.model_fields["semantic_score"].description
    )
    keyword_score: float | None = strawberry.field(
        description=SearchHitModel.model_fields["keyword_score"].description
    )
    chunk_index: int = strawberry.field(description="Which chunk matched best (from 0).")
    text: str = strawberry.field(description="The text of that chunk.")
    metadata: JSON


@strawberry.type
class SearchResult:
    results: list[SearchHit] = strawberry.field(
        description="Best first, at most one hit per document."
    )
    mode: SearchMode
    took_ms: float = strawberry.field(description="The server's time for the search, in ms.")

    @classmethod
    def of(cls, response: SearchResponse) -> SearchResult:
        return cls(
            results=[
                SearchHit(
                    external_id=h.external_id,
                    title=h.title,
                    score=h.score,
                    semantic_score=h.semantic_score,
                    keyword_score=h.keyword_score,
                    chunk_index=h.chunk_index,
                    text=h.text,
                    metadata=JSON(h.metadata),
                )
                for h in response.results
            ],
            mode=SearchMode(response.mode),
            took_ms=response.took_ms,
        )


async def search(
    info: Info,
    query: Annotated[
        str,
        strawberry.argument(
            description=f"What to look for: free text, 1-{SEARCH_QUERY_MAX} characters."
        ),
    ],
    k: Annotated[
        int, strawberry.argument(description=f"How many documents to return, 1-{SEARCH_K_MAX}.")
    ] = 5,
    mode: SearchMode = SearchMode.HYBRID,
    persona_id: Annotated[
        strawberry.ID | None,
        strawberry.argument(description="Only documents attached to this persona."),
    ] = None,
    external_ids: Annotated[
        list[str] | None,
        strawberry.argument(
            description=(
                f"Only these documents, at most {SEARCH_EXTERNAL_IDS_MAX}; `[]` matches nothing."
            )
        ),
    ] = None,
    metadata: Annotated[
        JSON | None,
        strawberry.argument(
            description=(
                f"Equality filters on at most {SEARCH_METADATA_KEYS_MAX} top-level metadata "
                "keys (all must match)."
            )
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        strawberry.argument(description=SearchRequest.model_fields["min_score"].description),
    ] = None,
) -> SearchResult:
    """Search the caller's documents, best first, one hit per document (see the REST
    operation `searchKnowledge` for the scores of each mode)."""
    body: dict[str, Any] = {
        "query": query,
        "k": k,
        "mode": mode.value,
        "persona_id": persona_id,
        "external_ids": external_ids,
        "metadata": metadata,
        "min_score": min_score,
    }
    request = validated(SearchRequest, body)
    response = await search_service.search(
        runtime=info.context.runtime, principal=info.context.principal, request=request
    )
    return SearchResult.of(response)
