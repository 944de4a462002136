"""The v1 operations as data: what to send and how to read the answer.

This module is the one place an operation is written: its parameters, its docstring, the
request it makes and the type it answers. `Client` and `AsyncClient` take each builder here as
a method (`method(calls.get_doc)`), its signature and docstring included, so the two cannot
drift: they differ only in how they wait (blocking or awaiting).

A builder returns one of three things:
- a `Call`: one request (most operations);
- a `Program`: several requests in turn, each yielded as a `Call` and sent its result back
  (`upsert_docs_batched`);
- `Pages`: a list walked page after page (`iter_docs`, `iter_personas`; `iter_changes`, whose
  "items" are the feed's pages themselves).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from app.client.batching import DEFAULT_BATCH_CHARS, BatchDone, merge, plan_batches
from app.client.models import (
    BatchResult,
    ChangesPage,
    DocInput,
    Document,
    Page,
    Persona,
    PersonaDocument,
    PersonaKnowledge,
    PersonaSummary,
    SearchResults,
    SingleUpsert,
    Subscription,
    Usage,
)

T = TypeVar("T")

#: Page size of the list iterators: the contract's largest.
PAGE_SIZE = 200


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request. `idempotent`: replaying it after a lost answer cannot do harm (every PUT and
    DELETE of the contract, GETs, search); a POST that creates is not."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    idempotent: bool = True


#: Several calls in turn: the program yields each `Call` and is sent back what it answered.
Program = Generator[Call[Any], Any, T]


@dataclass(frozen=True, slots=True)
class Pages(Generic[T]):
    """A list read page after page: `page(cursor)` asks for the page after `cursor`."""

    page: Callable[[str | None], Call[Page[T]]]

    @property
    def first(self) -> Call[Page[T]]:
        return self.page(None)

    def after(self, page: Page[T]) -> Call[Page[T]] | None:
        """The call for the next page, or None when `page` was the last."""
        return None if page.next_cursor is None else self.page(page.next_cursor)


def _model(kind: type[T]) -> Callable[[httpx.Response], T]:
    adapter = TypeAdapter(kind)
    return lambda response: adapter.validate_json(response.content)


def _none(response: httpx.Response) -> None:
    return None


def _id(value: str) -> str:
    return quote(value, safe="")


def _time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _page_params(limit: int, cursor: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return params


DocItem = DocInput | Mapping[str, Any]


def doc_input(item: DocItem) -> DocInput:
    return item if isinstance(item, DocInput) else DocInput.model_validate(item)


# --- knowledge ----------------------------------------------------------------------------


def list_docs(
    *,
    limit: int = 50,
    cursor: str | None = None,
    include_content: bool = False,
    updated_since: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    external_id_prefix: str | None = None,
) -> Call[Page[Document]]:
    """One page of documents, ordered by external_id. `metadata`: equality filters (JSON
    equality: `True` is not `1`); `external_id_prefix`: case-sensitive."""
    params = _page_params(limit, cursor)
    if include_content:
        params["include_content"] = "true"
    if updated_since is not None:
        params["updated_since"] = _time(updated_since)
    for key, value in (metadata or {}).items():
        # Always as JSON text, strings quoted: the server reads unquoted text that is not
        # JSON as a string, but `"true"` must stay a string and `007` is better unambiguous.
        params[f"metadata.{key}"] = json.dumps(value, separators=(",", ":"))
    if external_id_prefix is not None:
        params["external_id_prefix"] = external_id_prefix
    return Call("GET", "/api/knowledge/docs", _model(Page[Document]), params=params)


def iter_docs(
    *,
    include_content: bool = False,
    updated_since: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    external_id_prefix: str | None = None,
) -> Pages[Document]:
    """Every document (matching the filters), page after page, ordered by external_id."""
    return Pages(
        lambda cursor: list_docs(
            limit=PAGE_SIZE,
            cursor=cursor,
            include_content=include_content,
            updated_since=updated_since,
            metadata=metadata,
            external_id_prefix=external_id_prefix,
        )
    )


#: Changes per call of `iter_changes`: the feed's largest.
CHANGES_PAGE_SIZE = 1000


def list_changes(*, since: str | None = None, limit: int = 100) -> Call[ChangesPage]:
    """One call of the changes feed: the writes after `since` (None: from the beginning of
    the retained history), oldest first. A `since` older than the retained history raises
    `ApiError` with code `knowledge.changes_expired` (410): list every document again, then
    start over without `since`."""
    params: dict[str, Any] = {"limit": limit}
    if since is not None:
        params["since"] = since
    return Call("GET", "/api/knowledge/changes", _model(ChangesPage), params=params)


def iter_changes(since: str | None = None, *, limit: int = CHANGES_PAGE_SIZE) -> Pages[ChangesPage]:
    """The changes feed from `since` until it is caught up, one `ChangesPage` (of at most
    `limit` changes) at a time; the last one may hold no changes. Apply each page's `changes`, then store its `next_since`
    and pass it as `since` next time::

        for page in client.iter_changes(saved):
            mirror.apply(page.changes)
            saved = page.next_since
    """
    parse = _model(ChangesPage)

    def one(response: httpx.Response) -> Page[ChangesPage]:
        # Walked as a list of pages: a page leads on while the server says there is more.
        page = parse(response)
        following = page.next_since if page.has_more else None
        return Page[ChangesPage](items=[page], next_cursor=following, total=1)

    def call(cursor: str | None) -> Call[Page[ChangesPage]]:
        base = list_changes(since=cursor, limit=limit)
        return Call(base.method, base.path, one, params=base.params)

    first = call(since)
    return Pages(lambda cursor: first if cursor is None else call(cursor))


def get_doc(external_id: str) -> Call[Document]:
    return Call("GET", f"/api/knowledge/docs/by-external-id/{_id(external_id)}", _model(Document))


def upsert_docs(items: Sequence[DocItem]) -> Call[BatchResult]:
    """One batch request: all or nothing, at most the plan's `batch_items`."""
    body = {"items": [doc_input(i).model_dump(mode="json") for i in items]}
    # All-or-nothing and idempotent: a replay of a committed batch answers no_op for each item.
    return Call("PUT", "/api/knowledge/docs", _model(BatchResult), json=body)


