"""Custom scalars: times as the contract writes them, counts past 32 bits, JSON objects."""

from __future__ import annotations

import reprlib
from datetime import datetime
from typing import NewType

import strawberry
from pydantic_core import PydanticCustomError
from strawberry.types.scalar import ScalarDefinition

from app.errors import ValidationFailed
from app.models import format_time, parse_api_time

#: A count or limit that may pass GraphQL's 32-bit `Int` (characters, requests): a JSON number,
#: exact up to 2^53.
BigInt = NewType("BigInt", int)


def parse_time(value: object) -> datetime:
    """A `DateTime` argument, by the parser REST's time parameters use (`parse_api_time`): the
    same text is taken or refused, with the same code, through either door."""
    try:
        return parse_api_time(value, name="DateTime")
    except PydanticCustomError as exc:
        raise ValidationFailed(
            f"{reprlib.repr(value)} is not an RFC 3339 time with an offset."
        ) from exc


def _parse_big_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{value!r} is not an integer.")
    return value


SCALARS: dict[object, ScalarDefinition] = {
    datetime: strawberry.scalar(
        name="DateTime",
        description=(
            "An RFC 3339 time. Answers are in UTC with milliseconds, e.g. "
            "`2026-11-29T10:00:00.123Z`; arguments take any offset (`+05:30`, `Z`) but need one."
        ),
        specified_by_url="https://www.rfc-editor.org/rfc/rfc3339",
        serialize=format_time,
        parse_value=parse_time,
    ),
    BigInt: strawberry.scalar(
        name="BigInt",
        description="An integer that may not fit 32 bits, as a JSON number (exact up to 2^53).",
        serialize=int,
        parse_value=_parse_big_int,
    ),
}
