"""The batched persona lookups behind GraphQL's DataLoaders: many personas' attached documents
at once, equal to what one persona at a time gives, and only the caller's."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette

from app.models import KnowledgeDocItem, PersonaCreate
from app.services import accounts, knowledge, personas
from app.services.runtime import Principal, Runtime
from tests.conftest import new_key

pytestmark = pytest.mark.anyio


async def caller(app: Starlette, email: str) -> Principal:
    key = await new_key(app, email, plan="unlimited")
    return await accounts.authenticate(runtime=app.state.runtime, api_key=key)


async def persona_with(runtime: Runtime, principal: Principal, *external_ids: str) -> str:
    persona = await personas.create_persona(
        runtime=runtime, principal=principal, body=PersonaCreate(name="P")
    )
    await personas.set_knowledge(
        runtime=runtime, principal=principal, persona_id=persona.id, external_ids=external_ids
    )
    return persona.id


async def test_many_personas_at_once(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    me = await caller(app, "me@example.com")
    items = [
        KnowledgeDocItem(external_id=e, title=None, content=f"About {e}.") for e in ("c", "B", "a")
    ]
    await knowledge.upsert_many(runtime=runtime, principal=me, items=items)
    three = await persona_with(runtime, me, "a", "c", "B")
    none = await persona_with(runtime, me)
    one = await persona_with(runtime, me, "c")
    theirs = await persona_with(runtime, await caller(app, "them@example.com"))
    ids = [three, none, one, theirs, "per_garbage"]

    attached = await personas.attached_external_ids(runtime=runtime, principal=me, persona_ids=ids)
    assert attached == {three: ["B", "a", "c"], none: [], one: ["c"], theirs: [], "per_garbage": []}
    for persona_id in (three, none, one):
        single = await personas.get_persona(runtime=runtime, principal=me, persona_id=persona_id)
        assert attached[persona_id] == single.knowledge_external_ids

    pages = await personas.knowledge_for_personas(
        runtime=runtime, principal=me, persona_ids=ids, limit=2, include_content=True
    )
    assert [d.external_id for d in pages[three].items] == ["B", "a"]
    assert pages[three].total == 3 and pages[three].next_cursor is not None
    assert pages[three].items[0].content == "About B."
    assert [d.external_id for d in pages[one].items] == ["c"]
    assert pages[one].next_cursor is None
    assert pages[none].items == [] and pages[theirs].items == [] and pages[theirs].total == 0

    rest = await personas.knowledge_for_personas(
        runtime=runtime,
        principal=me,
        persona_ids=[three],
        limit=2,
        cursor=pages[three].next_cursor,
    )
    assert [d.external_id for d in rest[three].items] == ["c"]
    assert rest[three].items[0].content is None  # not asked for, not loaded
    assert rest[three].next_cursor is None and rest[three].total == 3
