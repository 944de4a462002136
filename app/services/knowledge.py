"""KnowledgeDocs: batch and single upsert, get, list, delete (API.md section 5).

An upsert is planned twice: once against a read snapshot, to embed whatever new text needs it
*outside* the write lock (embedding takes seconds; writing takes milliseconds), and again inside
the write transaction against the rows as they are then. When a concurrent writer changed a
document in between, the second plan sees it, and only text that is still un-embedded (rare) is
embedded under the lock. So two concurrent upserts of one external_id serialize cleanly: one
creates, the other updates or is a no_op, and the document is never half of each.

The planning itself (what each item does, which chunks go, which vectors are kept) is
app/services/upsert_plan.py; this module reads the stored rows, embeds, and writes.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlmodel import col, select

from app.errors import (
    BatchTooLarge,
    ContentTooLarge,
    DuplicateExternalId,
    FieldError,
    InvalidExternalId,
    KnowledgeNotFound,
    KnowledgeQuotaExceeded,
    Unavailable,
    ValidationFailed,
)
from app.models import (
    EXTERNAL_ID_RE,
    BatchUpsertResponse,
    Chunk,
    KnowledgeDoc,
    KnowledgeDocBody,
    KnowledgeDocItem,
    KnowledgeDocPublic,
    Page,
    UpsertResult,
    UpsertStatus,
    UpsertSummary,
    UsageCounter,
    utcnow,
)
from app.models.knowledge import Vectors
from app.models.pagination import decode_cursor, encode_cursor
from app.services import feed, upsert_plan
from app.services.runtime import Principal, Runtime, period_key
from app.services.upsert_plan import Existing, ItemPlan, Texts
from app.storage.database import add_counts
from app.storage.index import IndexedChunk
from app.storage.index.scope import metadata_conditions, prefix_condition

# --- validation ----------------------------------------------------------------------------


def check_external_id(external_id: str) -> str:
    if not EXTERNAL_ID_RE.fullmatch(external_id):
        raise InvalidExternalId("external_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return external_id


def _check_batch(principal: Principal, items: Sequence[KnowledgeDocItem]) -> None:
    limit = principal.plan.limits.batch_items
    if len(items) > limit:
        raise BatchTooLarge(
            f"The batch has {len(items)} items; the {principal.plan.id} plan allows {limit}.",
            errors=[FieldError("/items", BatchTooLarge.code, f"at most {limit} items")],
        )
    seen: dict[str, int] = {}
    dupes: list[FieldError] = []
    for i, item in enumerate(items):
        if item.external_id in seen:
            dupes.append(
                FieldError(
                    f"/items/{i}/external_id",
                    DuplicateExternalId.code,
                    f"{item.external_id!r} is also item {seen[item.external_id]}",
                )
            )
        else:
            seen[item.external_id] = i
    if dupes:
        raise DuplicateExternalId(
            "The same external_id appears more than once in the batch.", errors=dupes
        )
    _check_sizes(principal, [(f"/items/{i}", item.content) for i, item in enumerate(items)])


def _check_sizes(principal: Principal, contents: Sequence[tuple[str, str]]) -> None:
    limit = principal.plan.limits.doc_chars
    errors = [
        FieldError(f"{where}/content", ContentTooLarge.code, f"{len(c)} characters; limit {limit}")
        for where, c in contents
        if len(c) > limit
    ]
    if errors:
        raise ContentTooLarge(
            f"Content is limited to {limit} characters per document on the "
            f"{principal.plan.id} plan.",
            errors=errors,
        )


# --- reading and embedding -----------------------------------------------------------------


async def _load_existing(session: AsyncSession, user_id: int, texts: Texts) -> dict[str, Existing]:
    """The stored documents of these items, without their content (what is compared is its
    hash), and the chunks of only those that will be rewritten or retitled: a replay of
    unchanged documents reads one row each and no vectors."""
    wanted = {
        item.external_id: (item, sha)
        for item, sha in zip(texts.items, texts.content_shas, strict=True)
    }
    out: dict[str, Existing] = {}
    ids = list(wanted)
    for start in range(0, len(ids), 500):
        docs = (
            await session.execute(
                select(KnowledgeDoc)
                .where(
                    KnowledgeDoc.user_id == user_id,
                    col(KnowledgeDoc.external_id).in_(ids[start : start + 500]),
                )
                .options(defer(KnowledgeDoc.content))  # type: ignore[arg-type]
            )
        ).scalars()
        for d in docs:
            out[d.external_id] = Existing(d, [])
    changing = {
        e.doc.id: e
        for e in out.values()
        if e.doc.content_sha256 != wanted[e.doc.external_id][1]
        or e.doc.title != wanted[e.doc.external_id][0].title
    }
    keys = list(changing)
    for start in range(0, len(keys), 500):
        chunks = (
            await session.execute(
                select(Chunk)
                .where(col(Chunk.doc_id).in_(keys[start : start + 500]))
                .order_by(col(Chunk.doc_id), col(Chunk.chunk_index))
            )
        ).scalars()
        for c in chunks:
            changing[c.doc_id].chunks.append(c)
    return out


async def _embed(runtime: Runtime, need: dict[str, str]) -> dict[str, Vectors]:
    if not need:
        return {}
    shas = list(need)
    vectors = await runtime.embedder.embed([need[s] for s in shas])
    return dict(zip(shas, vectors, strict=True))


# --- writing -------------------------------------------------------------------------------

#: Times an upsert embeds what other writers changed under it before it gives up (503).
MAX_PLANS = 5


class _ChangedMeanwhile(Exception):
    """Another writer changed these documents' content between the snapshot and the write."""


