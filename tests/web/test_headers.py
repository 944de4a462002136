"""Security headers on HTML (and nosniff everywhere), no-store where secrets show, Secure
cookies in production, bounded dashboard forms."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from tests.conftest import AppFactory, assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio

EMAIL = "web@example.com"
PASSWORD = "correct horse battery"


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def assert_html_headers(r: httpx.Response) -> str:
    """The headers every HTML page carries; returns its Content-Security-Policy."""
    assert r.headers["content-type"].startswith("text/html"), r.headers
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    return csp


def assert_dashboard_page(r: httpx.Response) -> None:
    """A dashboard page: a strict policy (no script at all, its one style by nonce) and never
    stored by a browser or proxy."""
    csp = assert_html_headers(r)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "script-src" not in csp
    nonce = re.search(r"style-src 'nonce-([^']+)'", csp)
    assert nonce and f'<style nonce="{nonce[1]}">' in r.text
    assert r.headers["cache-control"] == "no-store"


async def test_html_pages_carry_security_headers(app: Starlette) -> None:
    await accounts.create_user(runtime=app.state.runtime, email=EMAIL, password=PASSWORD)
    async with client_for(app) as browser:
        login = await browser.get("/login")
        assert_dashboard_page(login)
        token = csrf_of(login)
        wrong = await browser.post(
            "/login", data={"email": EMAIL, "password": "nope", "csrf_token": token}
        )
        assert wrong.status_code == 401
        assert_dashboard_page(wrong)
        await browser.post(
            "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}
        )
        page = await browser.get("/api-keys")
        assert_dashboard_page(page)
        r = await browser.post("/api-keys", data={"name": "k", "csrf_token": csrf_of(page)})
        assert r.status_code == 303
        created = await browser.get(r.headers["location"])
        assert created.status_code == 200 and 'id="new-key"' in created.text
        assert_dashboard_page(created)  # the page showing a new key is never cached
        # Pages made by other doors (the API reference here) get the framing policy too.
        assert_html_headers(await browser.get("/docs"))


async def test_every_response_says_nosniff(app: Starlette) -> None:
    key = await new_key(app)
    async with client_for(app) as anon, client_for(app, **{"X-Api-Key": key}) as api:
        responses = [
            await anon.get("/openapi.json"),
            await anon.get("/api/personas"),
            await api.get("/api/personas"),
            await anon.get("/no/such/route"),
        ]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert "x-frame-options" not in r.headers  # framing policy is for HTML only


@pytest.mark.parametrize("environment", ["production", "staging"])
async def test_session_cookie_is_secure_outside_local_use(
    make_app: AppFactory, environment: str
) -> None:
    # Anything but "local" is served to browsers over the network: not only "production".
    app = await make_app(environment=environment, session_secret="p" * 40)
    async with client_for(app) as browser:
        cookie = (await browser.get("/login")).headers["set-cookie"]
    name, _, attributes = cookie.partition("=")
    assert name == "__Host-personaizer_session"
    lowered = attributes.lower()
    for attribute in ("secure", "httponly", "samesite=strict", "path=/"):
        assert attribute in lowered, cookie
    assert "domain=" not in lowered


async def test_local_session_cookie_works_over_plain_http(app: Starlette) -> None:
    async with client_for(app) as browser:
        cookie = (await browser.get("/login")).headers["set-cookie"]
    assert cookie.startswith("personaizer_session=") and "secure" not in cookie.lower()


async def test_dashboard_forms_are_bounded(app: Starlette) -> None:
    await accounts.create_user(runtime=app.state.runtime, email=EMAIL, password=PASSWORD)
    async with client_for(app) as browser:
        token = csrf_of(await browser.get("/login"))
        form = {"email": EMAIL, "password": PASSWORD, "csrf_token": token}
        big = {**form, "padding": "x" * 100_000}
        assert_problem(await browser.post("/login", data=big), 413, "request.too_large")
        assert_problem(
            await browser.post("/login", json=form), 415, "request.unsupported_media_type"
        )
        many = "&".join(f"f{i}=1" for i in range(50)) + f"&csrf_token={token}"
        r = await browser.post(
            "/login",
            content=many,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert_problem(r, 422, "request.validation_failed")
        r = await browser.post(
            "/login",
            content=b"email=\xff&csrf_token=" + token.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert_problem(r, 422, "request.validation_failed")
        # None of them signed in; the well-formed form still does.
        assert (await browser.get("/api-keys")).status_code == 303
        r = await browser.post("/login", data=form)
        assert r.status_code == 303 and r.headers["location"] == "/api-keys"
