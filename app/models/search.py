"""Search requests and answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, field_validator
from pydantic_core import PydanticCustomError
from sqlmodel import Field

from app.models.base import (
    NOT_BLANK_PATTERN,
    ExternalId,
    JsonObject,
    PublicModel,
    RequestModel,
    check_metadata,
    is_blank,
)

SEARCH_QUERY_MAX = 1000
SEARCH_K_MAX = 50
SEARCH_EXTERNAL_IDS_MAX = 1000
SEARCH_METADATA_KEYS_MAX = 32
#: A `hybrid` or `semantic` score below this is most likely a hit unrelated to the query
#: (measured in docs/decisions.md); the documented threshold for `min_score`.
SEARCH_JUNK_THRESHOLD = 0.4
_INT64 = 2**63

SearchMode = Literal["hybrid", "semantic", "keyword"]


def _query_not_blank(value: str) -> str:
    if is_blank(value):
        raise PydanticCustomError("blank", "query must not be blank")
    return value


def check_metadata_filter(value: JsonObject) -> JsonObject:
    """A metadata equality filter (the search's, a persona's knowledge filter, the list's):
    bounded in keys, and every value one a stored value could equal."""
    if len(value) > SEARCH_METADATA_KEYS_MAX:
        raise PydanticCustomError(
            "too_many_filters",
            "metadata may name at most {limit} keys",
            {"limit": SEARCH_METADATA_KEYS_MAX},
        )
    for key, item in value.items():
        # SQLite holds 64-bit integers; a larger one could never equal a stored value anyway.
        if isinstance(item, int) and not isinstance(item, bool) and not -_INT64 <= item < _INT64:
            raise PydanticCustomError(
                "integer_too_large",
                "metadata filter {key} is outside the 64-bit range",
                {"key": key},
            )
    return check_metadata(value)


class SearchRequest(RequestModel):
    """Body of `POST /api/knowledge/search`. Scopes combine: a hit must match all given."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query": "how long does delivery take", "k": 3}]}
    )

    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=SEARCH_QUERY_MAX,
            schema_extra={"json_schema_extra": {"pattern": NOT_BLANK_PATTERN}},
        ),
        AfterValidator(_query_not_blank),
    ] = Field(description="What to look for: free text; any characters are safe.")
    k: int = Field(5, ge=1, le=SEARCH_K_MAX, description="How many documents to return.")

    @field_validator("k", mode="before")
    @classmethod
    def _integral(cls, value: object) -> object:
        # Request models are strict (`true` is not 1), but JSON Schema's integer includes 3.0.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    mode: SearchMode = Field(
        "hybrid",
        description="`hybrid` (keyword and vector rankings fused), `semantic` or `keyword`.",
    )
    persona_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Only documents attached to this persona (404 if it is not yours).",
    )
    external_ids: list[ExternalId] | None = Field(
        None,
        max_length=SEARCH_EXTERNAL_IDS_MAX,
        description="Only these documents; unknown ones are ignored, `[]` matches nothing.",
    )
    metadata: Annotated[JsonObject, AfterValidator(check_metadata_filter)] | None = Field(
        None,
        description=(
            "Equality filters on top-level metadata keys: a document matches when each key is "
            "present with an equal JSON value (numbers compare by value, `true` is not `1`)."
        ),
    )
    min_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Leave out hits whose `score` is below this (0 to 1); none by default. "
            f"{SEARCH_JUNK_THRESHOLD:g} leaves out hits unrelated to the query in `hybrid` and "
            "`semantic` mode."
        ),
    )


class SearchHit(PublicModel):
    external_id: str
    title: str | None
    score: float = Field(
        description=(
            "0 to 1, higher is better, comparable across queries of one mode. In `hybrid` and "
            f"`semantic` mode, below {SEARCH_JUNK_THRESHOLD:g} a hit is most likely unrelated "
            "to the query."
        )
    )
    semantic_score: float | None = Field(
        None,
        description=(
            "The semantic part of the score (0 to 1: the cosine similarity of the chunk and "
            "the query, below 0 taken as 0); null in `keyword` mode, or in `hybrid` when the "
            "document was too far down the semantic ranking to be scored."
        ),
    )
    keyword_score: float | None = Field(
        None,
        description=(
            "The keyword part of the score (0 to 1, from BM25 over the query's words); null "
            "in `semantic` mode, or when the document has no query word (or was too far "
            "down the keyword ranking to be scored)."
        ),
    )
    chunk_index: int = Field(description="Which chunk of the document matched best (from 0).")
    text: str = Field(description="The text of that chunk.")
    metadata: JsonObject


class SearchResponse(PublicModel):
    results: list[SearchHit] = Field(description="Best first, at most one hit per document.")
    mode: SearchMode
    took_ms: float = Field(description="Time the server spent on the search, in milliseconds.")
