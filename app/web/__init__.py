"""The dashboard door: `/login` and `/api-keys`, for people in a browser (API.md section 2).

Key management accepts only a browser session (a signed cookie), never an API key: a request
carrying `X-Api-Key` here is 403 `auth.forbidden`, so a leaked key cannot mint more keys. Every
form carries a per-session CSRF token; a missing or wrong one is 403 `auth.forbidden` too.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from app.errors import Forbidden, Unauthorized
from app.security import constant_time_equals
from app.services import accounts
from app.services.core import Core
from app.settings import Settings

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
SESSION_HOURS = 8
KEY_NAME_MAX = 100


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


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
    """The posted form, after the CSRF check."""
    _no_api_keys(request)
    form = await request.form()
    sent = form.get("csrf_token")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str):
        raise Forbidden("The form's CSRF token is missing; reload the page and try again.")
    if not constant_time_equals(sent, expected):
        raise Forbidden("The form's CSRF token is wrong; reload the page and try again.")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _signed_in(request: Request) -> str | None:
    email = request.session.get("email")
    return email if isinstance(email, str) else None


def _to(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


async def login_page(request: Request) -> Response:
    _no_api_keys(request)
    if _signed_in(request):
        return _to("/api-keys")
    return _render("login.html", csrf=_csrf(request))


async def login(request: Request) -> Response:
    form = await _form(request)
    email = form.get("email", "")
    address = request.client.host if request.client else "unknown"
    try:
        # Failed sign-ins count against the same per-address budget as failed API keys.
        user = await request.app.state.guard.limiter.authenticate(
            address,
            lambda: accounts.login(
                core=_core(request), email=email, password=form.get("password", "")
            ),
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
    request.session["email"] = user.email
    return _to("/api-keys")


async def logout(request: Request) -> Response:
    await _form(request)
    request.session.clear()
    return _to("/login")


async def keys_page(request: Request, new_key: str | None = None, status: int = 200) -> Response:
    _no_api_keys(request)
    email = _signed_in(request)
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
    email = _signed_in(request)
    if email is None:
        return _to("/login")
    name = form.get("name", "").strip()[:KEY_NAME_MAX] or "default"
    created = await accounts.create_key(core=_core(request), email=email, name=name)
    # Shown this once, on this page; never stored or shown again.
    return await keys_page(request, new_key=created.key, status=201)


async def disable_key(request: Request) -> Response:
    await _form(request)
    email = _signed_in(request)
    if email is None:
        return _to("/login")
    prefix = request.path_params["prefix"]
    await accounts.disable_key(core=_core(request), prefix=prefix, email=email)
    return _to("/api-keys")


async def delete_key(request: Request) -> Response:
    await _form(request)
    email = _signed_in(request)
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
    session = [
        Middleware(
            SessionMiddleware,
            secret_key=session_secret(settings),
            session_cookie="personaizer_session",
            max_age=SESSION_HOURS * 3600,
            same_site="strict",
            https_only=settings.environment != "local",
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
