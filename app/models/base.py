"""What every area's models share: time columns and formats, request and response bases,
the validators of external ids, metadata and content."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlmodel import Field

EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Text is blank when it has no character outside this class: whitespace as `str.isspace()`
#: has it, spelled out because `\s` means different things to different regex engines, and the
#: OpenAPI document gives clients this pattern (`NOT_BLANK_PATTERN`) to check before sending.
_BLANK_CHARS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK_PATTERN = f"[^{_BLANK_CHARS}]"
NOT_BLANK_RE = re.compile(NOT_BLANK_PATTERN)
METADATA_MAX_BYTES = 8 * 1024
TITLE_MAX = 512

JsonObject = dict[str, Any]


def utcnow() -> datetime:
    """Now, in UTC, truncated to the millisecond the API shows (so values round-trip)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds and `Z`, the contract's only time format."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class UTCDateTime(TypeDecorator[datetime]):
    """Times stored as fixed-width RFC 3339 text, so they sort and compare as strings do."""

    impl = String(24)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        return None if value is None else format_time(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


#: A time as the API shows it: RFC 3339, UTC, milliseconds, `Z`.
Timestamp = Annotated[
    datetime,
    PlainSerializer(format_time, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "example": "2026-11-29T10:00:00.123Z"}
    ),
]


def time_field(nullable: bool = False) -> Any:
    return Field(sa_type=UTCDateTime, nullable=nullable)


def check_external_id(value: str) -> str:
    # fullmatch: `$` alone would also let a trailing newline through.
    if not EXTERNAL_ID_RE.fullmatch(value):
        raise PydanticCustomError(
            "knowledge.invalid_external_id",
            "external_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        )
    return value


def check_metadata(value: JsonObject) -> JsonObject:
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            "metadata must serialize to at most 8 KiB of JSON (got {size} bytes)",
            {"size": size},
        )
    return value


def _not_blank(value: str) -> str:
    if not NOT_BLANK_RE.search(value):
        raise PydanticCustomError("blank", "content must not be blank")
    return value


ExternalId = Annotated[
    str,
    AfterValidator(check_external_id),
    # Documented, but checked by `check_external_id` so the error carries the contract's code.
    WithJsonSchema(
        {"type": "string", "pattern": EXTERNAL_ID_RE.pattern, "minLength": 1, "maxLength": 128}
    ),
]
Metadata = Annotated[JsonObject, AfterValidator(check_metadata)]
Content = Annotated[
    str,
    AfterValidator(_not_blank),
    WithJsonSchema({"type": "string", "pattern": NOT_BLANK_PATTERN}),
]
Title = Annotated[str | None, Field(default=None, max_length=TITLE_MAX)]


class RequestModel(BaseModel):
    """Base of request bodies. Plain pydantic, like the Public models: a SQLModel class may not
    have a field named `metadata` (it is the table registry), and the contract needs one.
    Strict: a JSON value of the wrong type is refused (`true` is not 1, `"3"` not 3), as the
    OpenAPI document's types say; lax pydantic would convert it."""

    model_config = ConfigDict(extra="ignore", strict=True)


class PublicModel(BaseModel):
    """Base of response bodies (REST) and service results."""
