"""What the client raises: every failure is a `ClientError`; an answer from the server that is
an error is an `ApiError` carrying the contract's problem details (API.md section 3)."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """Base of every error the client raises; its message is one line for a person."""


class ApiError(ClientError):
    """The server answered with an error (a problem+json body, or anything else >= 400).

    `code` is the contract's stable identifier (`knowledge.not_found`, `limits.rate_exceeded`,
    ...); `request_id` is the id the server logged the request under; `errors` lists the fields at
    fault; `retry_after` is the server's `Retry-After` in seconds, when it sent one."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        title: str,
        detail: str,
        request_id: str | None,
        method: str,
        path: str,
        errors: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.method = method
        self.path = path
        self.errors = errors or []
        self.body = body or {}
        self.retry_after = retry_after
        where = (
            f" at {self.errors[0]['pointer']}"
            if self.errors and "pointer" in self.errors[0]
            else ""
        )
        super().__init__(
            f"{method} {path} -> {status} {code}: {detail}{where}"
            + (f" (request {request_id})" if request_id else "")
        )

    @classmethod
    def from_response(cls, response: httpx.Response, retry_after: float | None) -> ApiError:
        request = response.request
        body: dict[str, Any] = {}
        try:
            parsed = response.json()
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            pass
        # A proxy in front of the server may answer with HTML: keep a short, honest detail.
        detail = str(body.get("detail") or response.text[:200].strip() or response.reason_phrase)
        errors = body.get("errors")
        return cls(
            status=response.status_code,
            code=str(body.get("code") or f"http.{response.status_code}"),
            title=str(body.get("title") or response.reason_phrase),
            detail=" ".join(detail.split()),
            request_id=body.get("request_id") or response.headers.get("x-request-id"),
            method=request.method,
            path=request.url.path,
            errors=errors if isinstance(errors, list) else None,
            body=body,
            retry_after=retry_after,
        )


class TransportError(ClientError):
    """No answer: the server could not be reached, or the connection broke or timed out."""

    def __init__(self, message: str, *, method: str, path: str) -> None:
        self.method = method
        self.path = path
        super().__init__(message)


class ConnectionFailed(TransportError):
    """The server could not be reached (refused, unknown host, broken connection)."""


class RequestTimeout(TransportError):
    """The server did not answer in time. It may still be working on the request: an upsert
    that timed out may well have been committed (replaying it is safe; it is then a no_op)."""