def upsert_doc(
    external_id: str,
    *,
    content: str,
    title: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Call[SingleUpsert]:
    body = {"content": content, "title": title, "metadata": dict(metadata or {})}
    return Call(
        "PUT",
        f"/api/knowledge/docs/by-external-id/{_id(external_id)}",
        _model(SingleUpsert),
        json=body,
    )


def upsert_docs_batched(
    items: Iterable[DocItem],
    *,
    batch_items: int | None = None,
    max_chars: int = DEFAULT_BATCH_CHARS,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> Program[BatchResult]:
    """Upsert any number of documents in batches cut by count (`batch_items`, by default
    the plan's) and by size (`max_chars`). Each batch commits on its own: after a failure,
    the batches before it are stored, and running the same call again is safe (they are
    no_ops)."""
    if batch_items is None:
        plan: Subscription = yield subscription()
        batch_items = plan.limits.batch_items
    done: list[BatchResult] = []
    docs = (doc_input(i) for i in items)
    for index, batch in enumerate(plan_batches(docs, max_items=batch_items, max_chars=max_chars)):
        # The program is suspended at `yield` while the client sends the batch: this times it.
        started = time.monotonic()
        result: BatchResult = yield upsert_docs(batch)
        done.append(result)
        if on_batch is not None:
            on_batch(BatchDone(index, batch, result, time.monotonic() - started))
    return merge(done)


def delete_doc(external_id: str) -> Call[None]:
    """Delete a document; no error when it is already gone."""
    return Call("DELETE", f"/api/knowledge/docs/by-external-id/{_id(external_id)}", _none)


def search(
    query: str,
    *,
    k: int = 5,
    mode: str = "hybrid",
    persona_id: str | None = None,
    external_ids: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    min_score: float | None = None,
) -> Call[SearchResults]:
    """The `k` best hits for `query`; `min_score` (0 to 1) leaves out the weaker ones."""
    body: dict[str, Any] = {"query": query, "k": k, "mode": mode}
    if persona_id is not None:
        body["persona_id"] = persona_id
    if external_ids is not None:
        body["external_ids"] = list(external_ids)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if min_score is not None:
        body["min_score"] = min_score
    # A POST, but it only reads: safe to replay.
    return Call("POST", "/api/knowledge/search", _model(SearchResults), json=body)


# --- personas -----------------------------------------------------------------------------


def list_personas(*, limit: int = 50, cursor: str | None = None) -> Call[Page[PersonaSummary]]:
    return Call(
        "GET", "/api/personas", _model(Page[PersonaSummary]), params=_page_params(limit, cursor)
    )


def iter_personas() -> Pages[PersonaSummary]:
    """Every persona, page after page, in creation order."""
    return Pages(lambda cursor: list_personas(limit=PAGE_SIZE, cursor=cursor))


def get_persona(persona_id: str) -> Call[Persona]:
    return Call("GET", f"/api/personas/{_id(persona_id)}", _model(Persona))


def create_persona(
    *,
    name: str,
    description: str = "",
    instructions: str = "",
    greeting: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    knowledge_filter: Mapping[str, Any] | None = None,
) -> Call[Persona]:
    """`knowledge_filter`: `{"metadata": {...}, "external_id_prefixes": [...]}`, knowledge by
    rule (API.md section 13)."""
    body: dict[str, Any] = {
        "name": name,
        "description": description,
        "instructions": instructions,
        "greeting": greeting,
        "metadata": dict(metadata or {}),
    }
    if knowledge_filter is not None:
        body["knowledge_filter"] = dict(knowledge_filter)
    # Not idempotent: a replay after a lost answer would make a second persona.
    return Call("POST", "/api/personas", _model(Persona), json=body, idempotent=False)


def update_persona(persona_id: str, **changes: Any) -> Call[Persona]:
    """A partial update: only the fields in `changes` are sent, so only they change."""
    return Call("PATCH", f"/api/personas/{_id(persona_id)}", _model(Persona), json=dict(changes))


def delete_persona(persona_id: str) -> Call[None]:
    return Call("DELETE", f"/api/personas/{_id(persona_id)}", _none)


def list_persona_knowledge(
    persona_id: str, *, limit: int = 50, cursor: str | None = None
) -> Call[Page[PersonaDocument]]:
    """One page of the persona's knowledge, ordered by external_id, without content: attached
    documents and those its `knowledge_filter` matches, each with `via` saying which."""
    return Call(
        "GET",
        f"/api/personas/{_id(persona_id)}/knowledge",
        _model(Page[PersonaDocument]),
        params=_page_params(limit, cursor),
    )


def iter_persona_knowledge(persona_id: str) -> Pages[PersonaDocument]:
    """Every document of the persona's knowledge, page after page, ordered by external_id."""
    return Pages(lambda cursor: list_persona_knowledge(persona_id, limit=PAGE_SIZE, cursor=cursor))


def set_persona_knowledge(persona_id: str, external_ids: Sequence[str]) -> Call[PersonaKnowledge]:
    return Call(
        "PUT",
        f"/api/personas/{_id(persona_id)}/knowledge",
        _model(PersonaKnowledge),
        json={"external_ids": list(external_ids)},
    )


# --- subscription -------------------------------------------------------------------------


def subscription() -> Call[Subscription]:
    return Call("GET", "/api/subscription", _model(Subscription))


def usage() -> Call[Usage]:
    return Call("GET", "/api/subscription/usage", _model(Usage))
