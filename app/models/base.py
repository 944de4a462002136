"""What every area's models share: time columns and formats, request and response bases,
the validators of external ids, metadata and content."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    GetJsonSchemaHandler,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from sqlalchemy import String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlmodel import Field

#: Text compared and ordered byte by byte (code point order for UTF-8) on both engines. SQLite's
#: default collation (BINARY) is that already; PostgreSQL's follows the database's locale, so
#: its columns say `COLLATE "C"`: list order and keyset cursors do not depend on how the
#: database was created (revision 0006).
BYTE_ORDERED_TEXT = String().with_variant(String(collation="C"), "postgresql")

EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Text is blank when it has no character outside this class, what a reader cannot see:
#: whitespace (as `str.isspace()` has it), control and format characters (zero-width spaces and
#: joiners, bidi marks, the BOM) and the rest of Unicode's default-ignorable code points in the
#: Basic Multilingual Plane (fillers, variation selectors). Spelled out, because `\s` means
#: different things to different regex engines, and the OpenAPI document gives clients this
#: pattern (`NOT_BLANK_PATTERN`) to check before sending; characters beyond U+FFFF are left out
#: because JSON Schema's regex dialect reads them as surrogate pairs.
_BLANK_CHARS = (
    r"\x00-\x20\x7f-\xa0\xad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f"
    r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
)
NOT_BLANK_PATTERN = f"[^{_BLANK_CHARS}]"
NOT_BLANK_RE = re.compile(NOT_BLANK_PATTERN)
METADATA_MAX_BYTES = 8 * 1024
#: Deepest nesting of objects and arrays in metadata (`{"a": {}}` is 2 deep). Far more than any
#: use needs, far less than what breaks a JSON encoder or SQLite's JSON functions.
METADATA_MAX_DEPTH = 32
TITLE_MAX = 512

JsonObject = dict[str, Any]


def utcnow() -> datetime:
    """Now, in UTC, truncated to the millisecond the API shows (so values round-trip)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


#: RFC 3339's date-time (what the OpenAPI document's `format: date-time` promises, and all it
#: promises): an offset or `Z` is required. Pydantic alone would also take a bare date, a time
#: without an offset (whose instant nobody knows) or a number of seconds.
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)
_DATETIME = TypeAdapter(datetime)


def parse_api_time(value: object, *, name: str = "time") -> datetime:
    """A time the API takes as input (REST's query parameters, GraphQL's `DateTime`), in UTC:
    one parser for every door, so the same text gets the same answer through each.

    RFC 3339 with an offset or `Z`, then checked as a real date and time (no year 0000, no
    24:00, no leap second 23:59:60, which `datetime` cannot hold). An instant before year 1 or
    after 9999 once in UTC becomes that end, earlier or later than any stored time. Fails with
    a `PydanticCustomError` (`datetime_format`), which each door reports as
    `request.validation_failed` pointing at `name`'s field."""
    if not isinstance(value, str) or not RFC3339_RE.fullmatch(value):
        raise _not_a_time(name)
    try:
        parsed = _DATETIME.validate_python(value)
    except ValidationError as exc:
        raise _not_a_time(name) from exc
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return _EARLIEST if parsed.year < 5000 else _LATEST


