"""The changes feed of a user's documents (API.md section 11), and the bookkeeping the writes do
for it.

Every write of a document (created or updated, never a no_op) takes the next number of the
user's change sequence (`knowledge_feeds.last_seq`) inside its write transaction, and stores it
on the row (`knowledge_docs.change_seq`); a delete stores it on a tombstone. A write holds the
user's write lock (`Database.write(user_id=...)`: SQLite serialises every write, PostgreSQL takes
the user's advisory lock) from before it takes its number until it commits, so a user's numbers
commit in order: a reader that sees seq N+1 sees N too. The feed is then "everything above the
token's seq, in seq order", read in one snapshot: a page can end anywhere, and writes between
or during calls land above what was handed out.

A token (`since`) is the seq last handed out and a `floor`: the purge horizon the consumer is
immune to. A consumer that started from scratch (no `since`) when tombstones up to P had been
purged never held those documents, so a later token of its traversal expires only when a
tombstone above both its seq and P is purged (docs/decisions.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlmodel import col, select

from app.errors import ChangesExpired, InvalidCursor
from app.models import (
    CHANGES_DEFAULT_LIMIT,
    KnowledgeChange,
    KnowledgeChanges,
    KnowledgeDoc,
    KnowledgeDocPublic,
    KnowledgeFeedState,
    KnowledgeTombstone,
)
from app.models.pagination import decode_cursor, encode_cursor
from app.services.runtime import Principal, Runtime
from app.storage.database import add_count_returning

#: The token layout's version: a future layout changes it, and old tokens are then refused
#: (400) rather than misread.
TOKEN_VERSION = "1"
#: A seq as a token holds it: decimal, no sign, within a signed 64-bit column.
_SEQ_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$", re.ASCII)
_MAX_SEQ = 2**63 - 1


# --- tokens --------------------------------------------------------------------------------


def encode_since(after: int, floor: int) -> str:
    return encode_cursor({"v": TOKEN_VERSION, "after": str(after), "floor": str(floor)})


def decode_since(token: str) -> tuple[int, int]:
    """(after, floor) of a token of ours; `InvalidCursor` for anything else, a list cursor
    included."""
    position = decode_cursor(token, keys=("v", "after", "floor"))
    if position is None or position["v"] != TOKEN_VERSION:
        raise InvalidCursor("The since token does not decode.")
    values = []
    for key in ("after", "floor"):
        if not _SEQ_RE.fullmatch(position[key]) or int(position[key]) > _MAX_SEQ:
            raise InvalidCursor("The since token does not decode.")
        values.append(int(position[key]))
    return values[0], values[1]


# --- what the writes record (called inside their write transaction) ------------------------


async def take_seqs(session: AsyncSession, *, user_id: int, count: int) -> int:
    """Hand out `count` consecutive seqs of the user's change sequence; returns the first.
    Must run inside a write holding the user's lock (see the module's docstring)."""
    last = await add_count_returning(
        session, KnowledgeFeedState, {"user_id": user_id}, "last_seq", count
    )
    return last - count + 1


async def forget_tombstones(
    session: AsyncSession, *, user_id: int, external_ids: Sequence[str]
) -> None:
    """Documents created again: their new seq supersedes the tombstone, which goes."""
    for start in range(0, len(external_ids), 500):
        await session.execute(
            delete(KnowledgeTombstone).where(
                col(KnowledgeTombstone.user_id) == user_id,
                col(KnowledgeTombstone.external_id).in_(external_ids[start : start + 500]),
            )
        )


async def record_delete(
    session: AsyncSession,
    *,
    user_id: int,
    external_id: str,
    now: datetime,
    retention_days: float,
) -> None:
    """The tombstone of a document deleted now, and the purge of the user's tombstones past
    the retention (under the same lock, so the purged seq recorded is exact)."""
    seq = await take_seqs(session, user_id=user_id, count=1)
    await forget_tombstones(session, user_id=user_id, external_ids=[external_id])
    session.add(
        KnowledgeTombstone(user_id=user_id, external_id=external_id, seq=seq, deleted_at=now)
    )
    await session.flush()
    await purge_expired(session, user_id=user_id, before=now - timedelta(days=retention_days))


async def purge_expired(session: AsyncSession, *, user_id: int, before: datetime) -> int:
    """Drop the user's tombstones deleted before `before` and raise the purge horizon to the
    highest seq dropped; returns how many went. Inside a write holding the user's lock."""
    old = [
        col(KnowledgeTombstone.user_id) == user_id,
        col(KnowledgeTombstone.deleted_at) < before,
    ]
    count, highest = (
        await session.execute(select(func.count(), func.max(KnowledgeTombstone.seq)).where(*old))
    ).one()
    if not count:
        return 0
    await session.execute(delete(KnowledgeTombstone).where(*old))
    await session.execute(
        update(KnowledgeFeedState)
        .where(
            col(KnowledgeFeedState.user_id) == user_id,
            col(KnowledgeFeedState.purged_seq) < highest,
        )
        .values(purged_seq=highest)
    )
    return int(count)


