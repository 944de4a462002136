"""The dashboard door: `/login` and `/api-keys`, for people in a browser (API.md section 2).

Key management accepts only a browser session, never an API key: a request carrying `X-Api-Key`
here is 403 `auth.forbidden`, so a leaked key cannot mint more keys. The session lives in the
database (app/services/sessions.py); the signed cookie holds its random token and the CSRF token.
Every form carries that CSRF token; a missing or wrong one is 403 `auth.forbidden` too.

Sign-in is limited per account and per client address before the password is checked. Every page
is sent with a strict Content-Security-Policy (no scripts at all, the one inline style by nonce,
no framing) and `Cache-Control: no-store`, since each shows account data and one shows a new key.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from app.errors import (
    Forbidden,
    RateLimited,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.guard import Guard
from app.security import constant_time_equals
from app.services import accounts, sessions
from app.services.core import Core
from app.settings import Settings

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
KEY_NAME_MAX = 100
#: The dashboard's forms are a few short fields; nothing bigger is read, let alone parsed.
FORM_MAX_BYTES = 16 * 1024
FORM_MAX_FIELDS = 20
#: An email is at most 320 characters; longer input is not an account, and is not kept as one
#: in the sign-in limiter's counts either.
EMAIL_MAX = 320
_CSP = (
    "default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _render(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
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


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def _no_api_keys(request: Request) -> None:
    if "x-api-key" in request.headers:
        raise Forbidden("API keys cannot manage keys; sign in at /login in a browser.")


async def _form(request: Request) -> dict[str, str]:
    """The posted form, bounded and after the CSRF check."""
    _no_api_keys(request)
    form = await _read_form(request)
    sent = form.get("csrf_token")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str):
        raise Forbidden("The form's CSRF token is missing; reload the page and try again.")
    if not constant_time_equals(sent, expected):
        raise Forbidden("The form's CSRF token is wrong; reload the page and try again.")
    return form


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


async def _signed_in(request: Request) -> str | None:
    """The signed-in user's email, if the cookie names a live session."""
    token = request.session.get("sid")
    email = await sessions.signed_in_email(core=_core(request), token=token)
    if email is None and token is not None:
        request.session.clear()  # ended or expired: drop the cookie too
    return email


def _to(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


async def login_page(request: Request) -> Response:
    _no_api_keys(request)
    if await _signed_in(request):
        return _to("/api-keys")
    return _render("login.html", csrf=_csrf(request))


async def login(request: Request) -> Response:
    form = await _form(request)
    email = form.get("email", "")[:EMAIL_MAX]
    guard: Guard = request.app.state.guard
    try:
        await guard.limiter.sign_in_attempt(
            address=guard.client_address(request), account=email.strip().lower()
        )
        user = await accounts.login(
            core=_core(request), email=email, password=form.get("password", "")
        )
        token = await sessions.start(core=_core(request), email=user.email)
    except RateLimited as exc:
        retry = exc.headers.get("Retry-After", "60")
        return _render(
            "login.html",
            status=429,
            headers={"Retry-After": retry},
            csrf=_csrf(request),
            email=email,
            error=f"Too many sign-in attempts; try again in {retry} seconds.",
        )
    except Unauthorized:
        return _render(
            "login.html",
            status=401,
            csrf=_csrf(request),
            email=email,
            error="Wrong email or password.",
        )
    request.session.clear()  # a fresh session (and CSRF token) at every sign-in
    request.session["sid"] = token
    return _to("/api-keys")


async def logout(request: Request) -> Response:
    await _form(request)
    await sessions.end(core=_core(request), token=request.session.get("sid"))
    request.session.clear()
    return _to("/login")


async def keys_page(request: Request, new_key: str | None = None, status: int = 200) -> Response:
    _no_api_keys(request)
    email = await _signed_in(request)
    if email is None:
        return _to("/login")
    keys = await accounts.list_keys(core=_core(request), email=email)
    return _render(
        "api_keys.html",
        status=status,
        email=email,
        keys=[k.model_dump(mode="json") for k in keys],
        new_key=new_key,
        csrf=_csrf(request),
    )


async def create_key(request: Request) -> Response:
    form = await _form(request)
    email = await _signed_in(request)
    if email is None:
        return _to("/login")
    name = form.get("name", "").strip()[:KEY_NAME_MAX] or "default"
    created = await accounts.create_key(core=_core(request), email=email, name=name)
    # Shown this once, on this page; never stored or shown again.
    return await keys_page(request, new_key=created.key, status=201)


async def disable_key(request: Request) -> Response:
    await _form(request)
    email = await _signed_in(request)
    if email is None:
        return _to("/login")
    prefix = request.path_params["prefix"]
    await accounts.disable_key(core=_core(request), prefix=prefix, email=email)
    return _to("/api-keys")


async def delete_key(request: Request) -> Response:
    await _form(request)
    email = await _signed_in(request)
    if email is None:
        return _to("/login")
    await accounts.delete_key(
        core=_core(request), prefix=request.path_params["prefix"], email=email
    )
    return _to("/api-keys")


def session_secret(settings: Settings) -> str:
    # Settings refuse an empty secret outside local use; locally a per-process one is fine
    # (sessions then end when the server restarts).
    return settings.session_secret or secrets.token_urlsafe(32)


def routes(settings: Settings) -> list[BaseRoute]:
    secure = settings.environment != "local"
    session = [
        Middleware(
            SessionMiddleware,
            secret_key=session_secret(settings),
            # `__Host-` makes browsers refuse the cookie unless it is Secure, host-only and for
            # path /: a sibling subdomain cannot plant one. Plain HTTP (local use) cannot have it.
            session_cookie="__Host-personaizer_session" if secure else "personaizer_session",
            max_age=int(sessions.SESSION_TTL.total_seconds()),
            same_site="strict",
            https_only=secure,
        )
    ]
    return [
        Route("/login", login_page, methods=["GET"], middleware=session),
        Route("/login", login, methods=["POST"], middleware=session),
        Route("/logout", logout, methods=["POST"], middleware=session),
        Route("/api-keys", keys_page, methods=["GET"], middleware=session),
        Route("/api-keys", create_key, methods=["POST"], middleware=session),
        Route("/api-keys/{prefix:str}/disable", disable_key, methods=["POST"], middleware=session),
        Route("/api-keys/{prefix:str}/delete", delete_key, methods=["POST"], middleware=session),
    ]
