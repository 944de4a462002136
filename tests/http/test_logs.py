"""Log lines cannot be forged: whatever a client puts in a logged field (a path with an encoded
line break, an escape sequence for the terminal) stays inside its own line, in text and in JSON.

The formatters are the ones `logs.configure` installs, on real records through a real handler;
tests/http/test_serving.py::test_access_log_lines_cannot_be_forged checks a served request."""

from __future__ import annotations

import io
import json
import logging
import re

from app.http.logs import (
    JsonFormatter,
    RepeatFilter,
    RepeatLimiter,
    RequestIdFilter,
    TextFormatter,
)

#: Every character str.splitlines() (and so many a log reader) takes for a line end, and more
#: control characters a terminal acts on.
HOSTILE = "a\r\nb\nc\rd\x0be\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l\x1b[31mm\x00n\x7fo\x9bp\tq"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|ERROR) \[")


def emit(formatter: logging.Formatter, *, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.http.test_logs")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError(f"bad {HOSTILE}")
            except ValueError:
                logger.exception("failed on %s", HOSTILE)
        else:
            logger.warning("GET %s %d", "/x" + HOSTILE, 404)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_text_lines_escape_control_characters() -> None:
    out = emit(TextFormatter())
    lines = out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        r"GET /xa\r\nb\nc\rd\x0be\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l\x1b[31mm\x00n\x7fo"
        r"\x9bp\tq 404"
    )


def test_a_traceback_stays_under_its_record() -> None:
    """A traceback spans lines, but every line after the record's first is indented, and
    the exception's message is escaped like the record's: no line of it can pass for a record."""
    out = emit(TextFormatter(), exc=True)
    first, *rest = out.splitlines()
    assert LINE_START.match(first), first
    assert first.endswith(
        r"failed on a\r\nb\nc\rd\x0be\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l\x1b[31mm\x00n\x7fo"
        r"\x9bp\tq"
    )
    assert rest and all(line.startswith("    ") for line in rest), rest
    assert rest[0] == "    Traceback (most recent call last):"
    # A line feed in the exception's message cannot be told from the traceback's own: it
    # breaks the line, but what follows is indented like the rest.
    assert "    ValueError: bad a\\r" in rest


def test_json_lines_escape_every_line_break() -> None:
    for exc in (False, True):
        out = emit(JsonFormatter(), exc=exc)
        lines = out.splitlines()
        assert len(lines) == 1, lines
        line = json.loads(lines[0])
        assert HOSTILE in line["message"]
        assert not exc or HOSTILE in line["exception"]


def test_a_repeated_warning_is_logged_once_per_window_with_a_count() -> None:
    """The same logger, level and message (whatever its arguments) passes once per window;
    the first after the window says how many were held back. Other messages, and INFO lines
    (the access log), pass as they are."""
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatFilter(RepeatLimiter(every_s=10, clock=lambda: now[0])))
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("tests.http.test_logs.repeats")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(100):
            logger.warning("database unavailable: %s", f"refused {i}")
            logger.info("GET /api %d", i)
        logger.warning("something else")
        logger.error("database unavailable: %s", "an error is its own key")
        now[0] = 10.0
        logger.warning("database unavailable: %s", "still refused")
        logger.warning("database unavailable: %s", "and again")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    warnings = [line.split(": ", 1)[1] for line in lines if " INFO " not in line]
    assert warnings == [
        "database unavailable: refused 0",
        "something else",
        "database unavailable: an error is its own key",
        "database unavailable: still refused (99 more like this suppressed since the last)",
    ]
    assert sum(" INFO " in line for line in lines) == 100
