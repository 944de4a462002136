"""Dashboard sessions: revoked server-side at sign-out (across restarts and processes), sign-in
limited per account and per address, argon2 kept off the event loop."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
from sqlalchemy import delete
from sqlmodel import col, select
from starlette.applications import Starlette

from app.models import DashboardSession, User
from app.services import accounts, hashing
from tests.conftest import AppFactory, client_for

pytestmark = pytest.mark.anyio

EMAIL = "web@example.com"
OTHER = "other@example.com"
PASSWORD = "correct horse battery"
SECRET = "s" * 40  # a fixed secret, so that two app instances accept each other's cookies


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def browser_at(app: Starlette, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def users(app: Starlette, *emails: str) -> None:
    for email in emails:
        await accounts.create_user(runtime=app.state.runtime, email=email, password=PASSWORD)


async def attempt(browser: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    token = csrf_of(await browser.get("/login"))
    return await browser.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )


async def sign_in(browser: httpx.AsyncClient, email: str = EMAIL) -> str:
    r = await attempt(browser, email, PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/api-keys", r.text
    return csrf_of(await browser.get("/api-keys"))


def copy_of(browser: httpx.AsyncClient, app: Starlette) -> httpx.AsyncClient:
    """Another browser holding the same cookies (a copied cookie)."""
    thief = client_for(app)
    for name, value in browser.cookies.items():
        thief.cookies.set(name, value)
    return thief


async def test_sign_out_revokes_the_session(app: Starlette) -> None:
    await users(app, EMAIL)
    async with browser_at(app) as browser:
        token = await sign_in(browser)
        async with copy_of(browser, app) as thief:
            assert (await thief.get("/api-keys")).status_code == 200
            r = await browser.post("/logout", data={"csrf_token": token})
            assert r.status_code == 303 and r.headers["location"] == "/login"
            # The copied cookie is signed and unexpired, but its session is gone.
            r = await thief.get("/api-keys")
            assert r.status_code == 303 and r.headers["location"] == "/login"
            r = await thief.post("/api-keys", data={"name": "stolen", "csrf_token": token})
            assert r.status_code == 303 and r.headers["location"] == "/login"
    assert await accounts.list_keys(runtime=app.state.runtime, email=EMAIL) == []


async def test_sessions_survive_restarts_and_are_shared_between_processes(
    make_app: AppFactory, tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    first = await make_app(data_dir=data, session_secret=SECRET)
    await users(first, EMAIL)
    async with browser_at(first) as browser:
        token = await sign_in(browser)
        # A second server process on the same database (or this one, restarted).
        second = await make_app(data_dir=data, session_secret=SECRET)
        async with copy_of(browser, second) as elsewhere:
            assert (await elsewhere.get("/api-keys")).status_code == 200
            r = await elsewhere.post("/logout", data={"csrf_token": token})
            assert r.status_code == 303
        # Signed out there: signed out here too.
        r = await browser.get("/api-keys")
        assert r.status_code == 303 and r.headers["location"] == "/login"


async def test_sign_in_is_limited_per_account(make_app: AppFactory) -> None:
    app = await make_app(signin_attempts_per_account=3, signin_attempts_per_address=100)
    await users(app, EMAIL, OTHER)
    # Successes count too (each costs an argon2 check), from whichever address.
    async with browser_at(app, "10.0.0.1") as browser:
        await sign_in(browser)
    for i in range(2):
        async with browser_at(app, f"10.0.1.{i}") as browser:
            r = await attempt(browser, EMAIL, "wrong password")
            assert r.status_code == 401 and "Wrong email or password." in r.text
    async with browser_at(app, "10.0.2.1") as browser:
        # The right password is refused now, before it is checked: a guess that happened to
        # be right cannot be told apart.
        r = await attempt(browser, EMAIL.upper(), PASSWORD)
        assert r.status_code == 429 and "Too many sign-in attempts" in r.text
        assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
        assert (await browser.get("/api-keys")).status_code == 303
        # Other accounts are not affected.
        await sign_in(browser, OTHER)


async def test_sign_in_is_limited_per_address(make_app: AppFactory) -> None:
    app = await make_app(signin_attempts_per_account=100, signin_attempts_per_address=3)
    await users(app, EMAIL)
    async with browser_at(app, "10.0.0.1") as browser:
        for i in range(3):  # spraying one password over many accounts
            r = await attempt(browser, f"user{i}@example.com", PASSWORD)
            assert r.status_code == 401
        r = await attempt(browser, EMAIL, PASSWORD)
        assert r.status_code == 429 and "Too many sign-in attempts" in r.text
        assert (await browser.get("/api-keys")).status_code == 303
    async with browser_at(app, "10.0.0.2") as browser:
        await sign_in(browser)


async def test_sign_in_limits_count_clients_behind_trusted_proxies(make_app: AppFactory) -> None:
    app = await make_app(signin_attempts_per_address=2, trusted_proxies=["10.9.0.0/16"])
    await users(app, EMAIL)
    async with browser_at(app, "10.9.0.1") as proxy:
        proxy.headers["X-Forwarded-For"] = "203.0.113.7"
        for _ in range(2):
            assert (await attempt(proxy, EMAIL, "wrong password")).status_code == 401
        assert (await attempt(proxy, EMAIL, PASSWORD)).status_code == 429
        proxy.headers["X-Forwarded-For"] = "203.0.113.8"
        await sign_in(proxy)


async def test_argon2_runs_off_the_event_loop(app: Starlette) -> None:
    """Every argon2 hash and check of the server runs on a worker thread: calls into the
    argon2 modules are watched on the event loop's thread (a profiler is per thread)."""
    on_loop: list[str] = []

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and "argon2" in frame.f_code.co_filename:
            on_loop.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(watch)
    try:
        hashing.verify_password("probe", None)  # the watch does see argon2 on this thread
        seen_directly = list(on_loop)
        on_loop.clear()
        await users(app, EMAIL)  # hashes
        async with browser_at(app) as browser:
            assert (await attempt(browser, EMAIL, "wrong password")).status_code == 401
            assert (await attempt(browser, "nobody@example.com", PASSWORD)).status_code == 401
            await sign_in(browser)
    finally:
        sys.setprofile(None)
    assert seen_directly
    assert on_loop == []


async def test_deleting_a_user_ends_their_sessions(app: Starlette) -> None:
    await users(app, EMAIL)
    async with browser_at(app) as browser:
        await sign_in(browser)
        async with app.state.runtime.db.write() as session:
            await session.execute(delete(User).where(col(User.email) == EMAIL))
        r = await browser.get("/api-keys")
        assert r.status_code == 303 and r.headers["location"] == "/login"
    async with app.state.runtime.db.read() as session:
        assert (await session.execute(select(DashboardSession))).first() is None
