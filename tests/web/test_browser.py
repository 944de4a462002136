"""The dashboard in a real headless Chromium (Playwright) against a real `personaizer serve`:
signing in, key creation that a reload cannot repeat, delete behind a confirmation, every page
without horizontal overflow at 390 px with its tables stacked, readable times, the playground,
and writing documents and personas through the forms at desktop and phone width.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.live import LiveServer
from tests.web.conftest import DESKTOP, PHONE

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "correct horse battery"
DOCS = [
    {
        "external_id": "faq:shipping",
        "title": "Shipping times",
        "content": "Orders ship within two business days. Delivery takes three to five days.",
    },
    {
        "external_id": "faq:returns",
        "title": "Returns policy",
        "content": "You can return any item within 30 days for a full refund.",
    },
    {
        "external_id": "guide:espresso-machine-setup-for-the-very-first-time-with-a-long-identifier",
        "title": "Setting up the espresso machine, a title long enough to wrap on a phone screen",
        "content": "Fill the water tank, grind the beans finely and tamp them firmly.",
    },
]
READABLE = re.compile(r"^\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC$")


def new_user(server: LiveServer) -> tuple[str, str]:
    """A user with a password and an API key on the shared server; (email, key)."""
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    r = server.run(
        "users", "create", email, "--plan", "unlimited", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert r.returncode == 0, r.stderr
    r = server.run("keys", "create", email)
    assert r.returncode == 0, r.stderr
    return email, r.stdout.strip().splitlines()[-1]


def seed(server: LiveServer, key: str) -> str:
    """DOCS and a persona with the first two attached; the persona's id."""
    with httpx.Client(base_url=server.url, headers={"X-Api-Key": key}, timeout=60) as api:
        assert api.put("/api/knowledge/docs", json={"items": DOCS}).status_code == 200
        r = api.post(
            "/api/personas", json={"name": "Support bot", "instructions": "Answer from the FAQ."}
        )
        persona_id: str = r.json()["id"]
        r = api.put(
            f"/api/personas/{persona_id}/knowledge",
            json={"external_ids": [d["external_id"] for d in DOCS[:2]]},
        )
        assert r.status_code == 200, r.text
    return persona_id


@dataclass(frozen=True)
class Account:
    email: str
    key: str
    persona_id: str


@pytest.fixture(scope="module")
def account(live_server: LiveServer) -> Account:
    """One user with DOCS and a persona for this module's tests (each signs in afresh, in a
    browser context of its own); the CLI calls are the slow part."""
    email, key = new_user(live_server)
    return Account(email, key, seed(live_server, key))


def sign_in(page: Page, server: LiveServer, email: str) -> None:
    page.goto(f"{server.url}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/api-keys")


def key_rows(page: Page) -> int:
    return page.locator("#keys tbody tr").count()


