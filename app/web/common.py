"""What every dashboard page shares: rendering with the strict policy, the session's principal,
CSRF-checked and bounded forms, and readable times."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from app.errors import Forbidden, TooLarge, UnsupportedMediaType, ValidationFailed
from app.models.base import format_time
from app.services import sessions
from app.services.hashing import constant_time_equals
from app.services.runtime import Principal, Runtime

#: The dashboard's forms are a few short fields; nothing bigger is read, let alone parsed.
FORM_MAX_BYTES = 16 * 1024
FORM_MAX_FIELDS = 20
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


async def form(request: Request) -> dict[str, str]:
    """The posted form, bounded and after the CSRF check."""
    no_api_keys(request)
    fields = await _read_form(request)
    sent = fields.get("csrf_token")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str):
        raise Forbidden("The form's CSRF token is missing; reload the page and try again.")
    if not constant_time_equals(sent, expected):
        raise Forbidden("The form's CSRF token is wrong; reload the page and try again.")
    return fields


async def _read_form(request: Request) -> dict[str, str]:
    # Read by hand rather than with `request.form()`, which takes a urlencoded body of any size.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("The dashboard's forms are application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise TooLarge(f"A dashboard form is at most {FORM_MAX_BYTES} bytes.")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=FORM_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("The form is not UTF-8 or has too many fields.") from exc
    return dict(pairs)


async def signed_in(request: Request) -> Principal | None:
    """The signed-in user, if the cookie names a live session."""
    token = request.session.get("sid")
    principal = await sessions.signed_in_principal(runtime=runtime_of(request), token=token)
    if principal is None and token is not None:
        request.session.clear()  # ended or expired: drop the cookie too
    return principal


def to(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)