async def _upsert(
    runtime: Runtime, principal: Principal, items: Sequence[KnowledgeDocItem]
) -> list[ItemPlan]:
    """Plan against a read snapshot; refuse what the quota would refuse and finish what changes
    nothing there, before any embedding; embed outside the write lock; then write, re-planned
    against the rows as they are under the lock. When a concurrent writer changed a document in
    between so that its text needs embedding after all, the write is rolled back and the text
    embedded outside the lock again: nothing is ever embedded while holding it."""
    texts = await upsert_plan.texts_of(items)
    fresh: dict[str, Vectors] = {}
    for _ in range(MAX_PLANS):
        async with runtime.db.read() as session:
            snapshot = await _load_existing(session, principal.user_id, texts)
            plans = await upsert_plan.plan(texts, snapshot)
            if all(p.status == "no_op" for p in plans):
                return plans
            await _check_quota(session, principal, plans)
        fresh.update(await _embed(runtime, upsert_plan.needed(plans, set(fresh))))
        try:
            return await _write(runtime, principal, texts, fresh)
        except _ChangedMeanwhile:
            continue
    raise Unavailable(
        "These documents are being changed by other requests; retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _write(
    runtime: Runtime, principal: Principal, texts: Texts, fresh: dict[str, Vectors]
) -> list[ItemPlan]:
    async with runtime.db.write(user_id=principal.user_id) as session:
        current = await _load_existing(session, principal.user_id, texts)
        plans = await upsert_plan.plan(texts, current)
        if upsert_plan.needed(plans, set(fresh)):
            raise _ChangedMeanwhile()
        await _check_quota(session, principal, plans)
        embedded = await _apply(runtime, session, principal, plans, fresh)
        if embedded:
            await _count_embedded(session, principal.user_id, embedded)
    return plans


async def _check_quota(
    session: AsyncSession, principal: Principal, plans: Sequence[ItemPlan]
) -> None:
    """Refuse a write that would pass a limit; a write that does not grow a dimension passes
    even at (or over) the limit, so updates keep working on a full account."""
    add_docs = sum(1 for p in plans if p.existing is None)
    add_chars = sum(
        len(p.item.content) - (p.existing.doc.char_count if p.existing else 0)
        for p in plans
        if p.status != "no_op"
    )
    if add_docs <= 0 and add_chars <= 0:
        return
    docs, chars = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(KnowledgeDoc.char_count), 0)).where(
                KnowledgeDoc.user_id == principal.user_id
            )
        )
    ).one()
    limits = principal.plan.limits
    if add_docs > 0 and docs + add_docs > limits.knowledge_docs:
        raise KnowledgeQuotaExceeded(
            f"This write would make {docs + add_docs} documents; the {principal.plan.id} plan "
            f"allows {limits.knowledge_docs}.",
            extra={"limit": "knowledge_docs", "used": docs, "allowed": limits.knowledge_docs},
        )
    if add_chars > 0 and chars + add_chars > limits.knowledge_chars:
        raise KnowledgeQuotaExceeded(
            f"This write would make {chars + add_chars} characters of content; the "
            f"{principal.plan.id} plan allows {limits.knowledge_chars}.",
            extra={"limit": "knowledge_chars", "used": chars, "allowed": limits.knowledge_chars},
        )


