"""Personas through HTTP (API.md section 6), against the real app and a real SQLite file."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.services.personas import PERSONA_ID_RE, new_persona_id
from tests.conftest import AppFactory, assert_problem, client_for, new_key

pytestmark = pytest.mark.anyio

PERSONAS = "/api/personas"
DOCS = "/api/knowledge/docs"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def by_id(persona_id: str) -> str:
    return f"{PERSONAS}/{persona_id}"


def knowledge(persona_id: str) -> str:
    return f"{PERSONAS}/{persona_id}/knowledge"


async def create(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await api.post(PERSONAS, json={"name": "Ava", **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def add_docs(api: httpx.AsyncClient, *external_ids: str) -> None:
    items = [{"external_id": e, "content": f"About {e}."} for e in external_ids]
    r = await api.put(DOCS, json={"items": items})
    assert r.status_code == 200, r.text


# --- ids -----------------------------------------------------------------------------------


def test_persona_ids_are_ulids_in_creation_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_persona_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # many share a millisecond: still ordered
    for persona_id in ids[:5]:
        assert PERSONA_ID_RE.match(persona_id)
        ulid = persona_id.removeprefix("per_")
        value = 0
        for ch in ulid:
            value = value * 32 + CROCKFORD.index(ch)
        assert before <= value >> 80 <= after


# --- create and get ------------------------------------------------------------------------


async def test_create_and_get(api: httpx.AsyncClient) -> None:
    r = await api.post(
        PERSONAS,
        json={"name": "Ava", "instructions": "You are helpful.", "metadata": {"team": "support"}},
    )
    assert r.status_code == 201
    created = r.json()
    assert r.headers["location"] == f"/api/personas/{created['id']}"
    assert re.fullmatch(r"per_[0-9A-HJKMNP-TV-Z]{26}", created["id"])
    assert created == {
        "id": created["id"],
        "name": "Ava",
        "description": "",
        "instructions": "You are helpful.",
        "greeting": None,
        "metadata": {"team": "support"},
        "knowledge_filter": None,  # section 13, additive
        "knowledge_external_ids": [],
        "knowledge_count": 0,
        "created_at": created["created_at"],
        "updated_at": created["created_at"],
    }
    assert created["created_at"].endswith("Z") and len(created["created_at"]) == 24
    got = await api.get(by_id(created["id"]))
    assert got.status_code == 200 and got.json() == created


async def test_create_ignores_unknown_fields(api: httpx.AsyncClient) -> None:
    body = await create(api, id="per_mine", knowledge_count=9, color="blue", greeting="Hi!")
    assert body["id"] != "per_mine" and body["knowledge_count"] == 0
    assert body["greeting"] == "Hi!" and "color" not in body


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/name"),
        ({"name": ""}, "/name"),
        ({"name": "n" * 121}, "/name"),
        ({"name": None}, "/name"),
        ({"name": 5}, "/name"),
        ({"name": "A", "description": "d" * 2001}, "/description"),
        ({"name": "A", "instructions": "i" * 20001}, "/instructions"),
        ({"name": "A", "greeting": "g" * 2001}, "/greeting"),
        ({"name": "A", "metadata": {"k": "v" * 9000}}, "/metadata"),
        ({"name": "A", "metadata": ["not", "an", "object"]}, "/metadata"),
        # U+0000: PostgreSQL's text cannot hold it, so both engines refuse it (was a 500 there).
        ({"name": "A\x00"}, "/name"),
        ({"name": "A", "description": "\x00"}, "/description"),
        ({"name": "A", "instructions": "be\x00"}, "/instructions"),
        ({"name": "A", "greeting": "\x00hi"}, "/greeting"),
    ],
)
async def test_create_validation(
    api: httpx.AsyncClient, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(await api.post(PERSONAS, json=body), 422, "request.validation_failed")
    assert pointer in [e["pointer"] for e in problem["errors"]]
    assert (await api.get(PERSONAS)).json()["total"] == 0


async def test_limits_are_inclusive(api: httpx.AsyncClient) -> None:
    body = await create(
        api,
        name="n" * 120,
        description="d" * 2000,
        instructions="i" * 20000,
        greeting="g" * 2000,
    )
    assert len(body["instructions"]) == 20000


async def test_body_must_be_json(api: httpx.AsyncClient) -> None:
    assert_problem(await api.post(PERSONAS, content=b"{"), 415, "request.unsupported_media_type")
    r = await api.post(PERSONAS, content=b"{", headers={"content-type": "application/json"})
    assert_problem(r, 400, "request.malformed_json")


# --- list ----------------------------------------------------------------------------------


async def test_list_in_creation_order_with_cursor(api: httpx.AsyncClient) -> None:
    names = ["zeta", "alpha", "Mid", "beta", "omega"]
    made = [await create(api, name=n) for n in names]
    await add_docs(api, "d1", "d2")
    await api.put(knowledge(made[1]["id"]), json={"external_ids": ["d1", "d2"]})
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await api.get(PERSONAS, params=params)
        assert r.status_code == 200
        page = r.json()
        assert page["total"] == 5 and len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [p["name"] for p in seen] == names
    assert [p["knowledge_count"] for p in seen] == [0, 2, 0, 0, 0]
    assert all("knowledge_external_ids" not in p for p in seen)
    expected = {k: v for k, v in made[0].items() if k != "knowledge_external_ids"}
    assert seen[0] == expected


async def test_list_bad_parameters(api: httpx.AsyncClient) -> None:
    assert_problem(
        await api.get(PERSONAS, params={"cursor": "nope!"}), 400, "request.invalid_cursor"
    )
    for bad in ({"limit": 0}, {"limit": 201}, {"limit": "x"}):
        assert_problem(await api.get(PERSONAS, params=bad), 422, "request.validation_failed")
    empty = (await api.get(PERSONAS)).json()
    assert empty == {"items": [], "next_cursor": None, "total": 0}


# --- update --------------------------------------------------------------------------------


async def test_patch_changes_only_fields_sent(api: httpx.AsyncClient) -> None:
    p = await create(
        api, description="desc", instructions="inst", greeting="Hello", metadata={"a": 1}
    )
    await asyncio.sleep(0.005)
    r = await api.patch(by_id(p["id"]), json={"description": "new", "unknown": "ignored"})
    assert r.status_code == 200
    updated = r.json()
    assert updated == {**p, "description": "new", "updated_at": updated["updated_at"]}
    assert updated["updated_at"] > p["updated_at"]
    assert (await api.get(by_id(p["id"]))).json() == updated

    r = await api.patch(by_id(p["id"]), json={"greeting": None, "metadata": {"b": 2}})
    assert r.json()["greeting"] is None and r.json()["metadata"] == {"b": 2}
    assert r.json()["name"] == "Ava" and r.json()["instructions"] == "inst"


async def test_patch_without_change_keeps_updated_at(api: httpx.AsyncClient) -> None:
    p = await create(api, description="same")
    await asyncio.sleep(0.005)
    for body in ({}, {"name": "Ava", "description": "same"}):
        r = await api.patch(by_id(p["id"]), json=body)
        assert r.status_code == 200 and r.json() == p


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"name": None}, "/name"),
        ({"name": ""}, "/name"),
        ({"name": "n" * 121}, "/name"),
        ({"description": None}, "/description"),
        ({"instructions": "i" * 20001}, "/instructions"),
        ({"greeting": "g" * 2001}, "/greeting"),
        ({"metadata": None}, "/metadata"),
        ({"metadata": {"k": "v" * 9000}}, "/metadata"),
    ],
)
async def test_patch_validation_changes_nothing(
    api: httpx.AsyncClient, body: dict[str, Any], pointer: str
) -> None:
    p = await create(api, greeting="Hi")
    problem = assert_problem(
        await api.patch(by_id(p["id"]), json={"greeting": "changed", **body}),
        422,
        "request.validation_failed",
    )
    assert [e["pointer"] for e in problem["errors"]] == [pointer]
    assert (await api.get(by_id(p["id"]))).json() == p


async def test_patch_body_must_be_an_object(api: httpx.AsyncClient) -> None:
    p = await create(api)
    assert_problem(await api.patch(by_id(p["id"]), json=["x"]), 422, "request.validation_failed")


# --- delete --------------------------------------------------------------------------------


async def test_delete_is_idempotent_and_keeps_documents(
    app: Starlette, api: httpx.AsyncClient
) -> None:
    p = await create(api)
    await add_docs(api, "kept")
    await api.put(knowledge(p["id"]), json={"external_ids": ["kept"]})
    assert (await api.delete(by_id(p["id"]))).status_code == 204
    assert (await api.delete(by_id(p["id"]))).status_code == 204
    assert (await api.delete(by_id("per_nothing"))).status_code == 204
    assert_problem(await api.get(by_id(p["id"])), 404, "persona.not_found")
    assert (await api.get(f"{DOCS}/by-external-id/kept")).status_code == 200
    assert (await api.get(PERSONAS)).json()["total"] == 0
    async with app.state.runtime.db.read() as session:  # the attachments went with it
        rows = await session.execute(text("SELECT count(*) FROM persona_knowledge"))
        assert rows.scalar_one() == 0


# --- knowledge -----------------------------------------------------------------------------


async def test_set_knowledge_replaces_the_set(api: httpx.AsyncClient) -> None:
    p = await create(api)
    await add_docs(api, "b", "a", "c", "Z")
    r = await api.put(knowledge(p["id"]), json={"external_ids": ["b", "a", "b", "Z"]})
    assert r.status_code == 200
    assert r.json() == {
        "persona_id": p["id"],
        "external_ids": ["Z", "a", "b"],
        "added": 3,
        "removed": 0,
    }
    got = (await api.get(by_id(p["id"]))).json()
    assert got["knowledge_external_ids"] == ["Z", "a", "b"] and got["knowledge_count"] == 3
    assert got["updated_at"] >= p["updated_at"]

    # The same set again: idempotent, nothing added or removed, updated_at stays.
    r = await api.put(knowledge(p["id"]), json={"external_ids": ["a", "Z", "b"]})
    assert r.json()["added"] == 0 and r.json()["removed"] == 0
    assert (await api.get(by_id(p["id"]))).json() == got

    r = await api.put(knowledge(p["id"]), json={"external_ids": ["c", "a"]})
    assert r.json() == {
        "persona_id": p["id"],
        "external_ids": ["a", "c"],
        "added": 1,
        "removed": 2,
    }
    r = await api.put(knowledge(p["id"]), json={"external_ids": []})
    assert r.json()["external_ids"] == [] and r.json()["removed"] == 2
    assert (await api.get(by_id(p["id"]))).json()["knowledge_count"] == 0


async def test_unknown_external_ids_change_nothing(api: httpx.AsyncClient) -> None:
    p = await create(api)
    await add_docs(api, "a", "b")
    await api.put(knowledge(p["id"]), json={"external_ids": ["a"]})
    before = (await api.get(by_id(p["id"]))).json()
    r = await api.put(knowledge(p["id"]), json={"external_ids": ["zz", "b", "nope", "zz"]})
    problem = assert_problem(r, 422, "knowledge.unknown_external_ids")
    assert problem["missing"] == ["nope", "zz"]
    assert [e["pointer"] for e in problem["errors"]] == [
        "/external_ids/0",
        "/external_ids/2",
        "/external_ids/3",
    ]
    assert (await api.get(by_id(p["id"]))).json() == before


async def test_set_knowledge_validation(api: httpx.AsyncClient) -> None:
    p = await create(api)
    r = await api.put(knowledge(p["id"]), json={"external_ids": ["ok", "bad id"]})
    problem = assert_problem(r, 422, "knowledge.invalid_external_id")
    assert problem["errors"][0]["pointer"] == "/external_ids/1"
    for body in ({}, {"external_ids": "a"}, {"external_ids": [1]}):
        r = await api.put(knowledge(p["id"]), json=body)
        assert_problem(r, 422, "request.validation_failed")
    # Existence of the persona comes before existence of the documents.
    r = await api.put(knowledge("per_missing"), json={"external_ids": ["nope"]})
    assert_problem(r, 404, "persona.not_found")


async def test_deleting_a_document_detaches_it(api: httpx.AsyncClient) -> None:
    p1, p2 = await create(api, name="one"), await create(api, name="two")
    await add_docs(api, "shared", "other")
    await api.put(knowledge(p1["id"]), json={"external_ids": ["shared", "other"]})
    await api.put(knowledge(p2["id"]), json={"external_ids": ["shared"]})
    assert (await api.delete(f"{DOCS}/by-external-id/shared")).status_code == 204
    assert (await api.get(by_id(p1["id"]))).json()["knowledge_external_ids"] == ["other"]
    got2 = (await api.get(by_id(p2["id"]))).json()
    assert got2["knowledge_external_ids"] == [] and got2["knowledge_count"] == 0
    counts = [p["knowledge_count"] for p in (await api.get(PERSONAS)).json()["items"]]
    assert counts == [1, 0]
    # A document made again under the same external_id is a new document: not re-attached.
    await add_docs(api, "shared")
    assert (await api.get(by_id(p2["id"]))).json()["knowledge_count"] == 0


# --- isolation and ids ---------------------------------------------------------------------


async def test_another_users_persona_is_not_found(app: Starlette, api: httpx.AsyncClient) -> None:
    await add_docs(api, "mine")
    p = await create(api, name="private")
    await api.put(knowledge(p["id"]), json={"external_ids": ["mine"]})
    other_key = await new_key(app, "other@example.com", plan="unlimited")
    async with client_for(app, **{"X-Api-Key": other_key}) as other:
        await add_docs(other, "theirs")
        assert (await other.get(PERSONAS)).json()["total"] == 0
        for method, path, body in [
            ("GET", by_id(p["id"]), None),
            ("PATCH", by_id(p["id"]), {"name": "stolen"}),
            ("PUT", knowledge(p["id"]), {"external_ids": ["theirs"]}),
        ]:
            r = await other.request(method, path, json=body)
            problem = assert_problem(r, 404, "persona.not_found")
            assert problem["instance"] == path
        # Deleting is idempotent: it answers as for a missing persona and deletes nothing.
        assert (await other.delete(by_id(p["id"]))).status_code == 204
        # The other user's documents are unknown to this user, too.
        mine = await create(other, name="theirs")
        r = await other.put(knowledge(mine["id"]), json={"external_ids": ["mine", "theirs"]})
        assert assert_problem(r, 422, "knowledge.unknown_external_ids")["missing"] == ["mine"]
    got = (await api.get(by_id(p["id"]))).json()
    assert got["name"] == "private" and got["knowledge_external_ids"] == ["mine"]


@pytest.mark.parametrize(
    "persona_id",
    [
        "nope",
        "per_",
        "per_01ARZ3NDEKTSV4RRFFQ69G5FAV".lower(),
        "per_81ARZ3NDEKTSV4RRFFQ69G5FAV",
        "per_01ARZ3NDEKTSV4RRFFQ69G5FAVX",
        "per_01ARZ3NDEKTSV4RRFFQ69G5FAU",
    ],
)
async def test_ids_of_the_wrong_shape_are_not_found(
    api: httpx.AsyncClient, persona_id: str
) -> None:
    for method, path, body in [
        ("GET", by_id(persona_id), None),
        ("PATCH", by_id(persona_id), {"name": "x"}),
        ("PUT", knowledge(persona_id), {"external_ids": []}),
    ]:
        assert_problem(await api.request(method, path, json=body), 404, "persona.not_found")
    assert (await api.delete(by_id(persona_id))).status_code == 204


# --- quota ---------------------------------------------------------------------------------


async def test_persona_quota_follows_the_plan(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        made = [await create(api, name=f"p{i}") for i in range(3)]
        problem = assert_problem(
            await api.post(PERSONAS, json={"name": "p3"}), 403, "persona.quota_exceeded"
        )
        assert problem["limit"] == "personas" and problem["allowed"] == 3
        assert (await api.get(PERSONAS)).json()["total"] == 3
        # Updates still work at the limit; deleting frees a place.
        assert (await api.patch(by_id(made[0]["id"]), json={"name": "P0"})).status_code == 200
        await api.delete(by_id(made[1]["id"]))
        await create(api, name="again")
        usage = (await api.get("/api/subscription/usage")).json()["usage"]["personas"]
        assert usage == {"used": 3, "limit": 3}


async def test_concurrent_creation_never_passes_the_quota(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        await create(api, name="first")
        responses = await asyncio.gather(
            *(api.post(PERSONAS, json={"name": f"racer {i}"}) for i in range(6))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201, 201, 403, 403, 403, 403]
        for r in responses:
            if r.status_code == 403:
                assert_problem(r, 403, "persona.quota_exceeded")
        page = (await api.get(PERSONAS)).json()
        assert page["total"] == 3 == len(page["items"])
        usage = (await api.get("/api/subscription/usage")).json()["usage"]["personas"]
        assert usage == {"used": 3, "limit": 3}


@pytest.mark.parametrize(("before", "after"), [(1, True), (True, 1), (0, False), ("1", 1)])
async def test_patching_metadata_to_another_json_type_is_a_change(
    api: httpx.AsyncClient, before: object, after: object
) -> None:
    """`{"flag": 1}` then `{"flag": true}` is a change (JSON types differ), not a skipped one."""
    made = (
        await api.post("/api/personas", json={"name": "Ava", "metadata": {"flag": before}})
    ).json()
    r = await api.patch(f"/api/personas/{made['id']}", json={"metadata": {"flag": after}})
    assert r.status_code == 200
    assert r.json()["metadata"] == {"flag": after}
    got = (await api.get(f"/api/personas/{made['id']}")).json()["metadata"]["flag"]
    assert got == after and type(got) is type(after)
    assert r.json()["updated_at"] > made["updated_at"]
