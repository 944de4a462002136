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
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
#: Attributes the access log adds to its records (`extra=`), copied into JSON lines.
EXTRA_FIELDS = ("method", "path", "status", "duration_ms")


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


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler()
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
