"""When the client tries again, and how long it waits first.

- 429 `limits.rate_exceeded` and 503 `server.unavailable`: the server did no work, so any request
  may be sent again, after the server's `Retry-After` (never sooner). A wait longer than
  `max_wait` is not worth blocking on: the `ApiError` is raised at once, carrying `retry_after`.
- No connection at all (refused, DNS): nothing was sent, so any request may be sent again.
- A connection lost after sending (the server restarted, a proxy dropped it): only idempotent
  calls are replayed. For an upsert that is safe by contract: if the first attempt was committed,
  the replay is a `no_op`.
- A timeout is not retried: the server is most likely still working on the request, and a
  replay would queue behind it. `RequestTimeout` says so; calling again later is safe.

Every retry is bounded by `max_retries`; between transport retries the wait doubles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Told to `on_retry` before each wait: what failed and how long the client now waits."""

    attempt: int
    delay: float
    method: str
    path: str
    status: int | None
    error: str | None


OnRetry = Callable[[RetryEvent], None]


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), or None when absent or bad."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    seconds: float = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    #: The longest Retry-After worth waiting for, in seconds.
    max_wait: float = 60.0
    #: The first wait after a transport failure; doubled on each further one.
    backoff: float = 0.5

    def for_response(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying again after this answer, or None to give up."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        wait = retry_after(response)
        wait = 1.0 if wait is None else wait
        return wait if wait <= self.max_wait else None

    def for_transport(
        self, error: httpx.TransportError, attempt: int, *, idempotent: bool
    ) -> float | None:
        unsent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
        if attempt >= self.max_retries or (
            isinstance(error, httpx.TimeoutException) and not unsent
        ):
            return None
        if not idempotent and not unsent:
            return None  # the request may have been acted on: never replay a create
        return min(self.backoff * 2.0**attempt, self.max_wait)
