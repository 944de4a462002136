"""Personas: list, create, get, update, delete, and the attached knowledge set (API.md section 6).

A persona id is `per_` + a ULID, so ids sort by creation and the list needs no other key. Another
user's persona is answered exactly like a missing one (`PersonaNotFound`), as is an id that is
not of the right shape.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Subquery, case, delete, func, literal, union_all
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlmodel import col, select

from app.errors import FieldError, PersonaNotFound, PersonaQuotaExceeded, UnknownExternalIds
from app.models import (
    KnowledgeDoc,
    KnowledgeDocPublic,
    KnowledgeFilter,
    KnowledgeFilterPublic,
    Page,
    Persona,
    PersonaCreate,
    PersonaKnowledge,
    PersonaKnowledgeDoc,
    PersonaKnowledgeResult,
    PersonaListItem,
    PersonaPublic,
    PersonaUpdate,
    utcnow,
)
from app.models.json_equality import json_equal
from app.models.pagination import decode_cursor, encode_cursor
from app.services.runtime import Principal, Runtime
from app.storage.index.scope import (
    MetadataCondition,
    attached_to,
    filter_condition,
    filter_values,
    persona_knowledge,
)

PERSONA_PREFIX = "per_"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: 26 Crockford base32 characters; the first is at most 7 (130 bits carry 128).
PERSONA_ID_RE = re.compile(r"^per_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
#: Bound on SQL parameters per statement when resolving many external_ids.
_IN_CHUNK = 500
#: Personas per statement when their knowledge is read: each with a knowledge filter is one
#: branch of a UNION ALL, and SQLite allows 500 branches.
_PERSONA_CHUNK = 100


# --- ids -----------------------------------------------------------------------------------


class _UlidClock:
    """Monotonic ULIDs: 48-bit milliseconds + 80 random bits. Within one millisecond (or if the
    clock steps back) the previous value is incremented, so ids made by this process sort in
    the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
            if value <= self._last:
                value = self._last + 1
            self._last = value
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


_ulids = _UlidClock()


def new_persona_id() -> str:
    return PERSONA_PREFIX + _ulids.next()


# --- reading -------------------------------------------------------------------------------


async def _find(session: AsyncSession, principal: Principal, persona_id: str) -> Persona:
    persona = None
    if PERSONA_ID_RE.match(persona_id):
        persona = (
            await session.execute(
                select(Persona).where(
                    Persona.id == persona_id, Persona.user_id == principal.user_id
                )
            )
        ).scalar_one_or_none()
    if persona is None:
        raise PersonaNotFound(f"No persona {persona_id!r}.")
    return persona


async def _attached(session: AsyncSession, persona_id: str) -> dict[str, str]:
    """external_id -> document id of what is attached to the persona, sorted by external_id."""
    rows = await session.execute(
        select(KnowledgeDoc.external_id, KnowledgeDoc.id)
        .join(PersonaKnowledge, col(PersonaKnowledge.doc_id) == KnowledgeDoc.id)
        .where(PersonaKnowledge.persona_id == persona_id)
        .order_by(col(KnowledgeDoc.external_id))
    )
    return {external_id: doc_id for external_id, doc_id in rows.all()}


def _rule(persona: Persona) -> KnowledgeFilter | None:
    return KnowledgeFilter.from_stored(persona.knowledge_filter)


async def _knowledge_count(
    session: AsyncSession, runtime: Runtime, persona: Persona, attached: int
) -> int:
    """How many documents the persona's knowledge holds (attached or by filter)."""
    rule = _rule(persona)
    if rule is None:
        return attached
    matching = await runtime.index.metadata_sql(session, filter_values([rule]))
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(KnowledgeDoc)
                .where(
                    col(KnowledgeDoc.user_id) == persona.user_id,
                    persona_knowledge(persona.id, rule, matching, itertools.count()),
                )
            )
        ).scalar_one()
    )


