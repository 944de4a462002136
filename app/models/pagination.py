"""Opaque list cursors: base64url of a small JSON object. Clients pass them back unchanged."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.errors import AppError, InvalidCursor
from app.models import strict_json

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: Longer than any cursor this server makes (a 128-character external_id or a persona id,
#: in base64): a longer one cannot be ours, and is refused before it is decoded.
MAX_CURSOR_CHARS = 512


class PageQuery(BaseModel):
    """The query parameters every list takes (API.md section 1)."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Items per page, 1-200.")
    cursor: str | None = Field(
        None,
        description=(
            "The next_cursor of the previous page, passed back unchanged (empty: the first "
            "page). Opaque: one that does not decode is 400 `request.invalid_cursor`."
        ),
    )


def encode_cursor(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, *, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The position a cursor stands for, or `InvalidCursor` when it is not one of ours.

    A cursor is client input like any other: it is decoded by the same bounded JSON intake as a
    body (no deep nesting, no lone surrogates), and only a flat object of the expected keys with
    string values passes."""
    # An empty cursor (`?cursor=`, a client passing back a null next_cursor as text) is the
    # first page: there is no position to be wrong about.
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("The cursor does not decode.")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = strict_json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (AppError, ValueError, binascii.Error) as exc:
        raise InvalidCursor("The cursor does not decode.") from exc
    if (
        not isinstance(value, dict)
        or set(value) != set(keys)
        or not all(isinstance(value[k], str) for k in keys)
    ):
        raise InvalidCursor("The cursor does not decode.")
    return value
