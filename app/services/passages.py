"""A document read around one of its chunks: a search hit's passage with its neighbours, for an
agent that found a hit (its `chunk_index`) and wants the text around it, not the whole document.

Chunks are windows of the stored content (`app.embedding.chunking`), stripped, overlapping, in
order, so each one is found in the content after the start of the one before it; the page is
then a plain character range of the content, and reading on from its `next_offset` continues
the document exactly where the passage ends.
"""

from __future__ import annotations

from sqlmodel import col, select

from app.errors import FieldError, InternalError, KnowledgeNotFound, ValidationFailed
from app.models import KnowledgeDoc, KnowledgeDocPublic
from app.models.knowledge import Chunk, KnowledgeDocPage
from app.services.knowledge import check_external_id
from app.services.runtime import Principal, Runtime


async def read_around(
    *,
    runtime: Runtime,
    principal: Principal,
    external_id: str,
    around_chunk: int,
    neighbours: int,
    max_chars: int,
) -> KnowledgeDocPage:
    """The content from the start of chunk `around_chunk - neighbours` to the end of chunk
    `around_chunk + neighbours` (as far as the document has them). When that is longer than
    `max_chars`, the neighbours before the hit give way first: the page starts no later than
    the hit's chunk while the hit fits, and holds `max_chars` characters."""
    check_external_id(external_id)
    first = max(0, around_chunk - neighbours)
    last = around_chunk + neighbours
    async with runtime.db.read() as session:
        doc = (
            await session.execute(
                select(KnowledgeDoc).where(
                    KnowledgeDoc.user_id == principal.user_id,
                    KnowledgeDoc.external_id == external_id,
                )
            )
        ).scalar_one_or_none()
        if doc is None:
            raise KnowledgeNotFound(f"No document {external_id!r}.")
        if around_chunk >= doc.chunk_count:
            message = f"the document has {doc.chunk_count} chunk(s), 0 to {doc.chunk_count - 1}"
            raise ValidationFailed(
                f"around_chunk {around_chunk}: {message}.",
                errors=[FieldError("/around_chunk", ValidationFailed.code, message)],
            )
        # Every chunk up to the last one wanted, text only: each is looked for after the one
        # before it, so a passage that repeats earlier in the document is still placed right.
        rows = (
            await session.execute(
                select(col(Chunk.chunk_index), col(Chunk.text))
                .where(Chunk.doc_id == doc.id, col(Chunk.chunk_index) <= last)
                .order_by(col(Chunk.chunk_index))
            )
        ).all()
    public = KnowledgeDocPublic.of(doc, include_content=True)
    content = public.content or ""
    spans: dict[int, tuple[int, int]] = {}
    position = 0
    for index, text in rows:
        at = content.find(text, position)
        if at < 0:  # chunks are cut from the content itself: this is a bug, not bad input
            raise InternalError(f"Chunk {index} of {external_id!r} is not in its content.")
        spans[index] = (at, at + len(text))
        position = at + 1
    start, end = spans[first][0], spans[min(last, max(spans))][1]
    if end - start > max_chars:
        start = max(start, min(spans[around_chunk][0], end - max_chars))
        end = min(end, start + max_chars)
    if not content[end:].strip() and len(content) - start <= max_chars:
        end = len(content)  # only the whitespace a chunk is stripped of follows: the end
    held = [
        i
        for i in range(first, last + 1)
        if i in spans and spans[i][0] < end and spans[i][1] > start
    ]
    return KnowledgeDocPage.of(public, offset=start, max_chars=end - start, chunks=held)