async def _rules(
    session: AsyncSession, principal: Principal, persona_ids: Sequence[str]
) -> dict[str, KnowledgeFilter]:
    """The knowledge filters of those of the caller's personas that have one."""
    rows = await session.execute(
        select(Persona.id, Persona.knowledge_filter).where(
            col(Persona.id).in_(list(persona_ids)),
            col(Persona.user_id) == principal.user_id,
            col(Persona.knowledge_filter).is_not(None),
        )
    )
    out: dict[str, KnowledgeFilter] = {}
    for persona_id, stored in rows.all():
        rule = KnowledgeFilter.from_stored(stored)
        if rule is not None:
            out[persona_id] = rule
    return out


def _membership(
    persona_ids: Sequence[str],
    rules: dict[str, KnowledgeFilter],
    user_id: int,
    matching: MetadataCondition,
) -> Subquery:
    """(persona_id, doc_id, via) of every document in each persona's knowledge: the attached
    ones, then for each persona with a filter the matching ones not attached (so each
    document is there once per persona, and `attached` wins)."""
    positions = itertools.count()
    parts: list[Any] = [
        select(
            col(PersonaKnowledge.persona_id).label("persona_id"),
            col(PersonaKnowledge.doc_id).label("doc_id"),
            literal("attached").label("via"),
        ).where(col(PersonaKnowledge.persona_id).in_(list(persona_ids)))
    ]
    for persona_id, rule in rules.items():
        parts.append(
            select(
                literal(persona_id).label("persona_id"),
                col(KnowledgeDoc.id).label("doc_id"),
                literal("filter").label("via"),
            ).where(
                col(KnowledgeDoc.user_id) == user_id,
                filter_condition(rule, matching, positions),
                ~attached_to(persona_id),
            )
        )
    if len(parts) == 1:
        members: Subquery = parts[0].subquery()
        return members
    return union_all(*parts).subquery()


def _fields(persona: Persona) -> dict[str, Any]:
    rule = _rule(persona)
    return {
        "id": persona.id,
        "name": persona.name,
        "description": persona.description,
        "instructions": persona.instructions,
        "greeting": persona.greeting,
        "metadata": persona.metadata_,
        "knowledge_filter": None if rule is None else KnowledgeFilterPublic(**rule.stored()),
        "created_at": persona.created_at,
        "updated_at": persona.updated_at,
    }


def _public(persona: Persona, external_ids: Sequence[str], count: int) -> PersonaPublic:
    return PersonaPublic(
        **_fields(persona), knowledge_external_ids=sorted(external_ids), knowledge_count=count
    )


async def _load_public(session: AsyncSession, runtime: Runtime, persona: Persona) -> PersonaPublic:
    attached = list(await _attached(session, persona.id))
    count = await _knowledge_count(session, runtime, persona, len(attached))
    return _public(persona, attached, count)


# --- the use cases -------------------------------------------------------------------------


async def list_personas(
    *, runtime: Runtime, principal: Principal, limit: int, cursor: str | None = None
) -> Page[PersonaListItem]:
    """Ordered by creation (the ULID in the id)."""
    principal.require("personas:read")
    position = decode_cursor(cursor, keys=("after",))
    mine = col(Persona.user_id) == principal.user_id
    if principal.persona_ids is not None:  # a restricted key sees its personas only
        mine = mine & col(Persona.id).in_(sorted(principal.persona_ids))
    async with runtime.db.read() as session:
        total = (
            await session.execute(select(func.count()).select_from(Persona).where(mine))
        ).scalar_one()
        query = select(Persona).where(mine)
        if position is not None:
            query = query.where(col(Persona.id) > position["after"])
        personas = list(
            (await session.execute(query.order_by(col(Persona.id)).limit(limit + 1))).scalars()
        )
        more = len(personas) > limit
        personas = personas[:limit]
        counts: dict[str, int] = {}
        if personas:
            rules = {p.id: r for p in personas if (r := _rule(p)) is not None}
            matching = await runtime.index.metadata_sql(session, filter_values(rules.values()))
            members = _membership([p.id for p in personas], rules, principal.user_id, matching)
            rows = await session.execute(
                select(members.c.persona_id, func.count()).group_by(members.c.persona_id)
            )
            counts = {persona_id: n for persona_id, n in rows.all()}
    return Page[PersonaListItem](
        items=[
            PersonaListItem(**_fields(p), knowledge_count=counts.get(p.id, 0)) for p in personas
        ],
        next_cursor=encode_cursor({"after": personas[-1].id}) if more else None,
        total=total,
    )


