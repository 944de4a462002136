"""The knowledge and search services on both engines, below the doors: upsert planning (what is
embedded and what is reused), quotas inside the write, concurrent upserts of one document, and
search scopes that never cross tenants."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from starlette.applications import Starlette

from app.errors import KnowledgeQuotaExceeded
from app.models import KnowledgeDocItem, PersonaCreate, SearchRequest
from app.services import accounts, knowledge, personas, search
from app.services.runtime import Principal, Runtime
from tests.conftest import new_key

pytestmark = pytest.mark.anyio

PARAGRAPHS = [
    "Jet engines draw in air, compress it, burn fuel in it and push the hot gas out the back.",
    "Sourdough bread rises with a starter of wild yeast and bacteria kept alive with flour.",
    "A chess knight moves two squares in one direction and then one square to the side.",
]


async def caller(app: Starlette, email: str, plan: str = "unlimited") -> Principal:
    key = await new_key(app, email, plan=plan)
    return await accounts.authenticate(runtime=app.state.runtime, api_key=key)


def doc(external_id: str, content: str, **fields: object) -> KnowledgeDocItem:
    return KnowledgeDocItem.model_validate(
        {"external_id": external_id, "content": content, **fields}
    )


def long_text(n: int) -> str:
    """Enough text for several chunks, each chunk different."""
    return " ".join(f"Part {i}: {PARAGRAPHS[i % 3]}" for i in range(n))


async def upsert(runtime: Runtime, who: Principal, *items: KnowledgeDocItem) -> list[str]:
    result = await knowledge.upsert_many(runtime=runtime, principal=who, items=list(items))
    return [r.status for r in result.results]


async def test_planning_embeds_only_what_changed(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    me = await caller(app, "plan@example.com")
    stats = runtime.embedder.stats
    content = long_text(60)
    assert await upsert(runtime, me, doc("d", content, title="T")) == ["created"]
    stored = await knowledge.get_doc(runtime=runtime, principal=me, external_id="d")
    assert stored.chunk_count >= 3
    first = stats.texts
    assert first == stored.chunk_count  # every chunk embedded once

    # Identical: nothing written, nothing embedded, updated_at unmoved.
    assert await upsert(runtime, me, doc("d", content, title="T")) == ["no_op"]
    again = await knowledge.get_doc(runtime=runtime, principal=me, external_id="d")
    assert stats.texts == first and again.updated_at == stored.updated_at

    # Title or metadata only: updated, nothing re-embedded.
    assert await upsert(runtime, me, doc("d", content, title="New", metadata={"a": 1})) == [
        "updated"
    ]
    assert stats.texts == first

    # Content changed at the end: the unchanged chunks keep their vectors. (The title is part
    # of what a chunk embeds, and the vectors still hold "T": with "New" all would re-embed.)
    changed = content + " A new closing sentence about gliders."
    assert await upsert(runtime, me, doc("d", changed, title="T", metadata={"a": 1})) == ["updated"]
    after = await knowledge.get_doc(runtime=runtime, principal=me, external_id="d")
    re_embedded = stats.texts - first
    assert 1 <= re_embedded < after.chunk_count


async def test_the_quota_is_checked_inside_the_write(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    me = await caller(app, "quota@example.com", plan="free")  # 100 documents
    items = [doc(f"q{i}", f"Quota document {i}.") for i in range(100)]
    await upsert(runtime, me, *items[:50])
    await upsert(runtime, me, *items[50:])
    with pytest.raises(KnowledgeQuotaExceeded):
        await upsert(runtime, me, doc("one-more", "Over the limit."))
    # An update of an existing document still passes at the limit.
    assert await upsert(runtime, me, doc("q0", "Quota document 0, edited.")) == ["updated"]
    page = await knowledge.list_docs(runtime=runtime, principal=me, limit=1)
    assert page.total == 100


async def test_a_write_over_the_quota_is_refused_before_anything_is_embedded(
    app: Starlette,
) -> None:
    """A user at its limit sending a large new document is refused at once: the model (shared
    by every tenant) never sees the text."""
    runtime: Runtime = app.state.runtime
    me = await caller(app, "full@example.com", plan="free")  # 100 documents
    await upsert(runtime, me, *(doc(f"f{i}", "The same short text.") for i in range(100)))
    before = runtime.embedder.stats.texts
    with pytest.raises(KnowledgeQuotaExceeded):
        await upsert(runtime, me, doc("big", long_text(400)))
    assert runtime.embedder.stats.texts == before


@contextlib.asynccontextmanager
async def _tracking_writes(runtime: Runtime, before_first_write: Callable[[], Awaitable[None]]):  # type: ignore[no-untyped-def]
    """Wrap the database's write transactions: run `before_first_write` once, before the first
    one begins, and record in `state["writing"]` whether one is open."""
    state = {"writing": False, "first": True}
    real_write = runtime.db.write

    @contextlib.asynccontextmanager
    async def write(**kwargs: Any) -> AsyncIterator[Any]:
        if state["first"]:
            state["first"] = False
            await before_first_write()
        async with real_write(**kwargs) as session:
            state["writing"] = True
            try:
                yield session
            finally:
                state["writing"] = False

    real_embed = runtime.embedder.embed
    under_lock: list[Sequence[str]] = []

    async def embed(texts: Sequence[str], **kwargs: Any) -> Any:
        if state["writing"]:
            under_lock.append(texts)
        return await real_embed(texts, **kwargs)

    runtime.db.write = write  # type: ignore[method-assign]
    runtime.embedder.embed = embed  # type: ignore[method-assign]
    try:
        yield under_lock
    finally:
        runtime.db.write = real_write  # type: ignore[method-assign]
        runtime.embedder.embed = real_embed  # type: ignore[method-assign]


async def test_nothing_is_embedded_under_the_write_lock_when_a_writer_intervenes(
    app: Starlette,
) -> None:
    """The snapshot says: same content, new title (nothing to embed). Before the write, another
    writer changes the content; under the lock the document now needs its text embedded. That
    is done after rolling back, outside the lock, and the write then lands as asked."""
    runtime: Runtime = app.state.runtime
    me = await caller(app, "between@example.com")
    original = "Gliders stay aloft on rising air and lose height slowly."
    await upsert(runtime, me, doc("g", original, title="Old"))

    async def intervene() -> None:
        await upsert(runtime, me, doc("g", "A different text about kites.", title="Old"))

    async with _tracking_writes(runtime, intervene) as under_lock:
        assert await upsert(runtime, me, doc("g", original, title="New")) == ["updated"]
    assert under_lock == []
    final = await knowledge.get_doc(runtime=runtime, principal=me, external_id="g")
    assert (final.content, final.title) == (original, "New")
    hits = await find(runtime, me, query="gliders rising air", mode="keyword")
    assert hits == ["g"]


async def test_concurrent_upserts_of_one_document(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    me = await caller(app, "race@example.com")
    contents = [f"Version {i} of the racing document." for i in range(6)]
    statuses = await asyncio.gather(*(upsert(runtime, me, doc("race", c)) for c in contents))
    flat = sorted(s for (s,) in statuses)
    assert flat.count("created") == 1 and flat.count("created") + flat.count("updated") == 6
    final = await knowledge.get_doc(runtime=runtime, principal=me, external_id="race")
    assert final.content in contents and final.chunk_count == 1


async def find(runtime: Runtime, who: Principal, **body: object) -> list[str]:
    request = SearchRequest.model_validate({"k": 10, **body})
    response = await search.search(runtime=runtime, principal=who, request=request)
    return [h.external_id for h in response.results]


async def test_search_scopes_on_both_engines(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    me = await caller(app, "scopes@example.com")
    other = await caller(app, "other@example.com")
    await upsert(
        runtime,
        me,
        doc("jet", PARAGRAPHS[0], metadata={"kind": "aero", "rank": 3, "ok": True}),
        doc("bread", PARAGRAPHS[1], metadata={"kind": "food", "rank": 3.0, "ok": 1}),
        doc("chess", PARAGRAPHS[2], metadata={"kind": "game", "rank": "3", "tags": {"a": [1]}}),
    )
    # The other tenant has documents with the same external_ids and better matches.
    await upsert(
        runtime,
        other,
        doc("jet", "Jet engines jet engines compress air and burn fuel: jet engines."),
        doc("other-only", "Jet engines and gas turbines."),
    )
    for mode in ("hybrid", "semantic", "keyword"):
        everything = await find(runtime, me, query="jet engines burn fuel", mode=mode)
        assert everything[0] == "jet" and "other-only" not in everything
        listed = await find(
            runtime, me, query="jet engines", mode=mode, external_ids=["bread", "other-only"]
        )
        assert set(listed) <= {"bread"}
        assert await find(runtime, me, query="jet", mode=mode, external_ids=[]) == []

    persona = await personas.create_persona(
        runtime=runtime, principal=me, body=PersonaCreate(name="Baker")
    )
    await personas.set_knowledge(
        runtime=runtime, principal=me, persona_id=persona.id, external_ids=["bread"]
    )
    assert await find(runtime, me, query="jet engines", persona_id=persona.id, mode="semantic") == [
        "bread"
    ]

    async def matching(metadata: dict[str, object]) -> set[str]:
        return set(
            await find(runtime, me, query="anything at all", mode="semantic", metadata=metadata)
        )

    # Numbers compare by value, `true` is not `1`, `"3"` is not `3`; keys must all match.
    assert await matching({"rank": 3}) == {"jet", "bread"}
    assert await matching({"rank": "3"}) == {"chess"}
    assert await matching({"ok": True}) == {"jet"}
    assert await matching({"ok": 1}) == {"bread"}
    assert await matching({"kind": "aero", "rank": 3}) == {"jet"}
    assert await matching({"tags": {"a": [1]}}) == {"chess"}
    assert await matching({"missing": None}) == set()
    # The other tenant's metadata never matches for me, nor mine for them.
    assert "jet" not in await find(runtime, other, query="sourdough", metadata={"kind": "food"})
