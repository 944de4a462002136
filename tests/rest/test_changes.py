"""The changes feed over REST (API.md section 11): what `updated_since` misses, the feed
delivers; deletes as tombstones; a replay reproduces the stored state; no_ops are silent;
tokens never go backwards, expire past the retention, are refused when they are not ours,
and read only their caller's changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.models.pagination import encode_cursor
from app.services import accounts, feed
from app.services.runtime import Runtime
from tests.conftest import AppFactory, assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
CHANGES = "/api/knowledge/changes"


async def put(api: httpx.AsyncClient, external_id: str, content: str) -> str:
    r = await api.put(f"{DOCS}/by-external-id/{external_id}", json={"content": content})
    assert r.status_code in (200, 201), r.text
    status: str = r.json()["status"]
    return status


async def changes(
    api: httpx.AsyncClient, since: str | None = None, limit: int = 100
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if since is not None:
        params["since"] = since
    r = await api.get(CHANGES, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def follow(
    api: httpx.AsyncClient, mirror: dict[str, str], since: str | None, limit: int = 100
) -> str | None:
    """Apply the feed to `mirror` (external_id -> content_sha256) until it is caught up."""
    while True:
        page = await changes(api, since, limit)
        for change in page["changes"]:
            if change["op"] == "delete":
                assert change["document"] is None
                mirror.pop(change["external_id"], None)
            else:
                assert "content" not in change["document"]
                mirror[change["external_id"]] = change["document"]["content_sha256"]
        assert feed.decode_since(page["next_since"])[0] >= (
            feed.decode_since(since)[0] if since else 0
        )
        since = page["next_since"]
        if not page["has_more"]:
            return since


async def stored(api: httpx.AsyncClient) -> dict[str, str]:
    items = (await api.get(DOCS, params={"limit": 200})).json()["items"]
    return {i["external_id"]: i["content_sha256"] for i in items}


async def test_the_feed_delivers_what_updated_since_misses(api: httpx.AsyncClient) -> None:
    """A client lists with `updated_since` and a small limit. After its first page (a, b),
    `a` is updated, and so is `d`, later in external_id order: the listing sees `d` but never
    the new `a`, though a's updated_at is newer than anything it passes back. The feed, from
    the token taken before, delivers both."""
    for name in "abcd":
        await put(api, name, f"first version of {name}")
    token = (await changes(api))["next_since"]
    r = await api.get(DOCS, params={"limit": 2, "updated_since": "2000-01-01T00:00:00Z"})
    first = r.json()
    assert [i["external_id"] for i in first["items"]] == ["a", "b"]
    await put(api, "a", "second version of a")
    await put(api, "d", "second version of d")
    rest = (await api.get(DOCS, params={"limit": 2, "cursor": first["next_cursor"]})).json()
    listed = {i["external_id"]: i["content_sha256"] for i in first["items"] + rest["items"]}
    now = await stored(api)
    assert listed["a"] != now["a"]  # the listing missed a's update
    page = await changes(api, token)
    assert [c["external_id"] for c in page["changes"]] == ["a", "d"]
    assert {c["external_id"]: c["document"]["content_sha256"] for c in page["changes"]} == {
        "a": now["a"],
        "d": now["d"],
    }


async def test_replaying_from_the_beginning_reproduces_the_stored_state(
    api: httpx.AsyncClient,
) -> None:
    mirror: dict[str, str] = {}
    since = await follow(api, mirror, None)
    assert mirror == {}
    for i in range(7):
        await put(api, f"doc-{i}", f"content {i}")
    since = await follow(api, mirror, since, limit=3)
    assert (await api.delete(f"{DOCS}/by-external-id/doc-2")).status_code == 204
    await put(api, "doc-3", "content 3, again")
    await put(api, "doc-9", "content 9")
    assert (await api.delete(f"{DOCS}/by-external-id/doc-9")).status_code == 204
    assert (await api.delete(f"{DOCS}/by-external-id/doc-5")).status_code == 204
    await put(api, "doc-5", "content 5 reborn")
    # Incrementally, in small pages...
    since = await follow(api, mirror, since, limit=2)
    assert mirror == await stored(api)
    # ...and from scratch: the same state, and the deletes it still holds are tombstones.
    fresh: dict[str, str] = {}
    await follow(api, fresh, None, limit=4)
    assert fresh == await stored(api)
    ops = {(c["external_id"], c["op"]) for c in (await changes(api))["changes"]}
    assert ("doc-2", "delete") in ops and ("doc-9", "delete") in ops
    assert ("doc-5", "upsert") in ops and ("doc-5", "delete") not in ops


async def test_no_op_writes_do_not_appear_and_empty_pages_keep_the_token(
    api: httpx.AsyncClient,
) -> None:
    await put(api, "x", "same text")
    since = (await changes(api))["next_since"]
    assert await put(api, "x", "same text") == "no_op"
    r = await api.put(DOCS, json={"items": [{"external_id": "x", "content": "same text"}]})
    assert r.json()["summary"]["no_op"] == 1
    # Deleting what is not there writes nothing either.
    assert (await api.delete(f"{DOCS}/by-external-id/never")).status_code == 204
    page = await changes(api, since)
    assert page == {"changes": [], "next_since": since, "has_more": False}
    await put(api, "x", "other text")
    page = await changes(api, since)
    assert [c["external_id"] for c in page["changes"]] == ["x"]
    assert feed.decode_since(page["next_since"])[0] > feed.decode_since(since)[0]


async def test_tokens_that_are_not_ours_are_400(api: httpx.AsyncClient) -> None:
    await put(api, "a", "a")
    await put(api, "b", "b")
    list_cursor = (await api.get(DOCS, params={"limit": 1})).json()["next_cursor"]
    assert list_cursor is not None
    for bad in (
        "nope!",
        list_cursor,  # a list cursor: another shape
        encode_cursor({"v": "2", "after": "1", "floor": "0"}),  # a future version
        encode_cursor({"v": "1", "after": "-1", "floor": "0"}),
        encode_cursor({"v": "1", "after": "1e3", "floor": "0"}),
        encode_cursor({"v": "1", "after": str(2**63), "floor": "0"}),
    ):
        assert_problem(await api.get(CHANGES, params={"since": bad}), 400, "request.invalid_cursor")
    for limit in ("0", "1001", "many"):
        r = await api.get(CHANGES, params={"limit": limit})
        assert_problem(r, 422, "request.validation_failed")


async def test_a_token_reads_only_its_callers_changes(app: Starlette) -> None:
    a_key, b_key = await new_key(app, "a@example.com"), await new_key(app, "b@example.com")
    async with (
        client_for(app, **{"X-Api-Key": a_key}) as a,
        client_for(app, **{"X-Api-Key": b_key}) as b,
    ):
        await put(b, "b-doc", "b's own")
        for i in range(3):
            await put(a, f"a-{i}", f"a's {i}")
        a_token = (await changes(a, limit=1))["next_since"]
        page = await changes(b, a_token)
        assert {c["external_id"] for c in page["changes"]} <= {"b-doc"}
        everything = await changes(b)
        assert [c["external_id"] for c in everything["changes"]] == ["b-doc"]


async def test_a_token_older_than_the_retained_history_is_410(make_app: AppFactory) -> None:
    app = await make_app(changes_retention_days=0)
    key = await new_key(app, "gone@example.com", plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        await put(api, "keep", "kept")
        await put(api, "old", "to be deleted")
        early = (await changes(api, limit=1))["next_since"]
        assert (await api.delete(f"{DOCS}/by-external-id/old")).status_code == 204
        # Retention 0: the next delete purges every tombstone before it.
        await put(api, "other", "also deleted")
        assert (await api.delete(f"{DOCS}/by-external-id/other")).status_code == 204
        body = assert_problem(
            await api.get(CHANGES, params={"since": early}), 410, "knowledge.changes_expired"
        )
        assert "since" in body["detail"]
        # The way back: a fresh call from the beginning, paged, reproduces the state and its
        # tokens do not expire for what was purged before it started.
        mirror: dict[str, str] = {}
        since = await follow(api, mirror, None, limit=1)
        assert mirror == await stored(api)
        await put(api, "new", "after the purge")
        await follow(api, mirror, since, limit=1)
        assert mirror == await stored(api)


async def test_deleting_a_user_takes_their_feed(app: Starlette) -> None:
    key = await new_key(app, "leaving@example.com", plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        await put(api, "a", "a")
        assert (await api.delete(f"{DOCS}/by-external-id/a")).status_code == 204
    runtime: Runtime = app.state.runtime
    await accounts.delete_user(runtime=runtime, email="leaving@example.com")
    async with runtime.db.read() as session:
        for table in ("knowledge_tombstones", "knowledge_feeds"):
            count = (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            assert count == 0, table


async def test_charged_to_reads(api: httpx.AsyncClient) -> None:
    r = await api.get(CHANGES)
    assert r.headers["RateLimit-Policy"].startswith('"reads"')
