"""Copying a deployment from one database to another (`personaizer migrate --to URL`), typically
the embedded SQLite file into PostgreSQL when a team outgrows one machine.

Every table is copied as it is, ids included (API keys keep working, cursors stay valid), and the
chunks keep their vectors: nothing is re-embedded. The target's search index is built from the
copied chunk rows as uploads would have built it. All of it is one transaction on the target: a
copy that fails half-way leaves the target as empty as it was, and can simply be run again.
A target that already holds data is refused.

The copy is then checked: every table's row count, and per user one semantic search (the user's
first chunk's own vector, whose nearest document must be the same on both sides) and one keyword
search (that chunk's words must find something).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

from app.models import Chunk, KnowledgeDoc, Persona, UsageCounter, User, utcnow
from app.models.accounts import PlanRow
from app.storage.database import Database
from app.storage.index import IndexedChunk, TitledChunks, for_dialect

log = logging.getLogger(__name__)

#: Rows read and written per statement.
BATCH = 1000


class TransferError(RuntimeError):
    """The copy cannot be made, or did not check out (the message says which)."""


@dataclass
class Report:
    rows: dict[str, int] = field(default_factory=dict)
    users_checked: int = 0
    #: The moment of the source that was copied (its snapshot's start).
    as_of: datetime | None = None


async def copy_database(
    source: Database, target: Database, *, progress: Callable[[str], None] = lambda _: None
) -> Report:
    """Copy everything in `source` into the empty `target` (both already migrated)."""
    if not await target.is_empty():
        raise TransferError(
            f"the target {target.where} already holds data; migrate copies into an empty "
            "database only (nothing was written)"
        )
    report = Report()
    tables = list(SQLModel.metadata.sorted_tables)
    async with source.read() as reading, target.write() as writing:
        # The read session is one snapshot of the source (SQLite: one read transaction;
        # PostgreSQL: REPEATABLE READ), taken at its first statement: this one.
        before = await _fingerprint(reading)
        report.as_of = utcnow()
        # An empty target still holds the plans its schema upgrade seeded from this process's
        # configuration; the source's plans are the deployment's, so they replace them.
        await writing.execute(delete(SQLModel.metadata.tables[PlanRow.__tablename__]))
        for table in tables:
            report.rows[table.name] = await _copy_table(reading, writing, table)
            progress(f"{table.name}: {report.rows[table.name]} rows")
        indexed = await _index_chunks(reading, writing, target)
        progress(f"search index: {indexed} chunks")
        if target.dialect == "postgresql":
            await _reset_sequences(writing, tables)
        # A server still writing to the source (nothing can tell from here on PostgreSQL) would
        # have its acknowledged writes missing from the copy: refuse it, before the target's
        # transaction commits, so the target is left empty.
        async with source.read() as now:
            after = await _fingerprint(now)
        if after != before:
            changed = sorted(
                k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            )
            raise TransferError(
                f"the source changed while it was copied ({', '.join(changed)}): a server is "
                "still writing to it, and its writes after the copy's moment would be missing; "
                "stop every server and run migrate again (the target was left empty)"
            )
    report.users_checked = await _verify(source, target, report)
    return report


async def _fingerprint(session: AsyncSession) -> dict[str, Any]:
    """What any write to a deployment moves: each table's row count, the newest document and
    persona change, and the usage counters' sums (requests are flushed there)."""
    out: dict[str, Any] = {}
    for table in SQLModel.metadata.sorted_tables:
        out[table.name] = (
            await session.execute(select(func.count()).select_from(table))
        ).scalar_one()
    for model in (KnowledgeDoc, Persona):
        newest = await session.execute(select(func.max(col(model.updated_at))))
        out[f"{model.__tablename__}.updated_at"] = newest.scalar_one()
    sums = await session.execute(
        select(func.sum(col(UsageCounter.requests)), func.sum(col(UsageCounter.embedded_chunks)))
    )
    out["usage_counters.sums"] = tuple(sums.one())
    return out


