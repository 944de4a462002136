"""KnowledgeDocs: batch and single upsert, get, list, delete (API.md section 5).

An upsert is planned twice: once against a read snapshot, to embed whatever new text needs it
*outside* the write lock (embedding takes seconds; writing takes milliseconds), and again inside
the write transaction against the rows as they are then. When a concurrent writer changed a
document in between, the second plan sees it, and only text that is still un-embedded (rare) is
embedded under the lock. So two concurrent upserts of one external_id serialize cleanly: one
creates, the other updates or is a no_op, and the document is never half of each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlmodel import col, select

from app.embedding.chunking import TextChunk, chunk_texts, embedding_title, join_title, sha256_hex
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
from app.services import offload
from app.services.runtime import Principal, Runtime, period_key
from app.storage.database import add_counts
from app.storage.index import IndexedChunk

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


# --- planning ------------------------------------------------------------------------------


@dataclass
class _Existing:
    doc: KnowledgeDoc
    chunks: list[Chunk]


@dataclass
class _Plan:
    item: KnowledgeDocItem
    status: UpsertStatus
    existing: _Existing | None
    content_sha: str
    #: Set when content changed (or is new): the new chunks and the hash of what each embeds.
    chunks: list[TextChunk] | None = None
    embed_shas: list[str] = field(default_factory=list)
    embed_texts: list[str] = field(default_factory=list)
    #: The document as stored once the upsert is done (its content not loaded).
    doc: KnowledgeDoc | None = None


class _Texts:
    """What each item of a request makes: its content's hash and, only for content that is
    new, its chunks and the text (and hash) each chunk embeds. Worked out once per request,
    however many times it is planned."""

    def __init__(self, items: Sequence[KnowledgeDocItem]) -> None:
        self.items = items
        self.content_shas = [sha256_hex(i.content) for i in items]
        self._chunked: dict[int, tuple[list[TextChunk], list[str], list[str]]] = {}

    def pending(self, indexes: Sequence[int]) -> list[int]:
        return [i for i in dict.fromkeys(indexes) if i not in self._chunked]

    def chunk(self, indexes: Sequence[int]) -> None:
        todo = self.pending(indexes)
        if not todo:
            return
        for i, chunks in zip(todo, chunk_texts([self.items[i].content for i in todo]), strict=True):
            title = embedding_title(self.items[i].title)
            texts = [join_title(title, c.text) for c in chunks]
            self._chunked[i] = (chunks, texts, [sha256_hex(t) for t in texts])

    def chunked(self, i: int) -> tuple[list[TextChunk], list[str], list[str]]:
        return self._chunked[i]


async def _texts(items: Sequence[KnowledgeDocItem]) -> _Texts:
    """The request's `_Texts`, hashed in a worker thread when there is much content (as the
    intake parses a large body)."""
    return await offload.off_loop(sum(len(i.content) for i in items), lambda: _Texts(items))


async def _plan(texts: _Texts, existing: dict[str, _Existing]) -> list[_Plan]:
    """Each item's status against `existing`, with chunks for the content that changed (chunked
    in a worker thread when there is much of it, a 10 MB batch being about a second of it)."""
    olds = [existing.get(item.external_id) for item in texts.items]
    rewrite = [
        i
        for i, old in enumerate(olds)
        if old is None or old.doc.content_sha256 != texts.content_shas[i]
    ]
    todo = texts.pending(rewrite)
    await offload.off_loop(sum(len(texts.items[i].content) for i in todo), lambda: texts.chunk(todo))
    plans: list[_Plan] = []
    for i, (item, old, sha) in enumerate(zip(texts.items, olds, texts.content_shas, strict=True)):
        if old is None or old.doc.content_sha256 != sha:
            chunks, embed_texts, embed_shas = texts.chunked(i)
            status: UpsertStatus = "created" if old is None else "updated"
            plans.append(
                _Plan(
                    item,
                    status,
                    old,
                    sha,
                    chunks=chunks,
                    embed_texts=embed_texts,
                    embed_shas=embed_shas,
                )
            )
        else:
            same = old.doc.title == item.title and old.doc.metadata_ == item.metadata
            plans.append(_Plan(item, "no_op" if same else "updated", old, sha, doc=old.doc))
    return plans


async def _load_existing(
    session: AsyncSession, user_id: int, texts: _Texts
) -> dict[str, _Existing]:
    """The stored documents of these items, without their content (what is compared is its
    hash), and the chunks of only those that will be rewritten or retitled: a replay of
    unchanged documents reads one row each and no vectors."""
    wanted = {
        item.external_id: (item, sha)
        for item, sha in zip(texts.items, texts.content_shas, strict=True)
    }
    out: dict[str, _Existing] = {}
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
            out[d.external_id] = _Existing(d, [])
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


def _needed(plans: Sequence[_Plan], have: set[str]) -> dict[str, str]:
    """Hash -> text of everything the plans embed that no known vector covers."""
    need: dict[str, str] = {}
    for p in plans:
        reusable = {c.embed_sha256 for c in p.existing.chunks} if p.existing else set()
        for sha, t in zip(p.embed_shas, p.embed_texts, strict=True):
            if sha not in have and sha not in reusable:
                need[sha] = t
    return need


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
) -> list[_Plan]:
    """Plan against a read snapshot; refuse what the quota would refuse and finish what changes
    nothing there, before any embedding; embed outside the write lock; then write, re-planned
    against the rows as they are under the lock. When a concurrent writer changed a document in
    between so that its text needs embedding after all, the write is rolled back and the text
    embedded outside the lock again: nothing is ever embedded while holding it."""
    texts = await _texts(items)
    fresh: dict[str, Vectors] = {}
    for _ in range(MAX_PLANS):
        async with runtime.db.read() as session:
            snapshot = await _load_existing(session, principal.user_id, texts)
            plans = await _plan(texts, snapshot)
            if all(p.status == "no_op" for p in plans):
                return plans
            await _check_quota(session, principal, plans)
        fresh.update(await _embed(runtime, _needed(plans, set(fresh))))
        try:
            return await _write(runtime, principal, texts, fresh)
        except _ChangedMeanwhile:
            continue
    raise Unavailable(
        "These documents are being changed by other requests; retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _write(
    runtime: Runtime, principal: Principal, texts: _Texts, fresh: dict[str, Vectors]
) -> list[_Plan]:
    async with runtime.db.write(user_id=principal.user_id) as session:
        current = await _load_existing(session, principal.user_id, texts)
        plans = await _plan(texts, current)
        if _needed(plans, set(fresh)):
            raise _ChangedMeanwhile()
        await _check_quota(session, principal, plans)
        embedded = await _apply(runtime, session, principal, plans, fresh)
        if embedded:
            await _count_embedded(session, principal.user_id, embedded)
    return plans


async def _check_quota(session: AsyncSession, principal: Principal, plans: Sequence[_Plan]) -> None:
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
    plans: Sequence[_Plan],
    fresh: dict[str, Vectors],
) -> int:
    """Write the planned documents, a statement per kind of change for the whole batch rather
    than per document; returns how many chunk vectors were newly embedded."""
    now = utcnow()
    writes = [p for p in plans if p.status != "no_op"]
    rewritten = [p for p in writes if p.chunks is not None]
    replaced = [p.existing for p in rewritten if p.existing is not None]
    # The old rows carry their vectors: a chunk whose text is unchanged keeps its vector.
    reused = {c.embed_sha256: c.embedding for e in replaced for c in e.chunks}
    old_ids = [c.id for e in replaced for c in e.chunks if c.id is not None]
    if old_ids:
        await runtime.index.delete(session, old_ids)
    if replaced:
        await session.execute(
            delete(Chunk).where(col(Chunk.doc_id).in_([e.doc.id for e in replaced]))
        )
    retitled: list[_Plan] = []
    docs: dict[str, KnowledgeDoc] = {}
    for p in writes:
        item = p.item
        if p.existing is None:
            doc = KnowledgeDoc(
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
        else:
            doc = p.existing.doc
            if p.chunks is None and doc.title != item.title:
                retitled.append(p)
        doc.title = item.title
        doc.metadata_ = item.metadata
        doc.updated_at = now
        if p.chunks is not None:
            doc.content = item.content
            doc.content_sha256 = p.content_sha
            doc.char_count = len(item.content)
            doc.chunk_count = len(p.chunks)
        session.add(doc)
        docs[item.external_id] = p.doc = doc
    await session.flush()  # the documents before the chunks that refer to them
    for p in retitled:
        assert p.existing is not None
        await runtime.index.retitle(
            session, title=p.item.title, chunk_ids=[c.id for c in p.existing.chunks if c.id]
        )
    rows: list[dict[str, object]] = []
    titled: list[tuple[str | None, list[tuple[str, Vectors]]]] = []
    embedded = 0
    for p in rewritten:
        assert p.chunks is not None
        own = {c.embed_sha256 for c in p.existing.chunks} if p.existing else set()
        embedded += sum(1 for s in p.embed_shas if s not in own)
        vectors = [reused[s] if s in reused else fresh[s] for s in p.embed_shas]
        doc_id = docs[p.item.external_id].id
        rows.extend(
            {
                "doc_id": doc_id,
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
        return embedded
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
    return embedded


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


async def get_doc(*, runtime: Runtime, principal: Principal, external_id: str) -> KnowledgeDocPublic:
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
) -> Page[KnowledgeDocPublic]:
    """Ordered by external_id (binary, case-sensitive); `updated_since` is inclusive."""
    position = decode_cursor(cursor, keys=("after",))
    where = [col(KnowledgeDoc.user_id) == principal.user_id]
    if updated_since is not None:
        where.append(col(KnowledgeDoc.updated_at) >= updated_since)
    async with runtime.db.read() as session:
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
