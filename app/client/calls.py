"""The v1 operations as data: what to send and how to read the answer.

Both clients (`Client`, `AsyncClient`) run these same `Call`s, so the two cannot drift: they
differ only in how they wait (blocking or awaiting)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from app.client.models import (
    BatchResult,
    DocInput,
    Document,
    Page,
    Persona,
    PersonaKnowledge,
    PersonaSummary,
    SearchResults,
    SingleUpsert,
    Subscription,
    Usage,
)

T = TypeVar("T")


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
) -> Call[Page[Document]]:
    params = _page_params(limit, cursor)
    if include_content:
        params["include_content"] = "true"
    if updated_since is not None:
        params["updated_since"] = _time(updated_since)
    return Call("GET", "/api/knowledge/docs", _model(Page[Document]), params=params)


def get_doc(external_id: str) -> Call[Document]:
    return Call("GET", f"/api/knowledge/docs/by-external-id/{_id(external_id)}", _model(Document))


def upsert_docs(items: Sequence[DocItem]) -> Call[BatchResult]:
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


def delete_doc(external_id: str) -> Call[None]:
    return Call("DELETE", f"/api/knowledge/docs/by-external-id/{_id(external_id)}", _none)


def search(
    query: str,
    *,
    k: int = 5,
    mode: str = "hybrid",
    persona_id: str | None = None,
    external_ids: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Call[SearchResults]:
    body: dict[str, Any] = {"query": query, "k": k, "mode": mode}
    if persona_id is not None:
        body["persona_id"] = persona_id
    if external_ids is not None:
        body["external_ids"] = list(external_ids)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    # A POST, but it only reads: safe to replay.
    return Call("POST", "/api/knowledge/search", _model(SearchResults), json=body)


# --- personas -----------------------------------------------------------------------------


def list_personas(*, limit: int = 50, cursor: str | None = None) -> Call[Page[PersonaSummary]]:
    return Call(
        "GET", "/api/personas", _model(Page[PersonaSummary]), params=_page_params(limit, cursor)
    )


def get_persona(persona_id: str) -> Call[Persona]:
    return Call("GET", f"/api/personas/{_id(persona_id)}", _model(Persona))


def create_persona(
    *,
    name: str,
    description: str = "",
    instructions: str = "",
    greeting: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Call[Persona]:
    body = {
        "name": name,
        "description": description,
        "instructions": instructions,
        "greeting": greeting,
        "metadata": dict(metadata or {}),
    }
    # Not idempotent: a replay after a lost answer would make a second persona.
    return Call("POST", "/api/personas", _model(Persona), json=body, idempotent=False)


def update_persona(persona_id: str, changes: Mapping[str, Any]) -> Call[Persona]:
    """A partial update: only the fields in `changes` are sent, so only they change."""
    return Call("PATCH", f"/api/personas/{_id(persona_id)}", _model(Persona), json=dict(changes))


def delete_persona(persona_id: str) -> Call[None]:
    return Call("DELETE", f"/api/personas/{_id(persona_id)}", _none)


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