async def attached_external_ids(
    *, runtime: Runtime, principal: Principal, persona_ids: Sequence[str]
) -> dict[str, list[str]]:
    """The sorted external_ids attached to each of many personas, in one statement per
    `_IN_CHUNK` personas however many there are. An id that is not one of the caller's personas
    maps to `[]`."""
    ids = list(dict.fromkeys(persona_ids))
    out: dict[str, list[str]] = {persona_id: [] for persona_id in ids}
    async with runtime.db.read() as session:
        for start in range(0, len(ids), _IN_CHUNK):
            rows = await session.execute(
                select(PersonaKnowledge.persona_id, KnowledgeDoc.external_id)
                .join(KnowledgeDoc, col(KnowledgeDoc.id) == PersonaKnowledge.doc_id)
                .where(
                    col(PersonaKnowledge.persona_id).in_(ids[start : start + _IN_CHUNK]),
                    col(KnowledgeDoc.user_id) == principal.user_id,
                )
                .order_by(col(KnowledgeDoc.external_id))
            )
            for persona_id, external_id in rows.all():
                out[persona_id].append(external_id)
    return out


async def knowledge_for_personas(
    *,
    runtime: Runtime,
    principal: Principal,
    persona_ids: Sequence[str],
    limit: int,
    cursor: str | None = None,
    include_content: bool = False,
) -> dict[str, Page[KnowledgeDocPublic]]:
    """One page of each of many personas' knowledge (attached, or by the persona's filter: each
    item says which in `via`, a `PersonaKnowledgeDoc`), ordered by external_id like the
    knowledge list (its cursors work the same way): two statements per `_PERSONA_CHUNK`
    personas, however many there are. `total` counts each persona's whole knowledge. An id
    that is not one of the caller's personas gets an empty page."""
    position = decode_cursor(cursor, keys=("after",))
    ids = list(dict.fromkeys(persona_ids))
    totals: dict[str, int] = {}
    docs: dict[str, list[tuple[KnowledgeDoc, str]]] = {persona_id: [] for persona_id in ids}
    async with runtime.db.read() as session:
        for start in range(0, len(ids), _PERSONA_CHUNK):
            chunk = ids[start : start + _PERSONA_CHUNK]
            rules = await _rules(session, principal, chunk)
            matching = await runtime.index.metadata_sql(session, filter_values(rules.values()))
            members = _membership(chunk, rules, principal.user_id, matching)
            joined = col(KnowledgeDoc.id) == members.c.doc_id
            external_id = col(KnowledgeDoc.external_id)
            persona = members.c.persona_id
            # Each persona's documents ranked by external_id, with the persona's total and how
            # many of them the cursor has passed; the page is then the next `limit + 1` (one
            # more tells whether a next page exists), so the statement count does not grow
            # with the number of personas, and the totals need no statement of their own.
            passed = (
                func.sum(case((external_id <= position["after"], 1), else_=0)).over(
                    partition_by=persona
                )
                if position is not None
                else literal(0)
            )
            ranked = (
                sa_select(
                    members.c.persona_id,
                    members.c.doc_id,
                    members.c.via,
                    external_id.label("external_id"),
                    func.row_number()
                    .over(partition_by=persona, order_by=external_id)
                    .label("rank"),
                    func.count().over(partition_by=persona).label("total"),
                    passed.label("passed"),
                )
                .join(KnowledgeDoc, joined)
                .where(col(KnowledgeDoc.user_id) == principal.user_id)
                .subquery()
            )
            on_page = ranked.c.rank <= ranked.c.passed + limit + 1
            if position is not None:
                on_page = on_page & (ranked.c.external_id > position["after"])
            query = (
                select(ranked.c.persona_id, ranked.c.via, ranked.c.total, KnowledgeDoc)
                .join(ranked, ranked.c.doc_id == col(KnowledgeDoc.id))
                # The last document too, whatever the page, so that every persona's total is
                # read, also when the cursor is past its end (it is left out of the page below).
                .where(on_page | (ranked.c.rank == ranked.c.total))
                .order_by(ranked.c.persona_id, ranked.c.rank)
            )
            if not include_content:
                query = query.options(defer(KnowledgeDoc.content))  # type: ignore[arg-type]
            for persona_id, via, total, doc in (await session.execute(query)).all():
                totals[persona_id] = total
                if position is None or doc.external_id > position["after"]:
                    docs[persona_id].append((doc, via))
    pages: dict[str, Page[KnowledgeDocPublic]] = {}
    for persona_id, found in docs.items():
        more = len(found) > limit
        found = found[:limit]
        pages[persona_id] = Page[KnowledgeDocPublic](
            items=[
                PersonaKnowledgeDoc.of(d, include_content=include_content).model_copy(
                    update={"via": via}
                )
                for d, via in found
            ],
            next_cursor=encode_cursor({"after": found[-1][0].external_id}) if more else None,
            total=totals.get(persona_id, 0),
        )
    return pages


