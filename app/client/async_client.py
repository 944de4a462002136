"""`AsyncClient`: the asyncio client, on `httpx.AsyncClient`.

Its operations are listed once, in `ClientBase`; `_method` and `_iterator` make them methods of
this client. Their parameters and docstrings are written in `app.client.calls`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from app.client.base import ClientBase, Exchange, Outcome
from app.client.calls import Call, Pages, Program
from app.client.methods import dressed
from app.client.models import Page

T = TypeVar("T")
P = ParamSpec("P")


def _method(
    build: Callable[P, Call[T] | Program[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._drive(self._perform(build(*args, **kwargs)))

    return dressed(method, build)


def _iterator(
    build: Callable[P, Pages[T]],
) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._pages(build(*args, **kwargs))

    return dressed(method, build, iterator=AsyncIterator)


class AsyncClient(
    ClientBase[httpx.AsyncBaseTransport, httpx.AsyncClient], method=_method, iterator=_iterator
):
    """The PersonAIzer v1 API for asyncio. Use it as `async with` (or await `aclose()`).

    Errors come as `ApiError` (with `code`, `status`, `request_id`) or `TransportError`;
    429/503 are waited out as the server's `Retry-After` says, at most `max_retries` times."""

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, call: Call[T]) -> T:
        """Send one call, retrying as `RetryPolicy` allows."""
        return await self._drive(self._exchange(call))

    async def _drive(self, exchange: Exchange[T]) -> T:
        """Wait and send as `exchange` asks, until it has its result."""
        try:
            wait, request = next(exchange)
            while True:
                if wait:
                    await asyncio.sleep(wait)
                try:
                    outcome: Outcome = await self._http.send(request)
                except httpx.TransportError as exc:
                    outcome = exc
                wait, request = exchange.send(outcome)
        except StopIteration as done:
            result: T = done.value
            return result

    async def _pages(self, pages: Pages[T]) -> AsyncIterator[T]:
        call: Call[Page[T]] | None = pages.first
        while call is not None:
            page = await self.run(call)
            for item in page.items:
                yield item
            call = pages.after(page)
