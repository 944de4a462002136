"""What `Client` and `AsyncClient` share: configuration, headers, the retry loop, and the one
list of operations (the builders of `app.client.calls`, made methods by `app.client.methods`).

The retry loop is written once, without I/O (`_exchange`): it yields what to do next (wait this
long, then send this request) and is sent back what happened (the response, or the transport
error). Each client only carries that out, blocking or awaiting (its `_drive`)."""

from __future__ import annotations

import secrets
from collections.abc import Generator
from typing import Any, Generic, TypeVar

import httpx

from app.client import calls
from app.client.calls import Call, Program
from app.client.errors import ApiError, ConnectionFailed, RequestTimeout, TransportError
from app.client.methods import Dresser, Listing, Operation, dress
from app.client.retry import OnRetry, RetryEvent, RetryPolicy, retry_after
from app.client.tokens import mint_token

T = TypeVar("T")
#: The transport a client may be given (`httpx.BaseTransport` or `httpx.AsyncBaseTransport`).
Tr = TypeVar("Tr")
#: The httpx client underneath.
H = TypeVar("H", bound=httpx.Client | httpx.AsyncClient)

USER_AGENT = "personaizer-client/1"

#: What happened to a request: its answer, or no answer.
Outcome = httpx.Response | httpx.TransportError
#: The I/O-free side of a call: yields (seconds to wait first, request to send), is sent the
#: `Outcome`, returns the result.
Exchange = Generator[tuple[float, httpx.Request], Outcome, T]


class ClientBase(Generic[Tr, H]):
    def __init_subclass__(
        cls, *, method: Dresser | None = None, iterator: Dresser | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        # `Client` and `AsyncClient` say how they make their methods; a subclass of theirs
        # inherits those methods as they are.
        if method is not None and iterator is not None:
            dress(cls, method=method, iterator=iterator)

    #: Mint a tenant token offline (`app.client.tokens.mint_token`): `Client.mint_token(
    #: key=..., signing_secret=..., expires_in=3600, sub=..., persona_ids=[...])`.
    mint_token = staticmethod(mint_token)

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
        transport: Tr | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.policy = RetryPolicy(max_retries=max_retries, max_wait=max_wait)
        self.on_retry = on_retry
        self.headers = {"X-Api-Key": api_key, "User-Agent": USER_AGENT, **(headers or {})}
        self._http = self._connect(transport)

    # --- the operations: parameters and docstrings are in app.client.calls ------------------

    list_docs = Operation(calls.list_docs)
    iter_docs = Listing(calls.iter_docs)
    list_changes = Operation(calls.list_changes)
    iter_changes = Listing(calls.iter_changes)
    get_doc = Operation(calls.get_doc)
    upsert_doc = Operation(calls.upsert_doc)
    upsert_docs = Operation(calls.upsert_docs)
    upsert_docs_batched = Operation(calls.upsert_docs_batched)
    delete_doc = Operation(calls.delete_doc)
    search = Operation(calls.search)

    list_personas = Operation(calls.list_personas)
    iter_personas = Listing(calls.iter_personas)
    get_persona = Operation(calls.get_persona)
    create_persona = Operation(calls.create_persona)
    update_persona = Operation(calls.update_persona)
    delete_persona = Operation(calls.delete_persona)
    list_persona_knowledge = Operation(calls.list_persona_knowledge)
    iter_persona_knowledge = Listing(calls.iter_persona_knowledge)
    set_persona_knowledge = Operation(calls.set_persona_knowledge)

    subscription = Operation(calls.subscription)
    usage = Operation(calls.usage)

    # --- running them ---------------------------------------------------------------------

    def _connect(self, transport: Tr | None) -> H:
        """The httpx client the requests go through."""
        raise NotImplementedError

    def _exchange(self, call: Call[T]) -> Exchange[T]:
        """One call, retried as `RetryPolicy` allows."""
        # One request id for every attempt of a call, so the server's log ties replays together.
        request_id = f"pzc-{secrets.token_hex(8)}"
        wait, attempt = 0.0, 0
        while True:
            outcome = yield wait, self._build(call, request_id)
            if isinstance(outcome, httpx.TransportError):
                wait = self._failed(call, outcome, attempt)
            else:
                retry = self._wait_after(call, outcome, attempt)
                if retry is None:
                    return call.parse(outcome)
                wait = retry
            attempt += 1

    def _perform(self, work: Call[T] | Program[T]) -> Exchange[T]:
        """A call, or each call of a program in turn."""
        if isinstance(work, Call):
            return (yield from self._exchange(work))
        try:
            call = next(work)
            while True:
                call = work.send((yield from self._exchange(call)))
        except StopIteration as done:
            result: T = done.value
            return result

    def _build(self, call: Call[Any], request_id: str) -> httpx.Request:
        kwargs: dict[str, Any] = {"headers": {"X-Request-Id": request_id}}
        if call.params:
            kwargs["params"] = call.params
        if call.json is not None:
            kwargs["json"] = call.json
        return self._http.build_request(call.method, call.path, **kwargs)

    def _wait_after(self, call: Call[Any], response: httpx.Response, attempt: int) -> float | None:
        """None when the answer is a success; else the wait before retrying, or `ApiError`."""
        if response.status_code < 400:
            return None
        wait = self.policy.for_response(response, attempt)
        if wait is None:
            raise ApiError.from_response(response, retry_after(response))
        self._tell(
            RetryEvent(attempt + 1, wait, call.method, call.path, response.status_code, None)
        )
        return wait

    def _failed(self, call: Call[Any], error: httpx.TransportError, attempt: int) -> float:
        """The wait before replaying after a transport failure; raises when it must not be."""
        wait = self.policy.for_transport(error, attempt, idempotent=call.idempotent)
        if wait is None:
            raise self._transport_error(call, error) from error
        self._tell(RetryEvent(attempt + 1, wait, call.method, call.path, None, _reason(error)))
        return wait

    def _tell(self, event: RetryEvent) -> None:
        if self.on_retry is not None:
            self.on_retry(event)

    def _transport_error(self, call: Call[Any], error: httpx.TransportError) -> TransportError:
        if isinstance(error, httpx.TimeoutException) and not isinstance(
            error, httpx.ConnectTimeout
        ):
            return RequestTimeout(
                f"{call.method} {call.path}: no answer from {self.base_url} within "
                f"{self.timeout:g} s; the server may still be processing it",
                method=call.method,
                path=call.path,
            )
        return ConnectionFailed(
            f"cannot reach {self.base_url}: {_reason(error)}", method=call.method, path=call.path
        )


def _reason(error: httpx.TransportError) -> str:
    # httpx often carries an empty message ("cannot reach ...: " told a user nothing).
    text = str(error).strip()
    cause = error.__cause__ or error.__context__
    if not text and cause is not None:
        text = str(cause).strip()
    return text or error.__class__.__name__