def _not_a_time(name: str) -> PydanticCustomError:
    return PydanticCustomError(
        "datetime_format",
        "{name} must be an RFC 3339 time with an offset, e.g. 2026-11-29T10:00:00Z",
        {"name": name},
    )


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds and `Z`, the contract's only time format.

    Fixed width for every year (`0999-...`, where strftime writes `999-...`), because stored
    times compare as text. An instant beyond either end of what `datetime` holds (year 1 or 9999
    with an offset; only a query bound can be one) becomes that end, which compares the same
    against every stored time."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = _EARLIEST if value.year < 5000 else _LATEST
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


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
    """Metadata that every reader can read back: JSON (finite numbers, Unicode strings), at most
    METADATA_MAX_BYTES serialized and METADATA_MAX_DEPTH deep. Serializing comes first: it is
    C-fast on any input, and bounds the walk for depth to 8 KiB."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "invalid_unicode", "metadata strings must be Unicode (no lone surrogates)"
        ) from exc
    except ValueError as exc:  # NaN or an infinity (allow_nan=False)
        raise PydanticCustomError("not_finite", "metadata numbers must be finite") from exc
    except TypeError as exc:
        raise PydanticCustomError("not_json", "metadata must be JSON") from exc
    except RecursionError as exc:
        raise _too_deep(None) from exc
    if size > METADATA_MAX_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            "metadata must serialize to at most 8 KiB of JSON (got {size} bytes)",
            {"size": size},
        )
    depth = json_depth(value)
    if depth > METADATA_MAX_DEPTH:
        raise _too_deep(depth)
    return value


def json_depth(value: object) -> int:
    """How deep objects and arrays nest in `value` (a scalar is 0, `{}` is 1), without
    recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(depth: int | None) -> PydanticCustomError:
    return PydanticCustomError(
        "metadata_too_deep",
        "metadata may nest objects and arrays at most {limit} deep",
        {"limit": METADATA_MAX_DEPTH, "depth": depth},
    )


def is_blank(value: str) -> bool:
    """Whether `value` has nothing a reader could see (see `_BLANK_CHARS`)."""
    return NOT_BLANK_RE.search(value) is None


def _no_nul(value: str | None) -> str | None:
    """Text the API stores holds no U+0000: PostgreSQL's `text` cannot, so both engines refuse
    it alike (metadata can: it is JSON, see storage/index/postgres.py)."""
    if value is not None and "\x00" in value:
        raise PydanticCustomError("text_nul", "text must not contain U+0000 (NUL)")
    return value


#: JSON Schema for "no U+0000" (linear to check; a schema-valid body is then never refused).
NO_NUL_PATTERN = "^[^\\x00]*$"


class _NoNulInSchema:
    """States `_no_nul` in the JSON Schema: the string (or the string branch of an optional
    one) gets `NO_NUL_PATTERN`."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        for branch in [schema, *schema.get("anyOf", [])]:
            if branch.get("type") == "string" and "pattern" not in branch:
                branch["pattern"] = NO_NUL_PATTERN
        return schema


#: A stored text field: any string but one holding U+0000 (`_no_nul`), said in the schema too.
NO_NUL = AfterValidator(_no_nul)
NO_NUL_SCHEMA = _NoNulInSchema()
#: The string type of every stored text field of a request (constraints such as `max_length`
#: go in its `Field`; an optional one is `OptionalStoredText`, not `StoredText | None`, whose
#: length errors would count items).
StoredText = Annotated[str, NO_NUL, NO_NUL_SCHEMA]
OptionalStoredText = Annotated[str | None, NO_NUL, NO_NUL_SCHEMA]


def _not_blank(value: str) -> str:
    if is_blank(value):
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
    NO_NUL,
    AfterValidator(_not_blank),
    # Not U+0000 either (`NO_NUL` above), said in the API's description: see
    # tests/rest/schemathesis_hooks.py for why not in this schema.
    WithJsonSchema({"type": "string", "pattern": NOT_BLANK_PATTERN}),
]
Title = Annotated[str | None, Field(default=None, max_length=TITLE_MAX), NO_NUL, NO_NUL_SCHEMA]


class RequestModel(BaseModel):
    """Base of request bodies. Plain pydantic, like the Public models: a SQLModel class may not
    have a field named `metadata` (it is the table registry), and the contract needs one.
    Strict: a JSON value of the wrong type is refused (`true` is not 1, `"3"` not 3), as the
    OpenAPI document's types say; lax pydantic would convert it."""

    model_config = ConfigDict(extra="ignore", strict=True)


class PublicModel(BaseModel):
    """Base of response bodies (REST) and service results."""
