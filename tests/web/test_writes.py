"""The dashboard's writing forms through the full ASGI stack, on both engines: each write lands
in the database and shows over REST (and in the changes feed), bad input re-renders the form
with what was typed and changes nothing, every form checks its CSRF token, every success
redirects (303) to a page that says once what happened, and only a signed-in session writes."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html import unescape
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.services import accounts
from tests.conftest import AppFactory, assert_problem, client_for, plan_config

pytestmark = pytest.mark.anyio

EMAIL = "writer@example.com"
PASSWORD = "correct horse battery"
DOC = "/dashboard/documents"
SHIPPING = "Orders ship within two business days.\nDelivery takes three to five days."


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def flash_of(page: httpx.Response) -> str | None:
    match = re.search(r'<div class="card flash" role="status" id="flash"><p>([^<]*)</p>', page.text)
    return unescape(match[1]) if match else None


def field_error(page: httpx.Response, field: str) -> str:
    """The message shown at a field (`<p class="field-error" id="FIELD-error">`)."""
    match = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)</p>', page.text)
    assert match, f"no message at {field}: {page.text}"
    assert f'aria-describedby="{field}-error"' in page.text  # the input names its message
    return unescape(match[1])


@dataclass
class Dash:
    """A signed-in browser, its CSRF token, and an API client of the same user."""

    app: Starlette
    browser: httpx.AsyncClient
    api: httpx.AsyncClient
    token: str

    async def post(self, path: str, data: dict[str, Any] | None = None) -> httpx.Response:
        return await self.browser.post(path, data={**(data or {}), "csrf_token": self.token})

    async def upload(self, name: str, content: bytes, **data: str) -> httpx.Response:
        return await self.browser.post(
            "/dashboard/new-document/upload",
            data={**data, "csrf_token": self.token},
            files={"file": (name, content, "application/octet-stream")},
        )

    async def followed(self, r: httpx.Response, location: str) -> httpx.Response:
        """`r` is a post/redirect/get to `location`; the page it leads to says what happened
        once, and a reload does not say it again."""
        assert r.status_code == 303, r.text
        assert r.headers["location"] == location
        page = await self.browser.get(location)
        assert page.status_code == 200 and flash_of(page), page.text
        again = await self.browser.get(location)
        assert flash_of(again) is None
        return page

    async def docs(self) -> list[dict[str, Any]]:
        r = await self.api.get("/api/knowledge/docs", params={"include_content": "true"})
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def changes(self) -> list[tuple[str, str]]:
        r = await self.api.get("/api/knowledge/changes")
        return [(c["op"], c["external_id"]) for c in r.json()["changes"]]


@asynccontextmanager
async def dashboard(app: Starlette, plan: str = "unlimited") -> AsyncIterator[Dash]:
    runtime = app.state.runtime
    await accounts.create_user(runtime=runtime, email=EMAIL, password=PASSWORD, plan_id=plan)
    key = (await accounts.create_key(runtime=runtime, email=EMAIL)).key
    async with client_for(app) as browser, client_for(app, **{"X-Api-Key": key}) as api:
        token = csrf_of(await browser.get("/login"))
        r = await browser.post(
            "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}
        )
        assert r.status_code == 303
        yield Dash(app, browser, api, csrf_of(await browser.get("/dashboard/new-document")))


@pytest.fixture
async def dash(app: Starlette) -> AsyncIterator[Dash]:
    async with dashboard(app) as d:
        yield d


async def test_paste_edit_and_delete_a_document(dash: Dash) -> None:
    r = await dash.post(
        "/dashboard/new-document",
        {
            "external_id": "faq:shipping",
            "title": "Shipping times",
            # A browser sends a text area's line ends as CRLF.
            "content": SHIPPING.replace("\n", "\r\n"),
            "metadata": '{"lang": "en"}',
        },
    )
    page = await dash.followed(r, f"{DOC}/faq:shipping")
    assert flash_of(page) == "Document faq:shipping created."
    (doc,) = await dash.docs()
    assert (doc["external_id"], doc["title"], doc["content"], doc["metadata"]) == (
        "faq:shipping", "Shipping times", SHIPPING, {"lang": "en"}
    )  # fmt: skip
    assert doc["chunk_count"] >= 1
    hits = await dash.api.post("/api/knowledge/search", json={"query": "delivery time"})
    assert hits.json()["results"][0]["external_id"] == "faq:shipping"

    # The edit form shows the document as it is; sent back unchanged, nothing is written.
    edit = await dash.browser.get(f"{DOC}/faq:shipping/edit")
    assert edit.status_code == 200 and "Shipping times" in edit.text
    # Like every dashboard page: no script, never stored.
    assert "default-src 'none'" in edit.headers["content-security-policy"]
    assert edit.headers["cache-control"] == "no-store"
    shown = re.search(r'<textarea id="content"[^>]*>\n(.*?)</textarea>', edit.text, re.S)
    assert shown and unescape(shown[1]) == SHIPPING
    unchanged = {
        "title": "Shipping times",
        "content": SHIPPING.replace("\n", "\r\n"),
        "metadata": '{\r\n  "lang": "en"\r\n}',
    }
    r = await dash.post(f"{DOC}/faq:shipping/edit", unchanged)
    page = await dash.followed(r, f"{DOC}/faq:shipping")
    assert flash_of(page) == "No change: nothing was written."
    assert (await dash.docs())[0]["updated_at"] == doc["updated_at"]

    r = await dash.post(
        f"{DOC}/faq:shipping/edit",
        {**unchanged, "title": "Shipping", "content": "Orders ship the same day.", "metadata": ""},
    )
    page = await dash.followed(r, f"{DOC}/faq:shipping")
    assert flash_of(page) == "Document faq:shipping saved."
    (edited,) = await dash.docs()
    assert (edited["title"], edited["content"], edited["metadata"]) == (
        "Shipping", "Orders ship the same day.", {}
    )  # fmt: skip
    assert edited["updated_at"] > doc["updated_at"]

    # Delete asks first, on a page of its own.
    r = await dash.post(f"{DOC}/faq:shipping/delete")
    assert r.status_code == 303 and r.headers["location"] == f"{DOC}/faq:shipping/delete"
    assert len(await dash.docs()) == 1
    confirm = await dash.browser.get(r.headers["location"])
    assert confirm.status_code == 200 and 'name="confirm" value="yes"' in confirm.text
    r = await dash.post(f"{DOC}/faq:shipping/delete", {"confirm": "yes"})
    page = await dash.followed(r, DOC)
    assert flash_of(page) == "Document faq:shipping deleted."
    assert await dash.docs() == []
    r = await dash.api.get("/api/knowledge/docs/by-external-id/faq:shipping")
    assert_problem(r, 404, "knowledge.not_found")
    # The feed saw each write: created, updated (the no_op wrote nothing), deleted.
    assert await dash.changes() == [("delete", "faq:shipping")]


async def test_upload_reads_files_as_sync_does(dash: Dash) -> None:
    markdown = (
        b"```sh\n# a comment in a code block, not the title\n```\n\n"
        b"# Returns policy\n\nReturn any item within 30 days for a full refund.\n"
    )
    r = await dash.upload("returns.md", markdown)
    page = await dash.followed(r, f"{DOC}/returns.md")
    assert flash_of(page) == "Document returns.md created."
    # A gzipped file, Latin-1 text, named and titled by the form, with metadata.
    latin = "Café crème: the espresso machine needs descaling every month.".encode("latin-1")
    r = await dash.upload(
        "notes.txt.gz",
        gzip.compress(latin),
        external_id="kb:descaling",
        title="Descaling",
        metadata='{"source": "kb"}',
    )
    await dash.followed(r, f"{DOC}/kb:descaling")
    # A file without a title of its own is titled by its name.
    r = await dash.upload("Opening hours.txt", b"We open at nine.")
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith(f"{DOC}/Opening-hours--") and location.endswith(".txt")
    docs = {d["external_id"]: d for d in await dash.docs()}
    assert docs["returns.md"]["title"] == "Returns policy"
    assert docs["returns.md"]["content"] == markdown.decode()
    assert docs["kb:descaling"]["content"] == latin.decode("latin-1")
    assert (docs["kb:descaling"]["title"], docs["kb:descaling"]["metadata"]) == (
        "Descaling", {"source": "kb"}
    )  # fmt: skip
    (hours,) = (d for d in docs.values() if d["external_id"].startswith("Opening-hours"))
    assert hours["title"] == "Opening hours"

    # What sync would skip is refused here, at the file field, and nothing is saved.
    for name, content, message in (
        ("logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "unsupported type .png"),
        ("empty.md", b"  \n", "empty"),
        ("broken.pdf", b"%PDF-1.4 not really", "not a readable PDF"),
    ):
        r = await dash.upload(name, content, title="kept")
        assert r.status_code == 422, r.text
        assert message in field_error(r, "file"), name
        assert 'value="kept"' in r.text  # what was typed is kept
    r = await dash.upload("", b"")  # the form sent without choosing a file
    assert r.status_code == 422 and field_error(r, "file") == "choose a file to upload"
    assert len(await dash.docs()) == 3


async def test_uploads_are_bounded_like_the_api(make_app: AppFactory) -> None:
    plan = plan_config("small", doc_chars=100)
    app = await make_app(plans={"small": plan}, max_body_bytes=4096)
    async with dashboard(app, plan="small") as dash:
        r = await dash.upload("big.txt", b"x" * 5000)
        assert r.status_code == 413
        assert "4,096 bytes" in field_error(r, "file")
        r = await dash.upload("long.txt", b"y" * 101)
        assert r.status_code == 422
        assert field_error(r, "file") == "101 characters; limit 100"
        r = await dash.post("/dashboard/new-document", {"external_id": "a", "content": "z" * 101})
        assert r.status_code == 422 and field_error(r, "content") == "101 characters; limit 100"
        r = await dash.post("/dashboard/new-document", {"external_id": "a", "content": "z" * 5000})
        assert r.status_code == 413 and "4,096 bytes" in field_error(r, "content")
        assert await dash.docs() == []


async def test_bad_document_input_changes_nothing(dash: Dash) -> None:
    r = await dash.post("/dashboard/new-document", {"external_id": "kept", "content": "Kept."})
    assert r.status_code == 303
    before = await dash.docs()
    feed = await dash.changes()
    good = {"external_id": "new-doc", "title": "A title", "content": "Some text.", "metadata": ""}
    for change, field, message in (
        ({"external_id": "bad id"}, "external_id", "external_id must be 1-128 characters"),
        ({"external_id": ""}, "external_id", "external_id must be 1-128 characters"),
        ({"external_id": "kept"}, "external_id", "kept exists already"),
        ({"content": " \r\n\t"}, "content", "content must not be blank"),
        ({"title": "t" * 513}, "title", "at most 512 characters"),
        ({"metadata": "{lang: en}"}, "metadata", "not JSON"),
        ({"metadata": '["en"]'}, "metadata", "a JSON object is needed"),
        ({"metadata": '{"n": NaN}'}, "metadata", "not JSON"),
        ({"metadata": '{"a": "' + "x" * 9000 + '"}'}, "metadata", "at most 8 KiB"),
    ):
        sent = {**good, **change}
        r = await dash.post("/dashboard/new-document", sent)
        assert r.status_code == 422, (change, r.text)
        assert message in field_error(r, field), change
        assert "Nothing was saved" in r.text
        # The form comes back as it was sent.
        if sent["title"] and len(sent["title"]) < 100:
            assert f'value="{sent["title"]}"' in r.text
        assert "Some text." in r.text or "content" in change

    # An edit refused alike leaves the document as it was.
    r = await dash.post(f"{DOC}/kept/edit", {"content": "", "title": "New"})
    assert r.status_code == 422 and "must not be blank" in field_error(r, "content")
    assert 'value="New"' in r.text
    r = await dash.post(f"{DOC}/kept/edit", {"content": "x", "metadata": "[]"})
    assert r.status_code == 422 and "a JSON object is needed" in field_error(r, "metadata")
    assert await dash.docs() == before and await dash.changes() == feed

    # A document that is not there (or not the user's) is the API's 404.
    assert_problem(await dash.browser.get(f"{DOC}/nope/edit"), 404, "knowledge.not_found")
    r = await dash.post(f"{DOC}/nope/edit", {"content": "x"})
    assert_problem(r, 404, "knowledge.not_found")
    r = await dash.post(f"{DOC}/bad%20id/edit", {"content": "x"})
    assert_problem(r, 422, "knowledge.invalid_external_id")


async def test_quota_shows_the_plan_limit(make_app: AppFactory) -> None:
    plan = plan_config("tiny", knowledge_docs=1, personas=1)
    app = await make_app(plans={"tiny": plan})
    async with dashboard(app, plan="tiny") as dash:
        r = await dash.post("/dashboard/new-document", {"external_id": "one", "content": "One."})
        assert r.status_code == 303
        r = await dash.post("/dashboard/new-document", {"external_id": "two", "content": "Two."})
        assert r.status_code == 403
        assert "This write would make 2 documents; the tiny plan allows 1." in r.text
        assert 'value="two"' in r.text
        r = await dash.post("/dashboard/new-persona", {"name": "First"})
        assert r.status_code == 303
        r = await dash.post("/dashboard/new-persona", {"name": "Second"})
        assert r.status_code == 403 and "The tiny plan allows 1 personas" in r.text
        assert [d["external_id"] for d in await dash.docs()] == ["one"]
        personas = (await dash.api.get("/api/personas")).json()["items"]
        assert [p["name"] for p in personas] == ["First"]


async def test_personas_create_edit_attach_filter_and_delete(dash: Dash) -> None:
    for external_id, content, metadata in (
        ("faq:shipping", SHIPPING, ""),
        ("faq:returns", "Return any item within 30 days.", ""),
        ("hb:espresso", "Grind the beans finely and tamp them firmly.", '{"source": "hb"}'),
    ):
        r = await dash.post(
            "/dashboard/new-document",
            {"external_id": external_id, "content": content, "metadata": metadata},
        )
        assert r.status_code == 303

    r = await dash.post(
        "/dashboard/new-persona",
        {
            "name": "Ava",
            "description": "Support",
            "instructions": "You are kind.\r\nAnswer from the sources.",
            "greeting": "",
            "metadata": '{"team": "support"}',
        },
    )
    assert r.status_code == 303
    location = r.headers["location"]
    persona_id = location.rsplit("/", 1)[1]
    page = await dash.followed(r, location)
    assert flash_of(page) == "Persona Ava created."
    persona = (await dash.api.get(f"/api/personas/{persona_id}")).json()
    assert (persona["name"], persona["instructions"], persona["greeting"], persona["metadata"]) == (
        "Ava", "You are kind.\nAnswer from the sources.", None, {"team": "support"}
    )  # fmt: skip

    # Edit: sent back as shown, nothing changes; a new greeting does.
    edit = await dash.browser.get(f"{location}/edit")
    assert edit.status_code == 200 and 'value="Ava"' in edit.text
    same = {
        "name": "Ava",
        "description": "Support",
        "instructions": "You are kind.\r\nAnswer from the sources.",
        "greeting": "",
        "metadata": '{"team": "support"}',
    }
    r = await dash.post(f"{location}/edit", same)
    assert flash_of(await dash.followed(r, location)) == "No change: nothing was written."
    assert (await dash.api.get(f"/api/personas/{persona_id}")).json() == persona
    r = await dash.post(f"{location}/edit", {**same, "name": "Ava B", "greeting": "Hi!"})
    assert flash_of(await dash.followed(r, location)) == "Persona Ava B saved."
    persona = (await dash.api.get(f"/api/personas/{persona_id}")).json()
    assert (persona["name"], persona["greeting"]) == ("Ava B", "Hi!")
    for change, field, message in (
        ({"name": " "}, "name", "at least 1 character"),
        ({"greeting": "g" * 2001}, "greeting", "at most 2000 characters"),
        ({"metadata": "nope"}, "metadata", "not JSON"),
    ):
        r = await dash.post(f"{location}/edit", {**same, **change})
        assert r.status_code == 422 and message in field_error(r, field), change
        assert "You are kind." in r.text  # the form as sent
    r = await dash.post("/dashboard/new-persona", {"name": ""})
    assert r.status_code == 422 and "at least 1 character" in field_error(r, "name")
    assert (await dash.api.get(f"/api/personas/{persona_id}")).json() == persona

    # Attach: the checked boxes are the attached set.
    knowledge = await dash.browser.get(f"{location}/knowledge")
    assert knowledge.status_code == 200
    boxes = re.findall(r'name="external_id" value="([^"]+)"', knowledge.text)
    assert boxes == ["faq:returns", "faq:shipping", "hb:espresso"]
    r = await dash.browser.post(
        f"{location}/knowledge",
        data={"csrf_token": dash.token, "external_id": ["faq:shipping", "faq:returns"]},
    )
    page = await dash.followed(r, location)
    assert flash_of(page) == "Attached documents saved: 2 added, 0 removed, 2 attached."
    persona = (await dash.api.get(f"/api/personas/{persona_id}")).json()
    assert persona["knowledge_external_ids"] == ["faq:returns", "faq:shipping"]
    knowledge = await dash.browser.get(f"{location}/knowledge")
    assert re.findall(r'value="([^"]+)" checked', knowledge.text) == [
        "faq:returns", "faq:shipping"
    ]  # fmt: skip
    # A document gone meanwhile: refused, listed, nothing changes.
    r = await dash.browser.post(
        f"{location}/knowledge",
        data={"csrf_token": dash.token, "external_id": ["faq:returns", "gone"]},
    )
    assert r.status_code == 422 and "no document 'gone'" in field_error(r, "external_id")
    assert (await dash.api.get(f"/api/personas/{persona_id}")).json() == persona

    # The filter: metadata and prefixes, refused when wrong, cleared when asked.
    for sent, field, message in (
        ({"filter_metadata": "[1]"}, "filter_metadata", "a JSON object is needed"),
        ({"filter_prefixes": "bad prefix"}, "filter_prefixes", "external_id must be"),
    ):
        r = await dash.post(f"{location}/filter", {"action": "save", **sent})
        assert r.status_code == 422 and message in field_error(r, field), sent
    assert (await dash.api.get(f"/api/personas/{persona_id}")).json() == persona
    r = await dash.post(
        f"{location}/filter",
        {"action": "save", "filter_metadata": '{"source": "hb"}', "filter_prefixes": "faq:\r\n"},
    )
    assert flash_of(await dash.followed(r, location)) == "Knowledge filter saved."
    persona = (await dash.api.get(f"/api/personas/{persona_id}")).json()
    assert persona["knowledge_filter"] == {
        "metadata": {"source": "hb"}, "external_id_prefixes": ["faq:"]
    }  # fmt: skip
    r = await dash.post(
        f"{location}/filter", {"action": "save", "filter_metadata": '{"source": "hb"}'}
    )
    assert r.status_code == 303
    hits = await dash.api.post(
        "/api/knowledge/search",
        json={"query": "espresso beans", "persona_id": persona_id, "mode": "semantic"},
    )
    assert hits.json()["results"][0]["external_id"] == "hb:espresso"
    r = await dash.post(f"{location}/filter", {"action": "clear", "filter_metadata": "{}"})
    assert flash_of(await dash.followed(r, location)) == "Knowledge filter cleared."
    assert (await dash.api.get(f"/api/personas/{persona_id}")).json()["knowledge_filter"] is None

    # Delete asks first; the documents stay.
    r = await dash.post(f"{location}/delete")
    assert r.status_code == 303 and r.headers["location"] == f"{location}/delete"
    assert (await dash.api.get(f"/api/personas/{persona_id}")).status_code == 200
    assert (await dash.browser.get(f"{location}/delete")).status_code == 200
    r = await dash.post(f"{location}/delete", {"confirm": "yes"})
    page = await dash.followed(r, "/dashboard/personas")
    assert flash_of(page) == "Persona Ava B deleted; its documents stay."
    r = await dash.post(f"{location}/delete", {"confirm": "yes"})  # from a second tab
    page = await dash.followed(r, "/dashboard/personas")
    assert flash_of(page) == "That persona was already gone."
    assert_problem(await dash.api.get(f"/api/personas/{persona_id}"), 404, "persona.not_found")
    assert len(await dash.docs()) == 3


async def _state(dash: Dash) -> tuple[Any, ...]:
    return (
        await dash.docs(),
        (await dash.api.get("/api/personas")).json(),
        await dash.changes(),
    )


async def test_every_form_checks_csrf_and_only_a_session_writes(dash: Dash) -> None:
    r = await dash.post("/dashboard/new-document", {"external_id": "doc", "content": "Text."})
    assert r.status_code == 303
    r = await dash.post("/dashboard/new-persona", {"name": "Ava"})
    persona = r.headers["location"]
    before = await _state(dash)
    forms = [
        ("/dashboard/new-document", {"external_id": "other", "content": "More text."}),
        (f"{DOC}/doc/edit", {"content": "Changed."}),
        (f"{DOC}/doc/delete", {"confirm": "yes"}),
        ("/dashboard/new-persona", {"name": "Bea"}),
        (f"{persona}/edit", {"name": "Changed"}),
        (f"{persona}/delete", {"confirm": "yes"}),
        (f"{persona}/knowledge", {"external_id": "doc"}),
        (f"{persona}/filter", {"filter_prefixes": "doc"}),
    ]
    for path, data in forms:
        for token in ({}, {"csrf_token": "forged"}):
            r = await dash.browser.post(path, data={**data, **token})
            assert_problem(r, 403, "auth.forbidden")
    for token in ({}, {"csrf_token": "forged"}):
        r = await dash.browser.post(
            "/dashboard/new-document/upload", data=token, files={"file": ("a.txt", b"Text.")}
        )
        assert_problem(r, 403, "auth.forbidden")

    # An API key is refused on every writing route, even beside a live session.
    key = (await accounts.create_key(runtime=dash.app.state.runtime, email=EMAIL)).key
    for path, data in forms:
        r = await dash.browser.post(
            path, data={**data, "csrf_token": dash.token}, headers={"X-Api-Key": key}
        )
        assert_problem(r, 403, "auth.forbidden")
        if not path.endswith("/filter"):  # the one form without a page of its own
            r = await dash.browser.get(path, headers={"X-Api-Key": key})
            assert_problem(r, 403, "auth.forbidden")
    assert await _state(dash) == before

    # Signed out: the cookie (and its CSRF token) replayed writes nothing.
    async with client_for(dash.app) as replay:
        for name, value in dash.browser.cookies.items():
            replay.cookies.set(name, value)
        r = await dash.post("/logout")
        assert r.status_code == 303
        for path, data in forms:
            r = await replay.post(path, data={**data, "csrf_token": dash.token})
            assert r.status_code == 303 and r.headers["location"] == "/login", path
        r = await replay.post(
            "/dashboard/new-document/upload",
            data={"csrf_token": dash.token},
            files={"file": ("a.txt", b"Text.")},
        )
        assert r.status_code == 303 and r.headers["location"] == "/login"
        for path in ("/dashboard/new-document", "/dashboard/new-persona", f"{persona}/knowledge"):
            r = await replay.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/login"
    assert await _state(dash) == before


async def test_writes_are_charged_to_the_writes_rate_limit(make_app: AppFactory) -> None:
    plan = plan_config("slow", writes_per_minute=2)
    app = await make_app(plans={"slow": plan})
    async with dashboard(app, plan="slow") as dash:
        for i in range(2):
            r = await dash.post("/dashboard/new-persona", {"name": f"P{i}"})
            assert r.status_code == 303
        r = await dash.post("/dashboard/new-persona", {"name": "P2", "description": "kept"})
        assert r.status_code == 429 and "Try again in" in r.text and 'value="kept"' in r.text
        assert int(r.headers["retry-after"]) >= 1
        assert len((await dash.api.get("/api/personas")).json()["items"]) == 2


async def test_malformed_uploads_are_refused_not_failed(dash: Dash) -> None:
    upload = "/dashboard/new-document/upload"
    cases = [
        ("multipart/form-data", b"no boundary at all"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\ngarbage without headers"),
        ("multipart/form-data; boundary=xyz", b"not multipart at all"),
        ("text/plain", b"Text."),
    ]
    for content_type, body in cases:
        r = await dash.browser.post(upload, content=body, headers={"content-type": content_type})
        assert 400 <= r.status_code < 500, (content_type, body, r.status_code, r.text)
    # Two files where one is taken.
    r = await dash.browser.post(
        upload,
        data={"csrf_token": dash.token},
        files=[("file", ("a.txt", b"One.")), ("file", ("b.txt", b"Two."))],
    )
    assert_problem(r, 422, "request.validation_failed")
    assert await dash.docs() == []
