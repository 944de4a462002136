"""What every dashboard page shares: rendering with the strict policy, the session's principal,
CSRF-checked and bounded forms, and readable times."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.datastructures import FormData, ImmutableMultiDict
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from app.errors import Forbidden, TooLarge, UnsupportedMediaType, ValidationFailed
from app.http.intake import read_body
from app.models.base import format_time
from app.services import sessions
from app.services.hashing import constant_time_equals
from app.services.runtime import Principal, Runtime

#: Most of the dashboard's forms are a few short fields; nothing bigger is read, let alone
#: parsed. The forms that write documents and personas pass their own, larger bounds.
FORM_MAX_BYTES = 16 * 1024
FORM_MAX_FIELDS = 20
#: The posted fields, a name possibly repeated (checkboxes); `.get` gives the last value.
Form = ImmutableMultiDict[str, str]
#: Where a one-time message waits for the page a POST redirects to (post/redirect/get).
_FLASH = "flash"
_CSP = (
    "default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def readable_time(value: datetime | None, never: str = "never") -> Markup:
    """`29 Nov 2026, 10:00 UTC` for people, the exact RFC 3339 time for machines (`datetime`)
    and for a hover (`title`)."""
    if value is None:
        return Markup(escape(never))
    if value.tzinfo is None:  # stored times are UTC
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    exact = format_time(value)
    shown = f"{value.day} {value:%b %Y, %H:%M} UTC"
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(exact, shown)


_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
_templates.filters["when"] = readable_time


def render(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    """A dashboard page: no script at all, its one `<style>` by nonce, never stored."""
    nonce = secrets.token_urlsafe(16)
    page = _templates.get_template(name).render(csp_nonce=nonce, **context)
    return HTMLResponse(
        page,
        status_code=status,
        headers={
            **(headers or {}),
            "Content-Security-Policy": _CSP.format(nonce=nonce),
            "Cache-Control": "no-store",
        },
    )


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def no_api_keys(request: Request) -> None:
    if "x-api-key" in request.headers:
        raise Forbidden(
            "The dashboard takes a browser session, never an API key; sign in at /login."
        )


async def form(
    request: Request, *, max_bytes: int = FORM_MAX_BYTES, max_fields: int = FORM_MAX_FIELDS
) -> Form:
    """The posted form, bounded and after the CSRF check."""
    no_api_keys(request)
    fields = await _read_form(request, max_bytes=max_bytes, max_fields=max_fields)
    check_csrf(request, fields.get("csrf_token"))
    return fields


def check_csrf(request: Request, sent: object) -> None:
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str):
        raise Forbidden("The form's CSRF token is missing; reload the page and try again.")
    if not constant_time_equals(sent, expected):
        raise Forbidden("The form's CSRF token is wrong; reload the page and try again.")


async def _read_form(request: Request, *, max_bytes: int, max_fields: int) -> Form:
    # Read by hand rather than with `request.form()`, which takes a urlencoded body of any size.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("The dashboard's forms are application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(f"A dashboard form is at most {max_bytes} bytes.")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=max_fields,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("The form is not UTF-8 or has too many fields.") from exc
    return ImmutableMultiDict(pairs)


async def upload_form(request: Request, *, max_bytes: int) -> FormData:
    """A posted `multipart/form-data` form with at most one file, the whole body at most
    `max_bytes` (checked from its declared length, then as it streams in, before any of it is
    parsed), after the CSRF check. The caller closes it (`await fields.close()`)."""
    no_api_keys(request)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType("A file is uploaded as multipart/form-data.")
    body = await read_body(request, max_bytes)

    async def once() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers,
        once(),
        max_files=1,
        max_fields=FORM_MAX_FIELDS,
        max_part_size=FORM_MAX_BYTES,
    )
    try:
        fields = await parser.parse()
    except MultiPartException as exc:
        raise ValidationFailed(f"The form does not parse: {exc.message}") from exc
    try:
        check_csrf(request, fields.get("csrf_token"))
    except Forbidden:
        await fields.close()
        raise
    return fields


def flash(request: Request, message: str) -> None:
    """Say `message` once, on the page the current POST redirects to."""
    request.session[_FLASH] = message


def take_flash(request: Request) -> str | None:
    """The message left by the last POST, gone from the cookie with this response."""
    message = request.session.pop(_FLASH, None)
    return message if isinstance(message, str) else None


async def signed_in(request: Request) -> Principal | None:
    """The signed-in user, if the cookie names a live session."""
    token = request.session.get("sid")
    principal = await sessions.signed_in_principal(runtime=runtime_of(request), token=token)
    if principal is None and token is not None:
        request.session.clear()  # ended or expired: drop the cookie too
    return principal


def to(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)