async def create_persona(
    *, runtime: Runtime, principal: Principal, body: PersonaCreate
) -> PersonaPublic:
    async with runtime.db.write(user_id=principal.user_id) as session:
        # Counted inside the write transaction: concurrent creations cannot pass the limit.
        count = (
            await session.execute(
                select(func.count())
                .select_from(Persona)
                .where(col(Persona.user_id) == principal.user_id)
            )
        ).scalar_one()
        limit = principal.plan.limits.personas
        if count + 1 > limit:
            raise PersonaQuotaExceeded(
                f"The {principal.plan.id} plan allows {limit} personas; there are {count}.",
                extra={"limit": "personas", "used": count, "allowed": limit},
            )
        now = utcnow()
        persona = Persona(
            id=new_persona_id(),
            user_id=principal.user_id,
            name=body.name,
            description=body.description,
            instructions=body.instructions,
            greeting=body.greeting,
            metadata_=body.metadata,
            knowledge_filter=None
            if body.knowledge_filter is None
            else body.knowledge_filter.stored(),
            created_at=now,
            updated_at=now,
        )
        session.add(persona)
        count = await _knowledge_count(session, runtime, persona, 0)
    return _public(persona, [], count)


async def get_persona(*, runtime: Runtime, principal: Principal, persona_id: str) -> PersonaPublic:
    principal.require_persona(persona_id)
    async with runtime.db.read() as session:
        persona = await _find(session, principal, persona_id)
        return await _load_public(session, runtime, persona)


async def list_knowledge(
    *,
    runtime: Runtime,
    principal: Principal,
    persona_id: str,
    limit: int,
    cursor: str | None = None,
) -> Page[PersonaKnowledgeDoc]:
    """One page of a persona's knowledge (attached, or matching its filter, as each item's
    `via` says), ordered by external_id, without content. An unknown persona, or one outside a
    restricted key's personas, is `persona.not_found` / `auth.insufficient_scope` as for
    `get_persona`, not an empty page."""
    principal.require_persona(persona_id)
    async with runtime.db.read() as session:
        await _find(session, principal, persona_id)
    page = (
        await knowledge_for_personas(
            runtime=runtime,
            principal=principal,
            persona_ids=[persona_id],
            limit=limit,
            cursor=cursor,
        )
    )[persona_id]
    items = [d for d in page.items if isinstance(d, PersonaKnowledgeDoc)]
    return Page[PersonaKnowledgeDoc](items=items, next_cursor=page.next_cursor, total=page.total)


