"""The /api-keys dashboard: browser sessions only, CSRF on every form, keys shown once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from tests.conftest import assert_problem, client_for

pytestmark = pytest.mark.anyio

EMAIL = "web@example.com"
PASSWORD = "correct horse battery"


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


@pytest.fixture
async def browser(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    await accounts.create_user(runtime=app.state.runtime, email=EMAIL, password=PASSWORD)
    async with client_for(app) as client:
        yield client


async def sign_in(browser: httpx.AsyncClient) -> str:
    token = csrf_of(await browser.get("/login"))
    r = await browser.post(
        "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}
    )
    assert r.status_code == 303 and r.headers["location"] == "/api-keys"
    return csrf_of(await browser.get("/api-keys"))


async def test_pages_need_a_session(browser: httpx.AsyncClient) -> None:
    r = await browser.get("/api-keys")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    page = await browser.get("/login")
    assert page.status_code == 200 and "Sign in" in page.text
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


async def test_api_keys_are_refused_on_dashboard_routes(
    app: Starlette, browser: httpx.AsyncClient
) -> None:
    key = (await accounts.create_key(runtime=app.state.runtime, email=EMAIL)).key
    headers = {"X-Api-Key": key}
    for method, path in (("GET", "/api-keys"), ("POST", "/api-keys"), ("GET", "/login")):
        r = await browser.request(method, path, headers=headers, data={"name": "x"})
        assert_problem(r, 403, "auth.forbidden")
    assert len(await accounts.list_keys(runtime=app.state.runtime, email=EMAIL)) == 1


async def test_wrong_password_is_refused(browser: httpx.AsyncClient) -> None:
    token = csrf_of(await browser.get("/login"))
    for email, password in ((EMAIL, "wrong password"), ("nobody@example.com", PASSWORD)):
        r = await browser.post(
            "/login", data={"email": email, "password": password, "csrf_token": token}
        )
        assert r.status_code == 401 and "Wrong email or password." in r.text
    assert (await browser.get("/api-keys")).status_code == 303


async def test_csrf_is_checked_on_every_form(app: Starlette, browser: httpx.AsyncClient) -> None:
    r = await browser.post("/login", data={"email": EMAIL, "password": PASSWORD})
    assert_problem(r, 403, "auth.forbidden")
    await sign_in(browser)
    for data in ({"name": "x"}, {"name": "x", "csrf_token": "forged"}):
        assert_problem(await browser.post("/api-keys", data=data), 403, "auth.forbidden")
    assert await accounts.list_keys(runtime=app.state.runtime, email=EMAIL) == []


async def test_key_rotation_through_the_dashboard(
    app: Starlette, browser: httpx.AsyncClient
) -> None:
    token = await sign_in(browser)
    r = await browser.post("/api-keys", data={"name": "catalogue sync", "csrf_token": token})
    # Post/redirect/get: the POST answers with a redirect, so a reload cannot post again.
    assert r.status_code == 303 and r.headers["location"] == "/api-keys"
    shown = await browser.get("/api-keys")
    key = re.search(r'<code id="new-key">(pa_live_[A-Za-z0-9]+)</code>', shown.text)
    assert key
    new_key = key.group(1)
    page = await browser.get("/api-keys")  # the reload: the list, and no key in full
    assert new_key not in page.text and new_key[:12] in page.text and "catalogue sync" in page.text
    assert len(await accounts.list_keys(runtime=app.state.runtime, email=EMAIL)) == 1

    async with client_for(app, **{"X-Api-Key": new_key}) as api:
        assert (await api.get("/api/knowledge/docs")).status_code == 200
        r = await browser.post(f"/api-keys/{new_key[:12]}/disable", data={"csrf_token": token})
        assert r.status_code == 303
        assert_problem(await api.get("/api/knowledge/docs"), 401, "auth.unauthorized")
        # A delete that did not come from the confirmation page asks there first.
        r = await browser.post(f"/api-keys/{new_key[:12]}/delete", data={"csrf_token": token})
        assert r.status_code == 303 and r.headers["location"] == f"/api-keys/{new_key[:12]}/delete"
        assert len(await accounts.list_keys(runtime=app.state.runtime, email=EMAIL)) == 1
        confirm = await browser.get(r.headers["location"])
        assert confirm.status_code == 200 and 'name="confirm" value="yes"' in confirm.text
        r = await browser.post(
            f"/api-keys/{new_key[:12]}/delete", data={"csrf_token": token, "confirm": "yes"}
        )
        assert r.status_code == 303 and r.headers["location"] == "/api-keys"
    assert await accounts.list_keys(runtime=app.state.runtime, email=EMAIL) == []


async def test_a_key_name_with_nul_is_refused(app: Starlette, browser: httpx.AsyncClient) -> None:
    token = await sign_in(browser)
    r = await browser.post("/api-keys", data={"name": "a\x00b", "csrf_token": token})
    assert r.status_code == 422 and "U+0000" in r.text  # PostgreSQL's text cannot hold it
    assert await accounts.list_keys(runtime=app.state.runtime, email=EMAIL) == []


async def test_users_cannot_touch_other_users_keys(
    app: Starlette, browser: httpx.AsyncClient
) -> None:
    await accounts.create_user(runtime=app.state.runtime, email="other@example.com")
    other = await accounts.create_key(runtime=app.state.runtime, email="other@example.com")
    token = await sign_in(browser)
    r = await browser.post(f"/api-keys/{other.prefix}/disable", data={"csrf_token": token})
    assert_problem(r, 404, "account.key_not_found")
    keys = await accounts.list_keys(runtime=app.state.runtime, email="other@example.com")
    assert [k.status for k in keys] == ["active"]


async def test_sign_out(browser: httpx.AsyncClient) -> None:
    token = await sign_in(browser)
    r = await browser.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert (await browser.get("/api-keys")).status_code == 303
