"""`Client`: the blocking client, on `httpx.Client`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from app.client import calls
from app.client.base import PAGE_SIZE, ClientBase
from app.client.batching import DEFAULT_BATCH_CHARS, BatchDone, merge, plan_batches
from app.client.calls import Call, DocItem
from app.client.models import (
    BatchResult,
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
from app.client.retry import OnRetry

T = TypeVar("T")


class Client(ClientBase):
    """The PersonAIzer v1 API, blocking. Use it as a context manager (or call `close()`).

    Errors come as `ApiError` (with `code`, `status`, `request_id`) or `TransportError`;
    429/503 are waited out as the server's `Retry-After` says, at most `max_retries` times."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        max_retries: int = 3,
        max_wait: float = 60.0,
        on_retry: OnRetry | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_wait=max_wait,
            on_retry=on_retry,
            headers=headers,
        )
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, call: Call[T]) -> T:
        """Send one call, retrying as `RetryPolicy` allows."""
        request_id = self._new_request_id()
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, **self._request(call, request_id)
                )
            except httpx.TransportError as exc:
                time.sleep(self._failed(call, exc, attempt))
            else:
                wait = self._wait_after(call, response, attempt)
                if wait is None:
                    return call.parse(response)
                time.sleep(wait)
            attempt += 1

    def _pages(self, first: Callable[[str | None], Call[Page[T]]]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self.run(first(cursor))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- knowledge --------------------------------------------------------------------------

    def list_docs(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        include_content: bool = False,
        updated_since: datetime | None = None,
    ) -> Page[Document]:
        return self.run(
            calls.list_docs(
                limit=limit,
                cursor=cursor,
                include_content=include_content,
                updated_since=updated_since,
            )
        )

    def iter_docs(
        self, *, include_content: bool = False, updated_since: datetime | None = None
    ) -> Iterator[Document]:
        """Every document, page after page, ordered by external_id."""
        return self._pages(
            lambda cursor: calls.list_docs(
                limit=PAGE_SIZE,
                cursor=cursor,
                include_content=include_content,
                updated_since=updated_since,
            )
        )

    def get_doc(self, external_id: str) -> Document:
        return self.run(calls.get_doc(external_id))

    def upsert_doc(
        self,
        external_id: str,
        *,
        content: str,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SingleUpsert:
        return self.run(
            calls.upsert_doc(external_id, content=content, title=title, metadata=metadata)
        )

    def upsert_docs(self, items: Sequence[DocItem]) -> BatchResult:
        """One batch request: all or nothing, at most the plan's `batch_items`."""
        return self.run(calls.upsert_docs(items))

    def upsert_docs_batched(
        self,
        items: Iterable[DocItem],
        *,
        batch_items: int | None = None,
        max_chars: int = DEFAULT_BATCH_CHARS,
        on_batch: Callable[[BatchDone], None] | None = None,
    ) -> BatchResult:
        """Upsert any number of documents in batches cut by count (`batch_items`, by default
        the plan's) and by size (`max_chars`). Each batch commits on its own: after a failure,
        the batches before it are stored, and running the same call again is safe (they are
        no_ops)."""
        if batch_items is None:
            batch_items = self.subscription().limits.batch_items
        done: list[BatchResult] = []
        docs = (calls.doc_input(i) for i in items)
        for index, batch in enumerate(
            plan_batches(docs, max_items=batch_items, max_chars=max_chars)
        ):
            started = time.monotonic()
            result = self.upsert_docs(batch)
            done.append(result)
            if on_batch is not None:
                on_batch(BatchDone(index, batch, result, time.monotonic() - started))
        return merge(done)

    def delete_doc(self, external_id: str) -> None:
        """Delete a document; no error when it is already gone."""
        self.run(calls.delete_doc(external_id))

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        mode: str = "hybrid",
        persona_id: str | None = None,
        external_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SearchResults:
        return self.run(
            calls.search(
                query,
                k=k,
                mode=mode,
                persona_id=persona_id,
                external_ids=external_ids,
                metadata=metadata,
            )
        )

    # --- personas ---------------------------------------------------------------------------

    def list_personas(self, *, limit: int = 50, cursor: str | None = None) -> Page[PersonaSummary]:
        return self.run(calls.list_personas(limit=limit, cursor=cursor))

    def iter_personas(self) -> Iterator[PersonaSummary]:
        """Every persona, page after page, in creation order."""
        return self._pages(lambda cursor: calls.list_personas(limit=PAGE_SIZE, cursor=cursor))

    def get_persona(self, persona_id: str) -> Persona:
        return self.run(calls.get_persona(persona_id))

    def create_persona(
        self,
        *,
        name: str,
        description: str = "",
        instructions: str = "",
        greeting: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Persona:
        return self.run(
            calls.create_persona(
                name=name,
                description=description,
                instructions=instructions,
                greeting=greeting,
                metadata=metadata,
            )
        )

    def update_persona(self, persona_id: str, **changes: Any) -> Persona:
        return self.run(calls.update_persona(persona_id, changes))

    def delete_persona(self, persona_id: str) -> None:
        self.run(calls.delete_persona(persona_id))

    def set_persona_knowledge(
        self, persona_id: str, external_ids: Sequence[str]
    ) -> PersonaKnowledge:
        return self.run(calls.set_persona_knowledge(persona_id, external_ids))

    # --- subscription -----------------------------------------------------------------------

    def subscription(self) -> Subscription:
        return self.run(calls.subscription())

    def usage(self) -> Usage:
        return self.run(calls.usage())