async def update_persona(
    *, runtime: Runtime, principal: Principal, persona_id: str, body: PersonaUpdate
) -> PersonaPublic:
    """Change only the fields sent; `updated_at` moves only when a value actually changes."""
    principal.require_persona(persona_id)
    async with runtime.db.write(user_id=principal.user_id) as session:
        persona = await _find(session, principal, persona_id)
        changed = False
        for name in body.model_fields_set:
            attribute = "metadata_" if name == "metadata" else name
            value = getattr(body, name)
            if name == "knowledge_filter":
                value = None if value is None else value.stored()
            # One equality for every JSON value (app/models/json_equality.py): Python's `!=`
            # calls {"flag": 1} and {"flag": true} equal, and the change would be dropped.
            same = (
                json_equal(getattr(persona, attribute), value)
                if name in ("metadata", "knowledge_filter")
                else getattr(persona, attribute) == value
            )
            if not same:
                setattr(persona, attribute, value)
                changed = True
        if changed:
            persona.updated_at = utcnow()
            session.add(persona)
        return await _load_public(session, runtime, persona)


async def delete_persona(*, runtime: Runtime, principal: Principal, persona_id: str) -> bool:
    """Idempotent: returns whether there was something to delete. Attached documents stay;
    only the attachments go (ON DELETE CASCADE)."""
    principal.require_persona(persona_id)
    if not PERSONA_ID_RE.match(persona_id):
        return False
    async with runtime.db.write(user_id=principal.user_id) as session:
        result = await session.execute(
            delete(Persona).where(
                col(Persona.id) == persona_id, col(Persona.user_id) == principal.user_id
            )
        )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_knowledge(
    *, runtime: Runtime, principal: Principal, persona_id: str, external_ids: Sequence[str]
) -> PersonaKnowledgeResult:
    """Replace the persona's attached documents with `external_ids` (a set). Unknown ones are
    refused all together, listed in `missing`, and nothing changes."""
    principal.require_persona(persona_id)
    wanted = sorted(set(external_ids))
    async with runtime.db.write(user_id=principal.user_id) as session:
        persona = await _find(session, principal, persona_id)
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            rows = await session.execute(
                select(KnowledgeDoc.external_id, KnowledgeDoc.id).where(
                    KnowledgeDoc.user_id == principal.user_id,
                    col(KnowledgeDoc.external_id).in_(wanted[start : start + _IN_CHUNK]),
                )
            )
            found.update({e: i for e, i in rows.all()})
        missing = [e for e in wanted if e not in found]
        if missing:
            raise _unknown(external_ids, missing)
        current = await _attached(session, persona.id)
        added = [e for e in wanted if e not in current]
        removed = [e for e in current if e not in found]
        if removed:
            gone = [current[e] for e in removed]
            for start in range(0, len(gone), _IN_CHUNK):
                await session.execute(
                    delete(PersonaKnowledge).where(
                        col(PersonaKnowledge.persona_id) == persona.id,
                        col(PersonaKnowledge.doc_id).in_(gone[start : start + _IN_CHUNK]),
                    )
                )
        session.add_all(PersonaKnowledge(persona_id=persona.id, doc_id=found[e]) for e in added)
        if added or removed:
            persona.updated_at = utcnow()
            session.add(persona)
    return PersonaKnowledgeResult(
        persona_id=persona.id, external_ids=wanted, added=len(added), removed=len(removed)
    )


def _unknown(external_ids: Sequence[str], missing: list[str]) -> UnknownExternalIds:
    unknown = set(missing)
    shown = ", ".join(repr(e) for e in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return UnknownExternalIds(
        f"{len(missing)} external_id(s) name no document: {shown}.",
        errors=[
            FieldError(f"/external_ids/{i}", UnknownExternalIds.code, f"no document {e!r}")
            for i, e in enumerate(external_ids)
            if e in unknown
        ],
        extra={"missing": missing},
    )
