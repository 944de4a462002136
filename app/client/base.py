"""What `Client` and `AsyncClient` share: configuration, headers, and turning answers and
transport failures into results, retries or exceptions."""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

import httpx

from app.client.calls import Call
from app.client.errors import ApiError, ConnectionFailed, RequestTimeout, TransportError
from app.client.retry import OnRetry, RetryEvent, RetryPolicy, retry_after

T = TypeVar("T")

USER_AGENT = "personaizer-client/1"
#: Page size of the list iterators: the contract's largest.
PAGE_SIZE = 200


class ClientBase:
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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.policy = RetryPolicy(max_retries=max_retries, max_wait=max_wait)
        self.on_retry = on_retry
        self.headers = {"X-Api-Key": api_key, "User-Agent": USER_AGENT, **(headers or {})}

    def _request(self, call: Call[Any], request_id: str) -> dict[str, Any]:
        # One request id for every attempt of a call, so the server's log ties replays together.
        kwargs: dict[str, Any] = {"headers": {"X-Request-Id": request_id}}
        if call.params:
            kwargs["params"] = call.params
        if call.json is not None:
            kwargs["json"] = call.json
        return kwargs

    @staticmethod
    def _new_request_id() -> str:
        return f"pzc-{secrets.token_hex(8)}"

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