async def _apply(
    runtime: Runtime,
    session: AsyncSession,
    principal: Principal,
    plans: Sequence[ItemPlan],
    fresh: dict[str, Vectors],
) -> int:
    """Write the planned documents, a statement per kind of change for the whole batch rather
    than per document; returns how many chunk vectors were newly embedded."""
    changes = upsert_plan.changes(plans)
    await _delete_replaced_chunks(runtime, session, changes)
    await _save_docs(session, principal, changes.writes)
    await _retitle_kept_chunks(runtime, session, changes.retitled)
    await _insert_new_chunks(runtime, session, principal, changes, fresh)
    return changes.newly_embedded


async def _delete_replaced_chunks(
    runtime: Runtime, session: AsyncSession, changes: upsert_plan.Changes
) -> None:
    """The chunk rows (and index entries) of documents whose content changed; their vectors
    are already in `changes.reused` for the new chunks that embed the same text."""
    if changes.old_chunk_ids:
        await runtime.index.delete(session, changes.old_chunk_ids)
    if changes.replaced:
        await session.execute(
            delete(Chunk).where(col(Chunk.doc_id).in_([e.doc.id for e in changes.replaced]))
        )


async def _save_docs(
    session: AsyncSession, principal: Principal, writes: Sequence[ItemPlan]
) -> None:
    """Create or update the document rows; each plan's `doc` is then the row as stored. Each
    takes the next number of the user's change sequence (app/services/feed.py)."""
    now = utcnow()
    if not writes:
        return
    seq = await feed.take_seqs(session, user_id=principal.user_id, count=len(writes))
    await feed.forget_tombstones(
        session,
        user_id=principal.user_id,
        external_ids=[p.item.external_id for p in writes if p.existing is None],
    )
    for p in writes:
        item = p.item
        doc = p.existing.doc if p.existing is not None else _new_doc(principal, item, now)
        doc.title = item.title
        doc.metadata_ = item.metadata
        doc.updated_at = now
        doc.change_seq, seq = seq, seq + 1
        if p.chunks is not None:
            doc.content = item.content
            doc.content_sha256 = p.content_sha
            doc.char_count = len(item.content)
            doc.chunk_count = len(p.chunks)
        session.add(doc)
        p.doc = doc
    await session.flush()  # the documents before the chunks that refer to them


def _new_doc(principal: Principal, item: KnowledgeDocItem, now: datetime) -> KnowledgeDoc:
    return KnowledgeDoc(
        id=uuid.uuid4().hex,
        user_id=principal.user_id,
        external_id=item.external_id,
        created_at=now,
        content="",
        content_sha256="",
        char_count=0,
        chunk_count=0,
        updated_at=now,
    )


async def _retitle_kept_chunks(
    runtime: Runtime, session: AsyncSession, retitled: Sequence[ItemPlan]
) -> None:
    """Documents with a new title and the same content keep their chunk rows (and vectors);
    the index takes the new title."""
    for p in retitled:
        assert p.existing is not None
        await runtime.index.retitle(
            session, title=p.item.title, chunk_ids=[c.id for c in p.existing.chunks if c.id]
        )


