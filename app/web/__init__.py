"""The dashboard door: `/login`, `/api-keys`, the pages of app/web/pages.py and the forms that
write documents (app/web/documents.py) and personas (app/web/personas.py), for people in a
browser (API.md section 2).

Key management accepts only a browser session, never an API key: a request carrying `X-Api-Key`
here is 403 `auth.forbidden`, so a leaked key cannot mint more keys. The session lives in the
database (app/services/sessions.py); the signed cookie holds its random token and the CSRF token.
Every form carries that CSRF token; a missing or wrong one is 403 `auth.forbidden` too.

Sign-in is limited per account and per client address before the password is checked. Every page
is sent with a strict Content-Security-Policy (no scripts at all, the one inline style by nonce,
no framing) and `Cache-Control: no-store`, since each shows account data and one shows a new key.

A new key is made by a POST that redirects (303) to `/api-keys`, which shows it once: reloading
that page shows the list, never makes a second key. Deleting a key asks first, on a page of its
own, since no script may ask.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.errors import KeyNotFound, RateLimited, Unauthorized, ValidationFailed
from app.http.guard import Guard
from app.models import SCOPES
from app.services import accounts, sessions
from app.settings import Settings
from app.web import documents, pages, personas
from app.web.common import csrf, form, no_api_keys, render, runtime_of, signed_in, to

KEY_NAME_MAX = 100
#: An email is at most 320 characters; longer input is not an account, and is not kept as one
#: in the sign-in limiter's counts either.
EMAIL_MAX = 320
#: Where the key made by the last POST waits for the page it redirects to (see `create_key`).
_NEW_KEY = "new_key"
_NEW_SECRET = "new_signing_secret"


async def login_page(request: Request) -> Response:
    no_api_keys(request)
    if await signed_in(request):
        return to("/api-keys")
    return render("login.html", csrf=csrf(request))


async def login(request: Request) -> Response:
    fields = await form(request)
    email = fields.get("email", "")[:EMAIL_MAX]
    guard: Guard = request.app.state.guard
    try:
        await guard.limiter.sign_in_attempt(
            address=guard.client_address(request), account=email.strip().lower()
        )
        user = await accounts.login(
            runtime=runtime_of(request), email=email, password=fields.get("password", "")
        )
        token = await sessions.start(runtime=runtime_of(request), email=user.email)
    except RateLimited as exc:
        retry = exc.headers.get("Retry-After", "60")
        return render(
            "login.html",
            status=429,
            headers={"Retry-After": retry},
            csrf=csrf(request),
            email=email,
            error=f"Too many sign-in attempts; try again in {retry} seconds.",
        )
    except Unauthorized:
        return render(
            "login.html",
            status=401,
            csrf=csrf(request),
            email=email,
            error="Wrong email or password.",
        )
    request.session.clear()  # a fresh session (and CSRF token) at every sign-in
    request.session["sid"] = token
    return to("/api-keys")


async def logout(request: Request) -> Response:
    await form(request)
    await sessions.end(runtime=runtime_of(request), token=request.session.get("sid"))
    request.session.clear()
    return to("/login")


async def keys_page(request: Request) -> Response:
    no_api_keys(request)
    principal = await signed_in(request)
    if principal is None:
        return to("/login")
    # Shown by this one response and gone from the cookie with it: a reload shows the list only.
    new_key = request.session.pop(_NEW_KEY, None)
    new_secret = request.session.pop(_NEW_SECRET, None)
    keys = await accounts.list_keys(runtime=runtime_of(request), email=principal.email)
    return render(
        "api_keys.html",
        principal=principal,
        section="keys",
        keys=keys,
        scopes=SCOPES,
        new_key=new_key if isinstance(new_key, str) else None,
        new_secret=new_secret if isinstance(new_secret, str) else None,
        csrf=csrf(request),
    )


def _listed(value: str) -> list[str] | None:
    items = [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]
    return items or None


async def create_key(request: Request) -> Response:
    fields = await form(request)
    principal = await signed_in(request)
    if principal is None:
        return to("/login")
    name = fields.get("name", "").strip()[:KEY_NAME_MAX] or "default"
    # The form lists every scope as a checkbox (all ticked at first); an older form without
    # them makes a key with all scopes, as before.
    scopes = [s for s in SCOPES if fields.get(f"scope.{s}")] if "scopes_form" in fields else None
    rate = fields.get("rate_limit", "").strip()
    expires = fields.get("expires_at", "").strip()
    try:
        try:
            expires_at = datetime.fromisoformat(expires).replace(tzinfo=UTC) if expires else None
            rate_limit = int(rate) if rate else None
        except ValueError as exc:
            raise ValidationFailed("expires_at or rate_limit is not valid.") from exc
        created = await accounts.create_key(
            runtime=runtime_of(request),
            email=principal.email,
            name=name,
            scopes=scopes,
            persona_ids=_listed(fields.get("persona_ids", "")),
            allowed_origins=_listed(fields.get("allowed_origins", "")),
            expires_at=expires_at,
            rate_limit=rate_limit,
        )
    except ValidationFailed as exc:
        keys = await accounts.list_keys(runtime=runtime_of(request), email=principal.email)
        return render(
            "api_keys.html",
            status=422,
            principal=principal,
            section="keys",
            keys=keys,
            scopes=SCOPES,
            new_key=None,
            new_secret=None,
            error=exc.detail,
            csrf=csrf(request),
        )
    # Post/redirect/get: the key rides in the signed, HttpOnly, SameSite=Strict session cookie
    # to the page this redirects to, which takes it out again. The server keeps only its hash
    # (several server processes need no shared memory for it), and the cookie already carries
    # the session token, which can mint keys: holding the key there for one redirect adds little.
    request.session[_NEW_KEY] = created.key
    if created.signing_secret:
        request.session[_NEW_SECRET] = created.signing_secret
    return to("/api-keys")


async def disable_key(request: Request) -> Response:
    await form(request)
    principal = await signed_in(request)
    if principal is None:
        return to("/login")
    prefix = request.path_params["prefix"]
    await accounts.disable_key(runtime=runtime_of(request), prefix=prefix, email=principal.email)
    return to("/api-keys")


async def confirm_delete_key(request: Request) -> Response:
    no_api_keys(request)
    principal = await signed_in(request)
    if principal is None:
        return to("/login")
    prefix = request.path_params["prefix"]
    keys = await accounts.list_keys(runtime=runtime_of(request), email=principal.email)
    key = next((k for k in keys if k.prefix == prefix), None)
    if key is None:
        raise KeyNotFound(f"No API key starts with {prefix!r}.")
    return render(
        "confirm_delete.html", principal=principal, section="keys", key=key, csrf=csrf(request)
    )


async def delete_key(request: Request) -> Response:
    fields = await form(request)
    principal = await signed_in(request)
    if principal is None:
        return to("/login")
    prefix = request.path_params["prefix"]
    if fields.get("confirm") != "yes":  # not from the confirmation page: ask there first
        return to(f"/api-keys/{prefix}/delete")
    await accounts.delete_key(runtime=runtime_of(request), prefix=prefix, email=principal.email)
    return to("/api-keys")


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
        Route(
            "/api-keys/{prefix:str}/delete", confirm_delete_key, methods=["GET"], middleware=session
        ),
        Route("/api-keys/{prefix:str}/delete", delete_key, methods=["POST"], middleware=session),
        # The writing routes first: `/dashboard/documents/{id}/edit` is not a document's page.
        *documents.routes(session),
        *personas.routes(session),
        *pages.routes(session),
    ]
