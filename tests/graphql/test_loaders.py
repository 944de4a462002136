"""Nested lookups are batched per request (API.md section 10): a page of personas with their
knowledge costs a fixed number of SQL statements, whatever the number of personas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from starlette.applications import Starlette

from app.models import KnowledgeDocItem, PersonaCreate
from app.services import accounts, knowledge, personas
from app.services.runtime import Runtime
from tests.conftest import client_for, new_key
from tests.graphql.conftest import gql_data

pytestmark = pytest.mark.anyio

QUERY = """
query($first: Int!) {
  personas(first: $first) {
    items {
      name
      knowledgeCount
      knowledgeExternalIds
      knowledge(first: 2) { items { externalId title } nextCursor total }
      all: knowledge(first: 10) { items { externalId content } total }
    }
    total
  }
}
"""


@contextmanager
def counting(runtime: Runtime) -> Iterator[list[str]]:
    """Every statement run on the read engine while inside."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        if args[2] != "BEGIN":  # a transaction per session, not a query
            statements.append(args[2])

    engine = runtime.db.reader.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def make_personas(app: Starlette, key: str, n: int) -> None:
    """`n` personas; persona i has documents d0..d(i % 4) attached (some none)."""
    runtime: Runtime = app.state.runtime
    principal = await accounts.authenticate(runtime=runtime, api_key=key)
    items = [
        KnowledgeDocItem(external_id=f"d{i}", title=None, content=f"Document {i}.")
        for i in range(4)
    ]
    await knowledge.upsert_many(runtime=runtime, principal=principal, items=items)
    for i in range(n):
        persona = await personas.create_persona(
            runtime=runtime, principal=principal, body=PersonaCreate(name=f"P{i:02}")
        )
        await personas.set_knowledge(
            runtime=runtime,
            principal=principal,
            persona_id=persona.id,
            external_ids=[f"d{j}" for j in range(i % 4)],
        )


async def statements_for(app: Starlette, api: httpx.AsyncClient, first: int) -> tuple[int, Any]:
    with counting(app.state.runtime) as statements:
        data = await gql_data(api, QUERY, {"first": first})
    return len(statements), data


async def test_fifty_personas_cost_what_five_do(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    await make_personas(app, key, 50)
    async with client_for(app, **{"X-Api-Key": key}) as api:
        await gql_data(api, "{ viewer { email } }")  # settle last_used_at and the pool
        few, _ = await statements_for(app, api, 5)
        many, data = await statements_for(app, api, 50)
    assert many == few
    # Authentication, the persona page (count, page, attachment counts), the ids loader, and two
    # statements per distinct `knowledge` page asked for (here two): 9, not one per persona.
    assert many <= 9, many

    items = data["personas"]["items"]
    assert len(items) == 50 and data["personas"]["total"] == 50
    for i, item in enumerate(items):
        attached = [f"d{j}" for j in range(i % 4)]
        assert item["name"] == f"P{i:02}"
        assert item["knowledgeCount"] == len(attached)
        assert item["knowledgeExternalIds"] == attached
        page = item["knowledge"]
        assert [d["externalId"] for d in page["items"]] == attached[:2]
        assert page["total"] == len(attached)
        assert (page["nextCursor"] is not None) == (len(attached) > 2)
        assert [d["content"] for d in item["all"]["items"]] == [
            f"Document {j[1:]}." for j in attached
        ]


async def test_a_persona_page_follows_its_cursor(app: Starlette) -> None:
    key = await new_key(app, plan="unlimited")
    await make_personas(app, key, 4)  # the last one has d0, d1, d2
    async with client_for(app, **{"X-Api-Key": key}) as api:
        query = (
            "query($after: String) { personas { items { knowledge(first: 2, after: $after) "
            "{ items { externalId } nextCursor total } } } }"
        )
        first = (await gql_data(api, query))["personas"]["items"][3]["knowledge"]
        assert [d["externalId"] for d in first["items"]] == ["d0", "d1"]
        rest = (await gql_data(api, query, {"after": first["nextCursor"]}))["personas"]["items"][3]
        assert rest["knowledge"] == {
            "items": [{"externalId": "d2"}],
            "nextCursor": None,
            "total": 3,
        }


async def test_a_bad_cursor_fails_only_the_fields_that_passed_it(api: httpx.AsyncClient) -> None:
    await api.post("/api/personas", json={"name": "Ava"})
    r = await api.post(
        "/graphql",
        json={
            "query": "{ personas { items { name good: knowledge { total } "
            'bad: knowledge(after: "nope!") { total } } } }'
        },
    )
    body = r.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["request.invalid_cursor"]
    assert body["errors"][0]["path"] == ["personas", "items", 0, "bad"]


async def test_loaders_are_made_per_request(app: Starlette) -> None:
    """A loader caches: one shared between requests would serve stale (or another user's)
    data. Each request sees the attachments as they are now."""
    key = await new_key(app, plan="unlimited")
    await make_personas(app, key, 2)
    async with client_for(app, **{"X-Api-Key": key}) as api:
        query = "{ personas { items { id knowledgeExternalIds } } }"
        before = (await gql_data(api, query))["personas"]["items"][1]
        assert before["knowledgeExternalIds"] == ["d0"]
        r = await api.put(f"/api/personas/{before['id']}/knowledge", json={"external_ids": ["d3"]})
        assert r.status_code == 200
        after = (await gql_data(api, query))["personas"]["items"][1]
        assert after["knowledgeExternalIds"] == ["d3"]

        other = await new_key(app, "other@example.com", plan="unlimited")
        async with client_for(app, **{"X-Api-Key": other}) as stranger:
            data = await gql_data(stranger, query)
            assert data["personas"]["items"] == []