async def _insert_new_chunks(
    runtime: Runtime,
    session: AsyncSession,
    principal: Principal,
    changes: upsert_plan.Changes,
    fresh: dict[str, Vectors],
) -> None:
    """The chunk rows of the rewritten documents, with their vectors (kept or fresh), and their
    index entries."""
    rows: list[dict[str, object]] = []
    titled: list[tuple[str | None, list[tuple[str, Vectors]]]] = []
    for p in changes.rewritten:
        assert p.chunks is not None and p.doc is not None
        vectors = changes.vectors(p, fresh)
        rows.extend(
            {
                "doc_id": p.doc.id,
                "user_id": principal.user_id,
                "chunk_index": c.index,
                "text": c.text,
                "embed_sha256": sha,
                "embedding": vector,
            }
            for c, sha, vector in zip(p.chunks, p.embed_shas, vectors, strict=True)
        )
        titled.append((p.item.title, [(c.text, v) for c, v in zip(p.chunks, vectors, strict=True)]))
    if not rows:
        return
    # One multi-row INSERT ... RETURNING for every new chunk (the ORM's bulk path: a tenth of
    # the unit of work's time on the event loop for a batch of 100 documents).
    inserted = await session.execute(
        insert(Chunk).returning(col(Chunk.id), sort_by_parameter_order=True), rows
    )
    ids = iter([int(i) for i in inserted.scalars() if i is not None])
    await runtime.index.put_many(
        session,
        user_id=principal.user_id,
        docs=[
            (title, [IndexedChunk(next(ids), text, vector) for text, vector in chunks])
            for title, chunks in titled
        ],
    )


async def _count_embedded(session: AsyncSession, user_id: int, n: int) -> None:
    await add_counts(
        session, UsageCounter, {"user_id": user_id, "period": period_key()}, embedded_chunks=n
    )


# --- the use cases -------------------------------------------------------------------------


async def upsert_many(
    *, runtime: Runtime, principal: Principal, items: Sequence[KnowledgeDocItem]
) -> BatchUpsertResponse:
    """Batch upsert, all or nothing; results in request order."""
    _check_batch(principal, items)
    plans = await _upsert(runtime, principal, items)
    summary = UpsertSummary()
    results = []
    for p in plans:
        setattr(summary, p.status, getattr(summary, p.status) + 1)
        results.append(UpsertResult(external_id=p.item.external_id, status=p.status))
    return BatchUpsertResponse(results=results, summary=summary)


async def upsert_one(
    *, runtime: Runtime, principal: Principal, external_id: str, body: KnowledgeDocBody
) -> tuple[UpsertStatus, KnowledgeDocPublic]:
    check_external_id(external_id)
    if body.external_id is not None and body.external_id != external_id:
        raise ValidationFailed(
            "The body's external_id must equal the one in the path.",
            errors=[
                FieldError(
                    "/external_id",
                    ValidationFailed.code,
                    f"must be {external_id!r} (from the path) or left out",
                )
            ],
        )
    _check_sizes(principal, [("", body.content)])
    item = KnowledgeDocItem(
        external_id=external_id, title=body.title, content=body.content, metadata=body.metadata
    )
    (plan,) = await _upsert(runtime, principal, [item])
    # Read back rather than built from the rows in hand: a read after the write keeps every
    # reader's view of SQLite's WAL index current (without it, a data dir turned read-only under
    # a running server crashed it with SIGBUS in tests/storage/test_disk.py).
    doc = await get_doc(runtime=runtime, principal=principal, external_id=external_id)
    return plan.status, doc


async def _find(session: AsyncSession, principal: Principal, external_id: str) -> KnowledgeDoc:
    doc = (
        await session.execute(
            select(KnowledgeDoc).where(
                KnowledgeDoc.user_id == principal.user_id, KnowledgeDoc.external_id == external_id
            )
        )
    ).scalar_one_or_none()
    if doc is None:
        raise KnowledgeNotFound(f"No document {external_id!r}.")
    return doc


async def get_doc(
    *, runtime: Runtime, principal: Principal, external_id: str
) -> KnowledgeDocPublic:
    check_external_id(external_id)
    async with runtime.db.read() as session:
        doc = await _find(session, principal, external_id)
    return KnowledgeDocPublic.of(doc, include_content=True)


