"""When two JSON values are equal: the one definition behind every decision that compares
metadata, the upsert planner's `no_op` (app/services/upsert_plan.py) and the search's metadata
filter on both engines (app/storage/index/).

JSON Schema's instance equality (draft 2020-12, section 4.2.2), not Python's `==` (for which
`1 == True == 1.0`):

- the types are told apart: `true` is not `1`, `"1"` is not `1`, `null` is not `false`;
- strings are equal when their code points are (no Unicode normalization, no case folding);
- numbers are equal when their mathematical values are: `1`, `1.0` and `1e0` are one number, as
  they are to JSON (RFC 8259 has no integer type) and to PostgreSQL's jsonb. A float's value is
  that of the text the API writes for it (Python's shortest repr, `1e+30` is 10**30), since that
  text is what is stored and what every reader sees;
- arrays are equal when they have equal items in the same order;
- objects are equal when they have the same keys with equal values, in any order.

`canonical_json` writes a value so that equal values, and only they, have the same text; the
SQLite index compares through it (as an SQL function) where SQL alone cannot.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON


def canonical_json(value: Any) -> str:
    """A text for `value` that two JSON values share exactly when they are equal (see above)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float | Decimal):
        return canonical_number(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "{" + ",".join(f"{json.dumps(k)}:{canonical_json(v)}" for k, v in items) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON")


def canonical_number(value: int | float | Decimal) -> str:
    """`value` as digits without trailing zeros and a power of ten (`1`, `1.0` and `10e-1` are
    all `1e0`; any zero is `0`): one text per mathematical value, however large. A `Decimal` is
    a number read from stored JSON text as it is written (`parse_float=Decimal`)."""
    # repr, not Decimal(float): the value is that of the JSON text (see the module docstring).
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    sign, digits, exponent = number.as_tuple()
    text = "".join(map(str, digits)).lstrip("0")
    if not text:
        return "0"  # -0.0 and 0 are the same number
    stripped = text.rstrip("0")
    assert isinstance(exponent, int)  # finite: JSON has no NaN nor infinities
    return f"{'-' if sign else ''}{stripped}e{exponent + len(text) - len(stripped)}"


def canonical_json_text(text: str) -> str:
    """`canonical_json` of a JSON text, its numbers read exactly as written."""
    return canonical_json(json.loads(text, parse_float=Decimal))


def json_equal(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal (see the module docstring)."""
    return canonical_json(a) == canonical_json(b)


class StoredJson(JSON):
    """The metadata columns' type: JSON whose change the ORM tells by the text it would write.

    SQLAlchemy decides whether to write an attribute by comparing its old and new values with
    the type's `compare_values`, for JSON `==`: `{"flag": 1}` replaced by `{"flag": true}` was
    "unchanged" and never written, though the upsert answered `updated`. Whether a value is
    *equal* as JSON is `json_equal`'s question; whether the row must be written is this one,
    and any other text (`1.0` for `1`, keys reordered) is written as sent."""

    cache_ok = True

    def compare_values(self, x: Any, y: Any) -> bool:
        try:
            return json.dumps(x) == json.dumps(y)
        except TypeError:  # not JSON (an ORM sentinel): as SQLAlchemy would
            return bool(x == y)
