"""Custom scalars: times as the contract writes them, counts past 32 bits, JSON objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NewType

import strawberry
from pydantic import TypeAdapter, ValidationError
from strawberry.types.scalar import ScalarDefinition

from app.errors import ValidationFailed
from app.models import format_time

#: A count or limit that may pass GraphQL's 32-bit `Int` (characters, requests): a JSON number,
#: exact up to 2^53.
BigInt = NewType("BigInt", int)

_datetime = TypeAdapter(datetime)


def parse_time(value: object) -> datetime:
    """RFC 3339 (or ISO 8601) as REST's query parameters take it; no offset means UTC."""
    try:
        parsed = _datetime.validate_python(value)
    except ValidationError as exc:
        raise ValidationFailed(f"{value!r} is not an RFC 3339 date-time.") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _parse_big_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{value!r} is not an integer.")
    return value


SCALARS: dict[object, ScalarDefinition] = {
    datetime: strawberry.scalar(
        name="DateTime",
        description="An RFC 3339 time in UTC with milliseconds, e.g. `2026-11-29T10:00:00.123Z`.",
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