# --- the feed --------------------------------------------------------------------------------


async def list_changes(
    *,
    runtime: Runtime,
    principal: Principal,
    since: str | None = None,
    limit: int = CHANGES_DEFAULT_LIMIT,
    include_content: bool = False,
) -> KnowledgeChanges:
    """The user's changes after `since` (from the start of the retained history without it),
    in commit order, at most `limit`. `ChangesExpired` when tombstones the token had not
    reached have been purged; `InvalidCursor` when it is not a token of ours."""
    token = decode_since(since) if since else None
    user_id = principal.user_id
    # One snapshot (app/storage/database.py `read`): the horizon, the documents and the
    # tombstones agree with one another.
    async with runtime.db.read() as session:
        purged = (
            await session.execute(
                select(KnowledgeFeedState.purged_seq).where(
                    col(KnowledgeFeedState.user_id) == user_id
                )
            )
        ).scalar_one_or_none() or 0
        if token is None:
            after, floor = 0, purged
        else:
            after, floor = token
            if purged > max(after, floor):
                raise ChangesExpired(
                    "Deleted documents' tombstones this token had not reached were purged; "
                    "list every document again, then follow the feed from a call without since."
                )
        query = select(KnowledgeDoc).where(
            col(KnowledgeDoc.user_id) == user_id, col(KnowledgeDoc.change_seq) > after
        )
        if not include_content:
            query = query.options(defer(KnowledgeDoc.content))  # type: ignore[arg-type]
        docs = (
            await session.execute(query.order_by(col(KnowledgeDoc.change_seq)).limit(limit + 1))
        ).scalars()
        tombstones = (
            await session.execute(
                select(KnowledgeTombstone)
                .where(
                    col(KnowledgeTombstone.user_id) == user_id,
                    col(KnowledgeTombstone.seq) > after,
                )
                .order_by(col(KnowledgeTombstone.seq))
                .limit(limit + 1)
            )
        ).scalars()
        entries: list[tuple[int, KnowledgeChange]] = [
            (
                d.change_seq,
                KnowledgeChange(
                    external_id=d.external_id,
                    op="upsert",
                    updated_at=d.updated_at,
                    document=KnowledgeDocPublic.of(d, include_content=include_content),
                ),
            )
            for d in docs
        ]
        entries += [
            (
                t.seq,
                KnowledgeChange(
                    external_id=t.external_id, op="delete", updated_at=t.deleted_at, document=None
                ),
            )
            for t in tombstones
        ]
    entries.sort(key=lambda e: e[0])
    page = entries[:limit]
    return KnowledgeChanges(
        changes=[change for _, change in page],
        next_since=encode_since(page[-1][0] if page else after, floor),
        has_more=len(entries) > limit,
    )
