"""REST: KnowledgeDocs, the 5 endpoints of API.md section 5."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from app.errors import (
    BatchTooLarge,
    ChangesExpired,
    ContentTooLarge,
    DuplicateExternalId,
    InvalidCursor,
    InvalidExternalId,
    KnowledgeNotFound,
    KnowledgeQuotaExceeded,
)
from app.models import (
    BatchUpsertResponse,
    ChangesQuery,
    ExternalId,
    JsonObject,
    KnowledgeChanges,
    KnowledgeDocBatch,
    KnowledgeDocBody,
    KnowledgeDocPublic,
    Page,
    SingleUpsertResponse,
    parse_api_time,
)
from app.models.pagination import PageQuery
from app.models.search import check_metadata_filter
from app.rest.operations import (
    DYNAMIC_PARAMETERS,
    Call,
    Link,
    Operation,
    PathParam,
    json_response,
)
from app.services import feed, knowledge

EXTERNAL_ID_PARAM = {
    "external_id": PathParam(
        "The caller's id of the document: 1-128 of A-Z a-z 0-9 . _ : -",
        ExternalId,
        example="faq-shipping",
    )
}
#: Where a stateful client goes from a document it has just written.
_DOC_LINKS = {
    "GetKnowledgeDoc": Link(
        "getKnowledgeDoc", {"external_id": "$request.path.external_id"}, "Read it back."
    ),
    "DeleteKnowledgeDoc": Link(
        "deleteKnowledgeDoc", {"external_id": "$request.path.external_id"}, "Delete it."
    ),
}
_BATCH_LINKS = {
    "GetFirstKnowledgeDoc": Link(
        "getKnowledgeDoc",
        {"external_id": "$response.body#/results/0/external_id"},
        "Read back the batch's first document.",
    ),
    "DeleteFirstKnowledgeDoc": Link(
        "deleteKnowledgeDoc",
        {"external_id": "$response.body#/results/0/external_id"},
        "Delete the batch's first document.",
    ),
}


class DocListQuery(PageQuery):
    """The list's query. `metadata.<key>=<value>` parameters (any number, each key once) are
    gathered into `metadata` by `_metadata_parameters`; OpenAPI has no way to name such
    parameters, so the operation's description documents them instead of a parameter."""

    metadata: JsonObject | None = Field(
        None,
        description="Gathered from the `metadata.<key>=<value>` parameters.",
        json_schema_extra={DYNAMIC_PARAMETERS: "metadata.<key>"},
    )
    external_id_prefix: ExternalId | None = Field(
        None,
        description=(
            "Only documents whose external_id starts with this (case-sensitive; 1-128 of "
            "A-Z a-z 0-9 . _ : -)."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _metadata_parameters(cls, data: object) -> object:
        if not isinstance(data, dict) or "metadata" in data:
            return data  # `metadata` itself is no parameter: ignored like any unknown one
        gathered = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith(_DOT)}
        if not gathered:
            return data
        rest = {k: v for k, v in data.items() if k not in gathered}
        return {**rest, "metadata": {k[len(_DOT) :]: v for k, v in gathered.items()}}

    @field_validator("metadata", mode="before")
    @classmethod
    def _parsed(cls, value: object) -> object:
        # Here, not above: an error is then located at the `metadata` parameters.
        return metadata_parameters(value) if isinstance(value, dict) else value

    @field_validator("metadata", mode="after")
    @classmethod
    def _bounded(cls, value: JsonObject | None) -> JsonObject | None:
        return None if value is None else check_metadata_filter(value)

    include_content: bool = Field(False, description="Include each document's `content`.")
    updated_since: datetime | None = Field(
        None,
        description=(
            "Only documents updated at or after this time: RFC 3339 with an offset "
            "(e.g. `2026-11-29T10:00:00Z`)."
        ),
    )

    @field_validator("updated_since", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # The same parser as GraphQL's `DateTime`, so both doors take the same times.
        return None if value is None else parse_api_time(value, name="updated_since")


_DOT = "metadata."


def _not_a_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON, so the text is a string


def filter_value(text: str) -> Any:
    """A `metadata.<key>` parameter's value: the JSON value it is the text of (`true`, `1`,
    `null`, `"true"` for the string), else the text itself as a string (`en`, `007`)."""
    try:
        return json.loads(text, parse_constant=_not_a_constant)
    except ValueError:
        return text


def metadata_parameters(parameters: dict[Any, Any]) -> dict[str, Any]:
    """The `metadata.<key>` parameters (`{"lang": "en"}` for `metadata.lang=en`) as the filter
    they stand for; a key is everything after the first dot (`metadata.a.b` is the top-level
    key `a.b`). A key given twice (its values come as a list) or empty is refused."""
    out: dict[str, Any] = {}
    for key, text in parameters.items():
        if not isinstance(text, str) or not key:
            raise PydanticCustomError(
                "invalid_metadata_parameter",
                "metadata.{key}: each metadata.<key> parameter names a key, at most once",
                {"key": key},
            )
        out[key] = filter_value(text)
    return out


def doc_location(external_id: str) -> str:
    return f"/api/knowledge/docs/by-external-id/{quote(external_id, safe='')}"


async def list_docs(call: Call) -> Response:
    q: DocListQuery = call.query
    page = await knowledge.list_docs(
        runtime=call.runtime,
        principal=call.principal,
        limit=q.limit,
        cursor=q.cursor,
        include_content=q.include_content,
        updated_since=q.updated_since,
        metadata=q.metadata,
        external_id_prefix=q.external_id_prefix,
    )
    body = page.model_dump(mode="json")
    if not q.include_content:
        for item in body["items"]:
            item.pop("content", None)
    return json_response(body)


async def list_changes(call: Call) -> Response:
    q: ChangesQuery = call.query
    changes = await feed.list_changes(
        runtime=call.runtime, principal=call.principal, since=q.since, limit=q.limit
    )
    return json_response(changes, exclude={"changes": {"__all__": {"document": {"content"}}}})


async def upsert_batch(call: Call) -> Response:
    batch: KnowledgeDocBatch = call.body
    result = await knowledge.upsert_many(
        runtime=call.runtime, principal=call.principal, items=batch.items
    )
    return json_response(result)


async def get_doc(call: Call) -> Response:
    doc = await knowledge.get_doc(
        runtime=call.runtime, principal=call.principal, external_id=call.path("external_id")
    )
    return json_response(doc)


async def upsert_doc(call: Call) -> Response:
    external_id = call.path("external_id")
    status, doc = await knowledge.upsert_one(
        runtime=call.runtime, principal=call.principal, external_id=external_id, body=call.body
    )
    body = SingleUpsertResponse(status=status, document=doc)
    if status == "created":
        return json_response(
            body,
            201,
            headers={"Location": doc_location(external_id)},
            exclude={"document": {"content"}},
        )
    return json_response(body, exclude={"document": {"content"}})


async def delete_doc(call: Call) -> Response:
    await knowledge.delete_doc(
        runtime=call.runtime, principal=call.principal, external_id=call.path("external_id")
    )
    return Response(status_code=204)


_BY_ID = "/api/knowledge/docs/by-external-id/{external_id:str}"
# An external_id with `%2F` (or a newline) in it is an invalid external_id (422), not a missing
# route nor another document (app/rest/operations.py `RawConvertor`).
_BY_ID_ROUTE = "/api/knowledge/docs/by-external-id/{external_id:raw}"

OPERATIONS = [
    Operation(
        method="GET",
        path="/api/knowledge/docs",
        operation_id="listKnowledgeDocs",
        summary="List knowledge documents",
        description=(
            "The user's documents ordered by external_id (byte order, case-sensitive), with "
            "cursor pagination. `content` is left out unless `include_content=true`. "
            "`updated_since` (inclusive) filters on the time of each document's last write at "
            "the moment each page is read: pages are ordered by external_id, so a document "
            "written after the listing paged past its external_id is not seen until the next "
            "listing, and deletions never show. To mirror the documents, follow "
            "`GET /api/knowledge/changes` instead. "
            "`metadata.<key>=<value>` (any number of keys, each at most once, at most 32): only "
            "documents whose metadata has each key with an equal JSON value (`true` is not "
            "`1`, `1` is `1.0`). The value is read as JSON when it is JSON text, else it is "
            'the string as sent: `metadata.lang=en` is the string `"en"`, '
            "`metadata.flag=true` is `true`, `metadata.n=1` the number 1, and "
            '`metadata.flag=%22true%22` (JSON-quoted) the string `"true"`. The key is '
            "everything after `metadata.` (`metadata.a.b` is the top-level key `a.b`). "
            "`external_id_prefix`: only documents whose external_id starts with it. Filters "
            "combine (all must hold) and `total` counts the filtered list. A cursor only says "
            "where the previous page ended (after which external_id), so it may be passed "
            "with other filters: the listing goes on after that external_id."
        ),
        handler=list_docs,
        tag="KnowledgeDocs",
        policy="reads",
        scope="docs:read",
        idempotent=True,
        query=DocListQuery,
        responses={200: (Page[KnowledgeDocPublic], "A page of documents.")},
        errors=(InvalidCursor, InvalidExternalId),
    ),
    Operation(
        method="GET",
        path="/api/knowledge/changes",
        operation_id="listKnowledgeChanges",
        summary="Follow the changes to knowledge documents",
        description=(
            "Every write to the user's documents after `since`, in commit order: `upsert` with "
            "the document as it is now (without content), or `delete` (a tombstone, kept at "
            "least PERSONAIZER_CHANGES_RETENTION_DAYS, 30 by default). Store `next_since` and "
            "pass it back: no change is missed and none goes backwards, whatever is written "
            "between or during the calls; a document written several times may appear once, "
            "with its latest state. Without `since`: from the beginning of the retained "
            "history. `has_more`: call again at once. A `since` older than the retained "
            "history is 410 `knowledge.changes_expired`: list every document again, then "
            "follow the feed from a call without `since`."
        ),
        handler=list_changes,
        tag="KnowledgeDocs",
        policy="reads",
        scope="docs:read",
        idempotent=True,
        query=ChangesQuery,
        responses={200: (KnowledgeChanges, "The changes after `since`, oldest first.")},
        errors=(InvalidCursor, ChangesExpired),
    ),
    Operation(
        method="PUT",
        path="/api/knowledge/docs",
        operation_id="upsertKnowledgeDocs",
        summary="Batch upsert knowledge documents",
        description=(
            "Creates or replaces up to the plan's `batch_items` documents, all or nothing. "
            "Each result is `created`, `updated` or `no_op` (nothing written, nothing embedded), "
            "in request order. Every write is durable and searchable when the response is sent."
            "\n\nRefused beyond what the schema says, because it depends on the plan or on "
            "items agreeing: more items than the plan's `batch_items` "
            "(`knowledge.batch_too_large`), a content longer than its `doc_chars` "
            "(`knowledge.content_too_large`), an external_id twice in the batch "
            "(`knowledge.duplicate_external_id`), a write past the plan's quota "
            "(`knowledge.quota_exceeded`)."
        ),
        handler=upsert_batch,
        tag="KnowledgeDocs",
        policy="writes",
        scope="docs:write",
        idempotent=True,
        body=KnowledgeDocBatch,
        responses={200: (BatchUpsertResponse, "Per-item outcomes and a summary.")},
        links=_BATCH_LINKS,
        errors=(
            InvalidExternalId,
            DuplicateExternalId,
            BatchTooLarge,
            ContentTooLarge,
            KnowledgeQuotaExceeded,
        ),
    ),
    Operation(
        method="GET",
        path=_BY_ID,
        operation_id="getKnowledgeDoc",
        summary="Get one knowledge document",
        description="The document with its content.",
        handler=get_doc,
        tag="KnowledgeDocs",
        policy="reads",
        scope="docs:read",
        idempotent=True,
        path_params=EXTERNAL_ID_PARAM,
        route_path=_BY_ID_ROUTE,
        responses={200: (KnowledgeDocPublic, "The document.")},
        errors=(InvalidExternalId, KnowledgeNotFound),
    ),
    Operation(
        method="PUT",
        path=_BY_ID,
        operation_id="upsertKnowledgeDoc",
        summary="Create or replace one knowledge document",
        description=(
            "201 with a Location header when created, 200 when updated or a no_op. The whole "
            "document is replaced: an omitted title becomes null, omitted metadata `{}`. An "
            "`external_id` in the body must equal the path's (else 422 "
            "`request.validation_failed` at `/external_id`). A content longer than the plan's "
            "`doc_chars` is `knowledge.content_too_large`; a write past its quota "
            "`knowledge.quota_exceeded`."
        ),
        handler=upsert_doc,
        tag="KnowledgeDocs",
        policy="writes",
        scope="docs:write",
        idempotent=True,
        body=KnowledgeDocBody,
        path_params=EXTERNAL_ID_PARAM,
        route_path=_BY_ID_ROUTE,
        responses={
            200: (SingleUpsertResponse, "Updated, or no_op (nothing changed)."),
            201: (SingleUpsertResponse, "Created."),
        },
        errors=(InvalidExternalId, ContentTooLarge, KnowledgeQuotaExceeded),
        links=_DOC_LINKS,
    ),
    Operation(
        method="DELETE",
        path=_BY_ID,
        operation_id="deleteKnowledgeDoc",
        summary="Delete one knowledge document",
        description=(
            "Idempotent: 204 also when the document does not exist. Detaches it from every "
            "persona, frees its quota, and removes it from search at once."
        ),
        handler=delete_doc,
        tag="KnowledgeDocs",
        policy="writes",
        scope="docs:write",
        idempotent=True,
        path_params=EXTERNAL_ID_PARAM,
        route_path=_BY_ID_ROUTE,
        status=204,
        responses={204: (None, "Deleted, or there was nothing to delete.")},
        errors=(InvalidExternalId,),
    ),
]

__all__ = ["OPERATIONS", "BatchUpsertResponse"]
