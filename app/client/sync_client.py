"""`Client`: the blocking client, on `httpx.Client`.

Its operations are listed once, in `ClientBase`; `_method` and `_iterator` make them methods of
this client. Their parameters and docstrings are written in `app.client.calls`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar

import httpx

from app.client.base import ClientBase, Exchange, Outcome
from app.client.calls import Call, Pages, Program
from app.client.methods import dressed
from app.client.models import Page

T = TypeVar("T")
P = ParamSpec("P")


def _method(build: Callable[P, Call[T] | Program[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._drive(self._perform(build(*args, **kwargs)))

    return dressed(method, build)


def _iterator(build: Callable[P, Pages[T]]) -> Callable[Concatenate[Client, P], Iterator[T]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._pages(build(*args, **kwargs))

    return dressed(method, build, iterator=Iterator)


class Client(ClientBase[httpx.BaseTransport, httpx.Client], method=_method, iterator=_iterator):
    """The PersonAIzer v1 API, blocking. Use it as a context manager (or call `close()`).

    Errors come as `ApiError` (with `code`, `status`, `request_id`) or `TransportError`;
    429/503 are waited out as the server's `Retry-After` says, at most `max_retries` times."""

    def _connect(self, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
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
        return self._drive(self._exchange(call))

    def _drive(self, exchange: Exchange[T]) -> T:
        """Wait and send as `exchange` asks, until it has its result."""
        try:
            wait, request = next(exchange)
            while True:
                if wait:
                    time.sleep(wait)
                try:
                    outcome: Outcome = self._http.send(request)
                except httpx.TransportError as exc:
                    outcome = exc
                wait, request = exchange.send(outcome)
        except StopIteration as done:
            result: T = done.value
            return result

    def _pages(self, pages: Pages[T]) -> Iterator[T]:
        call: Call[Page[T]] | None = pages.first
        while call is not None:
            page = self.run(call)
            yield from page.items
            call = pages.after(page)
