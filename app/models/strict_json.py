"""The JSON the API reads: strict, bounded, and checked before it is parsed.

Every door parses request bodies with `loads` (app/http/intake.py), and the services parse their
own cursors with it, so one text gets one answer wherever it arrives:

- UTF-8, strictly, else `MalformedJson`;
- shape, read from the raw bytes before anything is parsed: nesting depth (400, a parser limit as
  RFC 8259 section 9 allows), how many values and how many arrays the text holds (`TooLarge`:
  those, not the byte count, decide what parsing costs);
- JSON syntax, with numbers that are finite and strings that are Unicode (no lone UTF-16
  surrogate such as `"\\ud800"`: SQLite, the model and every JSON encoder would fail on it later).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from app.errors import MalformedJson, TooLarge

#: Deepest nesting of arrays and objects in a body. The deepest useful body is a GraphQL batch
#: upsert (`variables.items[i].metadata` is 4 deep) with metadata at its own bound
#: (`app.models.base.METADATA_MAX_DEPTH`); Python's parser would fail near 1000.
MAX_DEPTH = 64

#: JSON values (objects, arrays, strings, numbers, literals) in one body. Parsing makes one Python
#: object per value; a million is a few hundred milliseconds of parsing, and ten times any real
#: request (a batch of 500 documents with their metadata).
MAX_VALUES = 1_000_000

#: Arrays in one body. An array is the costliest value to parse (it is made without calling back
#: into Python, so the event loop waits for all of them at once), and real requests hold a few.
MAX_ARRAYS = 100_000

_QUOTE, _BACKSLASH = 0x22, 0x5C

# numpy holds the interpreter while it runs (running sums, lookups): a megabyte at a time keeps
# each hold to a few milliseconds, so the event loop gets its turn between them.
_CHUNK = 1 << 20

_IS_MARK = np.zeros(256, dtype=np.bool_)

_IS_MARK[list(b"[]{},")] = True

_STEPS = np.zeros(256, dtype=np.int8)

_STEPS[list(b"[{")] = 1

_STEPS[list(b"]}")] = -1

# An escape that may be half of a UTF-16 surrogate pair: only then can a lone one be inside.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(raw: bytes | str, *, max_values: int = MAX_VALUES, max_arrays: int = MAX_ARRAYS) -> Any:
    """Parse a JSON text within the bounds above; `MalformedJson` or `TooLarge` when outside."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MalformedJson("The JSON text is not Unicode.") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"The body is not UTF-8 (byte {exc.start} is not valid).") from exc
    _check_shape(raw, max_values=max_values, max_arrays=max_arrays)
    try:
        data = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            # Python callbacks per object and number: each is a point where the event loop's
            # thread can take its turn while a large body is parsed in a worker.
            parse_int=_int,
            object_pairs_hook=_object,
        )
    except ValueError as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}.") from exc
    if _SURROGATE_ESCAPE.search(raw):
        _check_unicode(data)
    return data


def _check_shape(raw: bytes, *, max_values: int, max_arrays: int) -> None:
    # Counted with the strings' bytes too, the marks bound the real counts from above: a body
    # within every bound so (nearly all of them) is within the bounds for certain, and skips
    # the exact count (~25 us of numpy calls even for a search's 100-byte body).
    arrays = raw.count(b"[")
    opens = arrays + raw.count(b"{")
    if opens <= MAX_DEPTH and arrays <= max_arrays and raw.count(b",") + opens + 1 <= max_values:
        return
    kinds = _structure(raw)
    depth = deepest = 0
    for start in range(0, kinds.size, _CHUNK):
        running = np.cumsum(_STEPS[kinds[start : start + _CHUNK]], dtype=np.int64) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    if deepest > MAX_DEPTH:
        raise MalformedJson(
            f"The body nests arrays and objects {deepest} deep; the limit is {MAX_DEPTH}."
        )
    arrays = int(np.count_nonzero(kinds == ord("[")))
    if arrays > max_arrays:
        raise TooLarge(f"The body holds {arrays} arrays; the limit is {max_arrays}.")
    # Every value but the first follows a comma or opens its container: an upper bound.
    values = int(np.count_nonzero(kinds == ord(","))) + arrays + 1
    values += int(np.count_nonzero(kinds == ord("{")))
    if values > max_values:
        raise TooLarge(f"The body holds about {values} JSON values; the limit is {max_values}.")


def _structure(raw: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The structural bytes (`[ ] { } ,`) of a JSON text that lie outside its strings, in order.

    Vectorised, so that sizing up a 10 MB body costs milliseconds: a quote opens or closes a
    string unless an odd run of backslashes precedes it, and a byte is outside every string when
    an even number of such quotes comes before it. (UTF-8 never puts a quote or a backslash byte
    inside a multi-byte character, so this is exact on the raw bytes.)"""
    data = np.frombuffer(raw, dtype=np.uint8)
    slashes = np.flatnonzero(data == _BACKSLASH)
    escaped = slashes[:0]
    if slashes.size:
        gaps = np.diff(slashes) != 1
        first = slashes[np.concatenate(([True], gaps))]
        last = slashes[np.concatenate((gaps, [True]))]
        escaped = last[(last - first) % 2 == 0] + 1  # after an odd run of backslashes
    pieces = []
    carry = 0  # quotes before this block, mod 256 (uint8 wraps, which keeps the parity)
    for start in range(0, data.size, _CHUNK):
        block = data[start : start + _CHUNK]
        quotes = block == _QUOTE
        lo, hi = np.searchsorted(escaped, (start, start + block.size))
        quotes[escaped[lo:hi] - start] = False
        seen = np.cumsum(quotes, dtype=np.uint8)
        seen += carry
        carry = int(seen[-1])
        pieces.append(block[_IS_MARK[block] & (seen & 1 == 0)])
    marks: np.ndarray[Any, np.dtype[np.uint8]] = np.concatenate(pieces) if pieces else data[:0]
    return marks


def _check_unicode(data: Any) -> None:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedJson(
            "A string in the body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
            "that is not half of a pair), which is not Unicode."
        ) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is outside the range of a 64-bit float")
    return value


def _int(text: str) -> int:
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(pairs)