async def list_docs(
    *,
    runtime: Runtime,
    principal: Principal,
    limit: int,
    cursor: str | None = None,
    include_content: bool = False,
    updated_since: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    external_id_prefix: str | None = None,
) -> Page[KnowledgeDocPublic]:
    """Ordered by external_id (binary, case-sensitive); `updated_since` is inclusive.
    `metadata`: equality filters, all of which must hold (JSON equality, as the search's
    `metadata` filter: app/storage/index/scope.py); `external_id_prefix`: case-sensitive. The
    cursor holds only the last external_id, so it goes on under any filters."""
    position = decode_cursor(cursor, keys=("after",))
    where = [col(KnowledgeDoc.user_id) == principal.user_id]
    if updated_since is not None:
        where.append(col(KnowledgeDoc.updated_at) >= updated_since)
    if external_id_prefix is not None:
        where.append(prefix_condition(external_id_prefix))
    async with runtime.db.read() as session:
        if metadata:
            matching = await runtime.index.metadata_sql(session, metadata.values())
            where.extend(metadata_conditions(metadata, matching, itertools.count()))
        total = (
            await session.execute(select(func.count()).select_from(KnowledgeDoc).where(*where))
        ).scalar_one()
        query = select(KnowledgeDoc).where(*where)
        if position is not None:
            query = query.where(col(KnowledgeDoc.external_id) > position["after"])
        docs = list(
            (
                await session.execute(
                    query.order_by(col(KnowledgeDoc.external_id)).limit(limit + 1)
                )
            ).scalars()
        )
    more = len(docs) > limit
    docs = docs[:limit]
    return Page[KnowledgeDocPublic](
        items=[KnowledgeDocPublic.of(d, include_content=include_content) for d in docs],
        next_cursor=encode_cursor({"after": docs[-1].external_id}) if more else None,
        total=total,
    )


async def delete_doc(*, runtime: Runtime, principal: Principal, external_id: str) -> bool:
    """Delete a document, its chunks, vectors, keyword rows and persona attachments.
    Idempotent: returns whether there was something to delete."""
    check_external_id(external_id)
    async with runtime.db.write(user_id=principal.user_id) as session:
        try:
            doc = await _find(session, principal, external_id)
        except KnowledgeNotFound:
            return False
        chunk_ids = list(
            (await session.execute(select(Chunk.id).where(Chunk.doc_id == doc.id))).scalars()
        )
        await runtime.index.delete(session, [i for i in chunk_ids if i is not None])
        # Chunks and persona attachments go by ON DELETE CASCADE.
        await session.delete(doc)
        await feed.record_delete(
            session,
            user_id=principal.user_id,
            external_id=external_id,
            now=utcnow(),
            retention_days=runtime.settings.changes_retention_days,
        )
    return True


async def find_docs(
    *, runtime: Runtime, principal: Principal, text: str, limit: int, cursor: str | None = None
) -> Page[KnowledgeDocPublic]:
    """The dashboard's document search: documents whose external_id starts with `text`
    (exactly, case-sensitive) or whose title contains it (ignoring case), ordered and paged
    like `list_docs`, without content."""
    position = decode_cursor(cursor, keys=("after",))
    external_id = col(KnowledgeDoc.external_id)
    # substr() rather than LIKE: an external_id may hold `_`, a LIKE wildcard, and LIKE's case
    # rules differ between SQLite and PostgreSQL.
    prefix = func.substr(external_id, 1, len(text)) == text
    title = func.lower(col(KnowledgeDoc.title)).contains(text.lower(), autoescape=True)
    where = [col(KnowledgeDoc.user_id) == principal.user_id, prefix | title]
    async with runtime.db.read() as session:
        total = (
            await session.execute(select(func.count()).select_from(KnowledgeDoc).where(*where))
        ).scalar_one()
        query = select(KnowledgeDoc).where(*where).options(defer(KnowledgeDoc.content))  # type: ignore[arg-type]
        if position is not None:
            query = query.where(external_id > position["after"])
        docs = list((await session.execute(query.order_by(external_id).limit(limit + 1))).scalars())
    more = len(docs) > limit
    docs = docs[:limit]
    return Page[KnowledgeDocPublic](
        items=[KnowledgeDocPublic.of(d, include_content=False) for d in docs],
        next_cursor=encode_cursor({"after": docs[-1].external_id}) if more else None,
        total=total,
    )
