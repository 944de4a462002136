"""Request intake, one path for every door: a body is read, decoded and parsed here, whether it
arrives at a REST operation, at `/graphql` or at `/mcp`, so the same bytes get the same answer
through each.

Every bound is checked before the work it guards, and all of it is cheap compared with what a
hostile body could otherwise cost:

- media type (`application/json` or `application/*+json`), else 415 `request.unsupported_media_type`;
- size: the declared `Content-Length`, then the bytes as they stream in, else 413 `request.too_large`;
- then UTF-8, shape and syntax, by `app.models.strict_json.loads` (400 `request.malformed_json`,
  or 413 for too many values or arrays), the parser the services use for cursors too.

Parsing a large body holds the interpreter for a while, so a body over
`app.services.offload.INLINE_BYTES` is parsed (and, by REST, validated) in a worker thread, with
hooks that give the event loop its turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from app.errors import AppError, MalformedJson, TooLarge, UnsupportedMediaType
from app.models.strict_json import MAX_ARRAYS, MAX_VALUES, loads
from app.services.offload import off_loop

if TYPE_CHECKING:  # the doors pass one in; `loads` serves the services too (cursors)
    from starlette.requests import Request

T = TypeVar("T")


def is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with `TooLarge` as soon as it is known to pass `limit` bytes: from its
    declared length, or while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The body is {declared} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, limit: int, then: Callable[[Any], T]) -> T:
    """The request's JSON body, bounded and parsed, passed through `then` (a validation), all of
    it off the event loop when the body is large."""
    return await parse(await read_json_body(request, limit), then)


async def read_json_body(request: Request, limit: int) -> bytes:
    """The raw bytes of a JSON body, its media type and size checked, not parsed yet: for a door
    that hands the same bytes on (MCP replays them to the SDK once `parse` has passed them)."""
    content_type = request.headers.get("content-type", "")
    if content_type and not is_json_media_type(content_type):
        raise UnsupportedMediaType(f"Send the body as application/json, not {content_type!r}.")
    raw = await read_body(request, limit)
    if not raw.strip():
        raise MalformedJson("A JSON body is required.")
    if not content_type:
        raise UnsupportedMediaType("Send the body with Content-Type: application/json.")
    return raw


async def parse(
    raw: bytes,
    then: Callable[[Any], T],
    *,
    max_values: int = MAX_VALUES,
    max_arrays: int = MAX_ARRAYS,
) -> T:
    """`then(loads(raw))`, off the event loop when `raw` is large. A door whose real requests
    are smaller may count values and arrays against tighter bounds (the same 413)."""

    def work() -> T:
        try:
            return then(loads(raw, max_values=max_values, max_arrays=max_arrays))
        except AppError as exc:
            # A refusal keeps nothing that holds the body (frames, a chained pydantic error), so
            # a large one is freed here, in the worker, not later on the event loop.
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
            raise

    return await off_loop(len(raw), work)
