"""A document read around one of its chunks (`app.services.passages`), on both engines: the
page is a plain range of the content, holding the stored chunks it names."""

from __future__ import annotations

import pytest
from sqlmodel import col, select
from starlette.applications import Starlette

from app.errors import KnowledgeNotFound, ValidationFailed
from app.models import KnowledgeDoc
from app.models.knowledge import Chunk
from app.services import passages
from app.services.runtime import Runtime
from tests.services.test_knowledge import caller, doc, long_text, upsert

pytestmark = pytest.mark.anyio


async def _stored_chunks(runtime: Runtime, external_id: str) -> list[str]:
    async with runtime.db.read() as session:
        rows = await session.execute(
            select(col(Chunk.text))
            .join(KnowledgeDoc, col(KnowledgeDoc.id) == col(Chunk.doc_id))
            .where(KnowledgeDoc.external_id == external_id)
            .order_by(col(Chunk.chunk_index))
        )
        return list(rows.scalars())


async def test_a_passage_is_its_chunks_range_of_the_content(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    me = await caller(app, "passages@example.com")
    # Several overlapping chunks: each page starts and ends on the chunks it names.
    content = long_text(120)
    assert await upsert(runtime, me, doc("long", content)) == ["created"]
    chunks = await _stored_chunks(runtime, "long")
    assert len(chunks) >= 5
    for index in range(len(chunks)):
        page = await passages.read_around(
            runtime=runtime,
            principal=me,
            external_id="long",
            around_chunk=index,
            neighbours=1,
            max_chars=32_000,
        )
        held = list(range(max(0, index - 1), min(len(chunks), index + 2)))
        assert page.chunks == held
        assert page.content == content[page.offset : page.offset + len(page.content)]
        assert page.content.startswith(chunks[held[0]]) and chunks[index] in page.content
        assert page.content.rstrip().endswith(chunks[held[-1]])
    # Bounded: the hit comes first when its neighbours do not fit.
    tight = await passages.read_around(
        runtime=runtime,
        principal=me,
        external_id="long",
        around_chunk=2,
        neighbours=3,
        max_chars=len(chunks[2]),
    )
    assert tight.content == chunks[2] and 2 in (tight.chunks or [])

    with pytest.raises(ValidationFailed) as raised:
        await passages.read_around(
            runtime=runtime,
            principal=me,
            external_id="long",
            around_chunk=len(chunks),
            neighbours=0,
            max_chars=100,
        )
    assert [e.pointer for e in raised.value.errors] == ["/around_chunk"]
    # Another user's document is not found, exactly as a missing one.
    other = await caller(app, "other-passages@example.com")
    with pytest.raises(KnowledgeNotFound):
        await passages.read_around(
            runtime=runtime,
            principal=other,
            external_id="long",
            around_chunk=0,
            neighbours=0,
            max_chars=100,
        )
