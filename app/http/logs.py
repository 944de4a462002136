r"""Logging with the request id on every line, as text or as JSON lines.

The id lives in a context variable set by the request middleware; a filter copies it onto each
record, so library loggers (SQLAlchemy, uvicorn) carry it too. With `PERSONAIZER_LOG_FORMAT=json`
each line is one JSON object (`time`, `level`, `logger`, `message`, `request_id`, and for the
access log `method`, `path`, `status`, `duration_ms`), for a log shipper to index.

A record is one line, whatever a client put in it: the access log writes the decoded path, so
`%0d%0a` in a URL would otherwise start a line of the client's choosing. Both formatters escape
what a log reader could take for a line end (every character `str.splitlines` splits on) and what
a terminal acts on (C0, DEL, C1): text lines as `\r`, `\x1b`, `\u2028`..., JSON lines as JSON
escapes. The formatter is on the one handler `configure` installs, so every logger gets it. A
traceback keeps its lines in text, each indented under its record so none passes for a record.

Warnings and errors limit their own repeats (`RepeatFilter`, on that same handler, so on every
logger): a dependency that is down makes every request meet the same failure, and one line per
request (hundreds a second) drowns the log and costs the disk. The same logger, level and message
(its template, before the arguments) passes at most once per `REPEAT_WINDOW_S`; the next one to
pass says how many were held back in between.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
#: Attributes the access log adds to its records (`extra=`), copied into JSON lines.
EXTRA_FIELDS = ("method", "path", "status", "duration_ms")


#: Seconds within which a repeated warning (same logger, level and message) is logged once.
REPEAT_WINDOW_S = 10.0


#: C0 controls (line feed, carriage return, escape...), DEL, C1 controls (NEL...), and the Unicode
#: line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: JSON escapes for what `json.dumps(ensure_ascii=False)` leaves raw (it escapes C0 itself).
_JSON_RAW = {c: f"\\u{c:04x}" for c in (*range(0x7F, 0xA0), 0x2028, 0x2029)}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    r"""`text` on one line, its control characters written out (`\n`, `\x1b`, `\u2028`)."""
    return _CONTROL.sub(_escape_char, text)


class TextFormatter(logging.Formatter):
    """`FORMAT`, one line a record: control characters escaped; an exception's traceback on the
    lines below, indented."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = escape(self.formatMessage(record))
        # Not `record.exc_text`, which `logging` caches on the record for every handler.
        if record.exc_info:
            text += _indented(self.formatException(record.exc_info))
        if record.stack_info:
            text += _indented(self.formatStack(record.stack_info))
        return text


def _indented(block: str) -> str:
    return "".join(f"\n    {escape(line)}" for line in block.split("\n"))


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str).translate(_JSON_RAW)


class RepeatLimiter:
    """Lets each key through at most once per `every_s` seconds and counts what it holds back.
    `clock` (monotonic seconds) is the tests' to turn."""

    #: Keys remembered at most: a message template is a constant of the code, so there are
    #: few; the bound only keeps a bug (a formatted message as the key) from growing it.
    MAX_KEYS = 1024

    def __init__(
        self, *, every_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s = every_s
        self.clock = clock
        #: key -> (when it last passed, how many were held back since)
        self._seen: dict[Hashable, tuple[float, int]] = {}
        # Records are logged from worker threads too (the embedder, aiosqlite).
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """Whether `key` may pass now, and (when it may) how many were held back before it."""
        now = self.clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.every_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False, 0
            if last is None and len(self._seen) >= self.MAX_KEYS:
                self._seen.clear()
            self._seen[key] = (now, 0)
            return True, last[1] if last is not None else 0


class RepeatFilter(logging.Filter):
    """Warnings and errors: the same logger, level and message (template) once per window; the
    next to pass ends with how many were suppressed. Lower levels (the access log) pass as
    they are. A traceback's exception type is part of the key, so a second, different failure
    under the same message is not hidden behind the first."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or RepeatLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = record.exc_info[0] if record.exc_info else None
        allowed, suppressed = self.limiter.allow((record.name, record.levelno, record.msg, kind))
        if allowed and suppressed:
            record.msg = (
                f"{record.getMessage()} ({suppressed} more like this suppressed since the last)"
            )
            record.args = None
        return allowed


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RepeatFilter())
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The MCP SDK logs "Terminating session: None" at INFO for every stateless request; the
    # access log already has one line per request.
    logging.getLogger("mcp.server.streamable_http").setLevel(max(root.level, logging.WARNING))
