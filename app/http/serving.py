"""How `personaizer serve` runs uvicorn: bounds on what a slow or greedy client can hold.

- Idle connections are closed after `keep_alive_timeout_s`, before their first request too
  (uvicorn arms its keep-alive timer only after a response, so a connection that never sent a
  byte stayed open for ever).
- A request must arrive whole (request line, headers and body) within `request_read_timeout_s`
  of its first byte. uvicorn has no such deadline: a client trickling a byte every few seconds
  kept a connection (and, once its headers were in, a task) for as long as it liked. Past the
  deadline the connection is closed, after a 408 `request.timeout` when the headers were not
  complete (while the app reads a body, the response is the app's, so only the close remains).
- A response must be taken: while the client leaves part of it in the server's buffer (its
  socket's buffers full), each `response_write_timeout_s` must see some of it go, or the
  connection is dropped, buffer and all (a close would wait to flush it for ever). Like nginx's
  `send_timeout`, this bounds the pauses, not the whole response, which may be large and slow.
  uvicorn has no such deadline: a client that never read held its connection, a task blocked on
  the full buffer, and a place among `max_connections`, for as long as it liked. The deadline is
  `request_read_timeout_s`: a client has as long to take each part of its answer as to send
  its request.
- Beyond `max_connections` open connections or requests in flight, a request is answered 503
  `server.unavailable` as problem+json with `Retry-After` (uvicorn's own limit answers plain
  text) and its connection is closed.
- A request line and headers over 16 KiB (`MAX_HEAD_BYTES`: checked as bytes arrive, so a header
  line that never ends is refused as it passes the bound), an HTTP/1.1 request without Host,
  and whatever else the parser refuses are answered 400 `request.malformed` as problem+json
  (uvicorn answers plain text) and the connection is closed, before the app sees them.
- uvicorn's proxy-header rewriting is off: who the client is behind proxies is decided in one
  place, the app (app/http/proxies.py with `PERSONAIZER_TRUSTED_PROXIES`).

HTTP is parsed by httptools (llhttp, in C): h11, in pure Python, cost ~0.2-0.3 ms more per
request. llhttp is also the stricter of the two (folded header lines, and Content-Length beside
Transfer-Encoding, are refused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.errors import AppError, MalformedRequest, RequestTimeout, Unavailable
from app.http.middleware import request_id_from
from app.http.problems import PROBLEM_JSON, instance_of, problem_body
from app.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait when the server is at its connection limit.
OVERLOADED_RETRY_AFTER_S = 1
#: The most a request line and its headers may hold (h11's default bound, which served here
#: before): past it, 400 and the connection closed.
MAX_HEAD_BYTES = 16 * 1024


class ServeConfig(Config):
    """uvicorn's configuration from the settings, with what `DeadlineHttpProtocol` reads."""

    def __init__(self, app: ASGIApp | str, settings: Settings, **overrides: Any) -> None:
        self.request_read_timeout = settings.request_read_timeout_s
        # The same bound both ways (see the module's docstring).
        self.response_write_timeout = settings.request_read_timeout_s
        self.max_connections = settings.max_connections
        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "http": DeadlineHttpProtocol,
            # The stdlib loop whatever else is installed (uvicorn's "auto" picks uvloop when a
            # package such as chromadb brings it in): what is tested is what runs.
            "loop": "asyncio",
            "timeout_keep_alive": settings.keep_alive_timeout_s,
            "proxy_headers": False,
            "server_header": False,
            "log_config": None,
            "access_log": False,
            "lifespan": "on",
            **overrides,
        }
        super().__init__(app, **options)


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C: ~0.2-0.3 ms less per request than h11's
    pure-Python parser, measured on a search) with a read deadline per request, a bound on the
    request head, and problem+json for what it refuses and for the overload."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.read_timeout: float = getattr(config, "request_read_timeout", 30.0)
        self.max_connections: int | None = getattr(config, "max_connections", None)
        self.read_deadline: asyncio.TimerHandle | None = None
        self.write_timeout: float = getattr(config, "response_write_timeout", 30.0)
        self.write_deadline: asyncio.TimerHandle | None = None
        #: Bytes waiting in the transport's buffer when the write deadline was armed.
        self._write_backlog = 0
        self._app = self.app
        #: A request has begun to arrive (any byte, even one the parser skips) and is not whole.
        self._reading = False
        #: Its request line and headers are whole; bytes of them so far.
        self._head_done = False
        self._head_bytes = 0
        #: Bytes received while the head is not whole (the parser reports a header only once
        #: its line ends, so `_head_bytes` alone would let a line that never ends grow).
        self._unfinished_head_bytes = 0
        #: The request began inside the bytes being parsed, after the one before it.
        self._began_mid_chunk = False
        #: Why the request is refused, when it is this protocol that refuses it.
        self._refusal: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        self._cancel_write_deadline()
        super().connection_lost(exc)

    # Flow control (the transport calls these as its write buffer passes its high and low marks).

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def resume_writing(self) -> None:
        super().resume_writing()
        # The client took enough to drain the buffer below its low mark: a fresh deadline for
        # what is left, if anything.
        self._cancel_write_deadline()
        self._watch_writes()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The whole response is written, not yet sent: the connection is not free until it is,
        # and a close (keep-alive over, or `Connection: close`) waits for it.
        self._watch_writes()

    def data_received(self, data: bytes) -> None:
        if data and not self._reading:
            self._begin_reading()
        self._began_mid_chunk = False
        super().data_received(data)
        if self._reading and not self._head_done and not self.transport.is_closing():
            self._count_unfinished_head(len(data))
        if not self._reading or self.transport.is_closing():
            self._cancel_read_deadline()

    # Parser callbacks (llhttp calls them from `feed_data`, inside `data_received`).

    def on_message_begin(self) -> None:
        if not self._reading:  # a pipelined request, in the same bytes as the one before
            self._begin_reading()
            self._began_mid_chunk = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.parser.get_http_version() == "1.1" and not any(
            name == b"host" for name, _ in self.headers
        ):
            # RFC 9112 3.2 (and h11, which served here before): 400 and closed.
            self._refuse("An HTTP/1.1 request needs a Host header.")
        # Only now: `send_400_response` reads it as "this request went to the app".
        self._head_done = True
        over = self.max_connections is not None and (
            len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections
        )
        if over:
            log.warning("at the connection limit (%s): answering 503", self.max_connections)
        self.app = overloaded if over else self._app
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading = False
        self._cancel_read_deadline()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """What the parser refuses (uvicorn answers it in plain text): problem+json, closed."""
        detail = self._refusal or "The request is not valid HTTP/1.1."
        self._refusal = None
        # A body that breaks its framing after the app has begun its answer: only the close.
        if not self._head_done or self.cycle is None or not self.cycle.response_started:
            self.transport.write(_raw_problem(MalformedRequest(detail)))
        self.transport.close()

    def _refuse(self, detail: str) -> None:
        """Stop parsing this request: `send_400_response` answers with `detail`."""
        self._refusal = detail
        raise ValueError(detail)

    def _begin_reading(self) -> None:
        self._reading = True
        self._head_done = False
        self._head_bytes = 0
        self._unfinished_head_bytes = 0
        if self.read_deadline is None:
            self.read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _count_head(self, size: int) -> None:
        """h11's bound on a request's head: past it, the parser's error path answers 400 and
        closes, instead of holding an ever longer header list."""
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(f"The request line and headers are over {MAX_HEAD_BYTES} bytes.")

    def _count_unfinished_head(self, size: int) -> None:
        """The bound as bytes arrive: `size` more bytes came and the head is still not whole.
        llhttp keeps a header name or value that has no line end yet in a buffer that grows with
        every byte; past the bound the same 400 as a complete head over it, and the close.

        Every byte of a chunk that began this request, or that came while its head was unfinished,
        belongs to the head. A pipelined request that began inside a chunk, after the one before
        it, is counted from the next chunk: at most one read's worth more is held."""
        if self._began_mid_chunk:
            return
        self._unfinished_head_bytes += size
        if self._unfinished_head_bytes > MAX_HEAD_BYTES:
            self._refusal = f"The request line and headers are over {MAX_HEAD_BYTES} bytes."
            self.send_400_response(self._refusal)

    def _cancel_read_deadline(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _watch_writes(self) -> None:
        """Arm the write deadline, unless it is armed or nothing waits to be sent."""
        if self.write_deadline is not None or self.transport.get_write_buffer_size() == 0:
            return
        self._write_backlog = self.transport.get_write_buffer_size()
        self.write_deadline = self.loop.call_later(self.write_timeout, self._write_timed_out)

    def _cancel_write_deadline(self) -> None:
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def _write_timed_out(self) -> None:
        self.write_deadline = None
        waiting = self.transport.get_write_buffer_size()
        if waiting < self._write_backlog:  # some went (or all): watch what is left
            self._watch_writes()
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info(
            "dropping the connection of %s: it took no part of its response for %ss",
            client,
            self.write_timeout,
        )
        # Not `close`, which would wait to send the buffer first.
        self.transport.abort()

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        if self.transport.is_closing() or not self._reading:
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info(
            "closing the connection of %s: its request took over %ss", client, self.read_timeout
        )
        if not self._head_done and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_raw_problem(RequestTimeout()))
        self.transport.close()


def _raw_problem(exc: AppError) -> bytes:
    """A complete HTTP/1.1 problem+json response, for when there is no request to answer."""
    rid = uuid.uuid4().hex
    body = problem_body(exc, instance="")
    del body["instance"]  # there is no request target to name
    body["request_id"] = rid
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {exc.status} {exc.title}\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"X-Request-Id: {rid}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


async def overloaded(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer past the connection limit, without entering the app."""
    rid = request_id_from(scope)
    exc = Unavailable("The server is at its connection limit; retry shortly.")
    body = problem_body(exc, instance=instance_of(scope["path"], scope.get("raw_path")))
    body["request_id"] = rid
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"retry-after", str(OVERLOADED_RETRY_AFTER_S).encode()),
                (b"x-request-id", rid.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