async def _copy_table(reading: AsyncSession, writing: AsyncSession, table: Table) -> int:
    copied = 0
    result = await reading.stream(select(table).order_by(*table.primary_key.columns))
    async for rows in result.partitions(BATCH):
        await writing.execute(insert(table), [dict(r._mapping) for r in rows])
        copied += len(rows)
    return copied


async def _index_chunks(reading: AsyncSession, writing: AsyncSession, target: Database) -> int:
    """Build the target's index from the chunk rows, a document at a time (a title each)."""
    index = for_dialect(target.dialect)
    done = 0
    after = ""
    while True:
        docs = (
            await reading.execute(
                select(col(KnowledgeDoc.id), col(KnowledgeDoc.user_id), col(KnowledgeDoc.title))
                .where(col(KnowledgeDoc.id) > after)
                .order_by(col(KnowledgeDoc.id))
                .limit(BATCH)
            )
        ).all()
        if not docs:
            return done
        chunks = (
            await reading.execute(
                select(col(Chunk.id), col(Chunk.doc_id), col(Chunk.text), col(Chunk.embedding))
                .where(col(Chunk.doc_id).in_([d.id for d in docs]))
                .order_by(col(Chunk.id))
            )
        ).all()
        by_doc: dict[str, list[IndexedChunk]] = {}
        for cid, doc_id, body, vector in chunks:
            by_doc.setdefault(doc_id, []).append(IndexedChunk(cid, body, vector))
        by_user: dict[int, list[TitledChunks]] = {}
        for doc_id, user_id, title in docs:
            by_user.setdefault(user_id, []).append((title, by_doc.get(doc_id, [])))
        for user_id, titled in by_user.items():
            await index.put_many(writing, user_id=user_id, docs=titled)
            done += sum(len(own) for _, own in titled)
        after = docs[-1].id


async def _reset_sequences(writing: AsyncSession, tables: list[Table]) -> None:
    """Ids were copied as they were: move each serial's next value past them."""
    for table in tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True or (
                column.autoincrement == "auto" and len(table.primary_key.columns) == 1
            ):
                sequence = (
                    await writing.execute(
                        text("SELECT pg_get_serial_sequence(:t, :c)"),
                        {"t": table.name, "c": column.name},
                    )
                ).scalar_one()
                if sequence is None:
                    continue
                await writing.execute(
                    text(
                        f"SELECT setval(:s, coalesce((SELECT max({column.name}) FROM"
                        f" {table.name}), 0) + 1, false)"
                    ),
                    {"s": sequence},
                )


async def _verify(source: Database, target: Database, report: Report) -> int:
    async with target.read() as session:
        for table in SQLModel.metadata.sorted_tables:
            got = (await session.execute(select(func.count()).select_from(table))).scalar_one()
            if got != report.rows[table.name]:
                raise TransferError(
                    f"{table.name}: copied {report.rows[table.name]} rows but the target "
                    f"holds {got}"
                )
    source_index, target_index = for_dialect(source.dialect), for_dialect(target.dialect)
    checked = 0
    async with source.read() as reading, target.read() as checking:
        users = (await reading.execute(select(col(User.id)).order_by(col(User.id)))).scalars()
        for user_id in [u for u in users if u is not None]:
            first = (
                await reading.execute(
                    select(col(Chunk.text), col(Chunk.embedding))
                    .where(col(Chunk.user_id) == user_id)
                    .order_by(col(Chunk.id))
                    .limit(1)
                )
            ).first()
            if first is None:
                continue
            words, vector = first
            before = await source_index.semantic(
                reading, user_id=user_id, vector=vector, depth=1, within=None
            )
            after = await target_index.semantic(
                checking, user_id=user_id, vector=vector, depth=1, within=None
            )
            if [r.doc_id for r in before] != [r.doc_id for r in after]:
                raise TransferError(
                    f"user {user_id}: a semantic search finds {after} in the target but "
                    f"{before} in the source"
                )
            found = await target_index.keyword(
                checking, user_id=user_id, query=words[:500], depth=10, within=None
            )
            if not found and await source_index.keyword(
                reading, user_id=user_id, query=words[:500], depth=10, within=None
            ):
                raise TransferError(f"user {user_id}: a keyword search finds nothing in the target")
            checked += 1
    return checked