def test_key_creation_survives_a_reload_and_delete_asks_first(
    page: Page, console_errors: list[str], live_server: LiveServer, account: Account
) -> None:
    sign_in(page, live_server, account.email)
    before = key_rows(page)

    page.fill("#name", "catalogue sync")
    page.click("text=Create key")
    page.wait_for_url(f"{live_server.url}/api-keys")  # redirected after the POST
    new_key = page.inner_text("#new-key")
    assert new_key.startswith("pa_live_") and key_rows(page) == before + 1

    response = page.reload()  # a GET: no form is sent again
    assert response is not None and response.request.method == "GET"
    assert response.headers["cache-control"] == "no-store"
    assert page.locator("#new-key").count() == 0 and new_key not in page.content()
    assert key_rows(page) == before + 1
    with httpx.Client(base_url=live_server.url, headers={"X-Api-Key": new_key}) as api:
        assert api.get("/api/personas").status_code == 200

    row = page.locator("#keys tbody tr", has_text="catalogue sync")
    row.get_by_role("link", name="Delete…").click()
    assert page.url == f"{live_server.url}/api-keys/{new_key[:12]}/delete"
    assert "Delete the key" in page.inner_text("h2")
    page.get_by_role("link", name="Cancel").click()  # nothing happens
    assert key_rows(page) == before + 1

    page.locator("#keys tbody tr", has_text="catalogue sync").get_by_role(
        "link", name="Delete…"
    ).click()
    page.get_by_role("button", name="Delete this key").click()
    page.wait_for_url(f"{live_server.url}/api-keys")
    assert key_rows(page) == before and "catalogue sync" not in page.inner_text("main")
    with httpx.Client(base_url=live_server.url, headers={"X-Api-Key": new_key}) as api:
        assert api.get("/api/personas").status_code == 401
    assert console_errors == []


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0: no sideways scrolling)."""
    width: int = page.evaluate(
        "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - window.innerWidth"
    )
    return width


def test_every_page_fits_a_phone_and_stacks_its_tables(
    page: Page, console_errors: list[str], live_server: LiveServer, account: Account
) -> None:
    persona_id = account.persona_id
    sign_in(page, live_server, account.email)
    page.fill("#name", "a key with a rather long name to see how the stacked row wraps")
    page.click("text=Create key")
    prefix = page.inner_text("#new-key")[:12]
    paths = {
        "/dashboard": None,
        "/dashboard/documents": "#documents",
        f"/dashboard/documents/{DOCS[2]['external_id']}": None,
        "/dashboard/personas": "#personas",
        f"/dashboard/personas/{persona_id}": "#attached",
        "/dashboard/search?q=when+will+my+order+arrive&mode=hybrid": None,
        "/api-keys": "#keys",
        f"/api-keys/{prefix}/delete": None,
    }
    for size in (PHONE, DESKTOP):
        page.set_viewport_size(size)  # type: ignore[arg-type]
        for path, table in paths.items():
            page.goto(live_server.url + path)
            assert page.url == live_server.url + path  # signed in: no redirect
            assert overflow(page) <= 0, (size, path)
            # The page's own stylesheet applied: the CSP let its nonce through.
            header = page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
            assert header == "rgb(29, 35, 48)", path
            if table is None:
                continue
            row = page.locator(f"{table} tbody tr").first
            shown = row.evaluate("e => getComputedStyle(e).display")
            head = page.locator(f"{table} thead").evaluate("e => getComputedStyle(e).display")
            if size is PHONE:
                assert (shown, head) == ("block", "none"), path  # stacked, labelled cells
                label = row.locator("td").first.evaluate(
                    "e => getComputedStyle(e, '::before').content"
                )
                assert label not in ("", "none", "normal"), path
            else:
                assert (shown, head) == ("table-row", "table-header-group"), path
    assert console_errors == []


def test_times_are_readable_with_the_exact_time_kept(
    page: Page, live_server: LiveServer, account: Account
) -> None:
    sign_in(page, live_server, account.email)
    for path in ("/api-keys", "/dashboard/documents", "/dashboard/personas", "/dashboard"):
        page.goto(live_server.url + path)
        times = page.locator("main time")
        assert times.count() > 0, path
        for i in range(times.count()):
            t = times.nth(i)
            exact = t.get_attribute("datetime") or ""
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", exact), exact
            assert t.get_attribute("title") == exact
            assert READABLE.match(t.inner_text()), t.inner_text()


def test_documents_personas_and_the_playground(
    page: Page, console_errors: list[str], live_server: LiveServer, account: Account
) -> None:
    persona_id = account.persona_id
    sign_in(page, live_server, account.email)

    page.get_by_role("link", name="Documents").click()
    assert page.inner_text("#doc-total") == "3 in all"
    page.fill("#q", "faq:")
    page.get_by_role("button", name="Find").click()
    ids = page.locator("#documents td[data-label=external_id]").all_inner_texts()
    assert ids == ["faq:returns", "faq:shipping"]
    page.get_by_role("link", name="faq:shipping").click()
    assert page.inner_text("#content") == DOCS[0]["content"]

    page.get_by_role("link", name="Personas").first.click()
    page.get_by_role("link", name="Support bot").click()
    assert page.url == f"{live_server.url}/dashboard/personas/{persona_id}"
    attached = page.locator("#attached td[data-label=external_id]").all_inner_texts()
    assert attached == ["faq:returns", "faq:shipping"]

    page.get_by_role("link", name="Search", exact=True).click()
    page.fill("#q", "how long does delivery take")
    page.select_option("#mode", "semantic")
    page.select_option("#persona", persona_id)
    page.get_by_role("button", name="Search").click()
    hits = page.locator("#results .hit")
    assert hits.count() == 2  # only the persona's two documents
    assert "faq:shipping" in hits.first.inner_text()
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    assert DOCS[0]["content"] in hits.first.inner_text()
    # The form keeps what was asked, so the next search starts from it.
    assert page.input_value("#mode") == "semantic" and page.input_value("#persona") == persona_id
    assert console_errors == []


def test_signed_out_pages_send_the_browser_to_sign_in(
    page: Page, live_server: LiveServer, account: Account
) -> None:
    for path in ("/dashboard", "/dashboard/search", "/api-keys"):
        page.goto(live_server.url + path)
        assert page.url == f"{live_server.url}/login"
    sign_in(page, live_server, account.email)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{live_server.url}/login")
    page.goto(f"{live_server.url}/dashboard")
    assert page.url == f"{live_server.url}/login"


def no_overflow(page: Page) -> None:
    assert overflow(page) <= 0, page.url


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_writing_documents_and_personas(
    page: Page, console_errors: list[str], live_server: LiveServer, size: dict[str, int]
) -> None:
    """Paste a document, upload a file, edit it, make a persona, attach the first document,
    set a filter that takes the second, search as the persona, delete the document: each step
    a form that posts, redirects and says once what it did, at desktop and phone width."""
    email, key = new_user(live_server)
    page.set_viewport_size(size)  # type: ignore[arg-type]
    url = live_server.url
    sign_in(page, live_server, email)

    page.get_by_role("link", name="Documents").click()
    page.get_by_role("link", name="Add a document").click()
    no_overflow(page)
    page.fill("#external_id", "faq:shipping")
    page.fill("#title", "Shipping times")
    page.fill("#content", DOCS[0]["content"])
    page.fill("#metadata", "lang: en")  # not JSON: refused, the rest kept
    page.get_by_role("button", name="Add document").click()
    assert "not JSON" in page.inner_text("#metadata-error")
    assert page.input_value("#content") == DOCS[0]["content"]
    assert page.input_value("#title") == "Shipping times"
    no_overflow(page)
    page.fill("#metadata", '{"lang": "en"}')
    page.get_by_role("button", name="Add document").click()
    page.wait_for_url(f"{url}/dashboard/documents/faq:shipping")
    assert page.inner_text("#flash") == "Document faq:shipping created."
    assert page.inner_text("#content") == DOCS[0]["content"]

    page.goto(f"{url}/dashboard/new-document")
    page.set_input_files(
        "#file",
        files=[
            {
                "name": "espresso.md",
                "mimeType": "text/markdown",
                "buffer": b"# Espresso guide\n\nGrind the beans finely and tamp them firmly.\n",
            }
        ],
    )
    page.fill("#upload_metadata", '{"source": "handbook"}')
    page.get_by_role("button", name="Upload file").click()
    page.wait_for_url(f"{url}/dashboard/documents/espresso.md")
    assert page.inner_text("#flash") == "Document espresso.md created."
    assert page.inner_text("main h2") == "Espresso guide"

    page.get_by_role("link", name="Edit").click()
    no_overflow(page)
    page.fill("#title", "Espresso machine guide")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"{url}/dashboard/documents/espresso.md")
    assert page.inner_text("#flash") == "Document espresso.md saved."
    assert page.inner_text("main h2") == "Espresso machine guide"
    page.reload()
    assert page.locator("#flash").count() == 0  # said once

    page.get_by_role("link", name="Personas").first.click()
    page.get_by_role("link", name="New persona").click()
    no_overflow(page)
    page.fill("#name", "Barista")
    page.fill("#instructions", "You answer questions about coffee.\nCite your sources.")
    page.get_by_role("button", name="Create persona").click()
    page.wait_for_url(re.compile(r".*/dashboard/personas/per_[0-9A-Z]+$"))
    persona_url = page.url
    persona_id = persona_url.rsplit("/", 1)[1]
    assert page.inner_text("#flash") == "Persona Barista created."

    page.get_by_role("link", name="Attach documents or set the filter").click()
    no_overflow(page)
    page.get_by_label("faq:shipping").check()
    page.get_by_role("button", name="Save attached documents").click()
    page.wait_for_url(persona_url)
    assert "1 added" in page.inner_text("#flash")
    page.get_by_role("link", name="Attach documents or set the filter").click()
    page.fill("#filter_metadata", '{"source": "handbook"}')
    page.get_by_role("button", name="Save filter").click()
    page.wait_for_url(persona_url)
    assert page.inner_text("#flash") == "Knowledge filter saved."
    via = dict(
        zip(
            page.locator("#attached td[data-label=external_id]").all_inner_texts(),
            page.locator("#attached td[data-label=via]").all_inner_texts(),
            strict=True,
        )
    )
    assert via == {"espresso.md": "filter", "faq:shipping": "attached"}
    no_overflow(page)

    page.get_by_role("link", name="Search", exact=True).click()
    page.fill("#q", "how fine should the coffee be ground")
    page.select_option("#mode", "semantic")
    page.select_option("#persona", persona_id)
    page.get_by_role("button", name="Search").click()
    assert "espresso.md" in page.locator("#results .hit").first.inner_text()

    page.goto(f"{url}/dashboard/documents/espresso.md")
    page.get_by_role("link", name="Delete…").click()
    no_overflow(page)
    page.get_by_role("button", name="Delete this document").click()
    page.wait_for_url(f"{url}/dashboard/documents")
    assert page.inner_text("#flash") == "Document espresso.md deleted."
    assert page.locator("#documents td[data-label=external_id]").all_inner_texts() == [
        "faq:shipping"
    ]
    page.goto(persona_url)
    assert page.locator("#attached td[data-label=external_id]").all_inner_texts() == [
        "faq:shipping"
    ]

    # Every write is the API's: the same user's key reads it back.
    with httpx.Client(base_url=url, headers={"X-Api-Key": key}) as api:
        persona = api.get(f"/api/personas/{persona_id}").json()
        assert persona["knowledge_external_ids"] == ["faq:shipping"]
        assert persona["knowledge_filter"]["metadata"] == {"source": "handbook"}
        assert api.get("/api/knowledge/docs/by-external-id/espresso.md").status_code == 404
        doc = api.get("/api/knowledge/docs/by-external-id/faq:shipping").json()
        assert doc["metadata"] == {"lang": "en"}
    # Chromium logs the refused form's status; nothing else went wrong (no CSP block either).
    (refused,) = console_errors
    assert refused.endswith("the server responded with a status of 422 (Unprocessable Entity)")
