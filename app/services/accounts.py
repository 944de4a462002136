"""Users and API keys: the operator's use cases (CLI, dashboard) and request authentication."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Integer, String, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, func, select

from app.errors import KeyNotFound, Unauthorized, UnknownPlan, UserExists, UserNotFound
from app.models import (
    ApiKey,
    ApiKeyCreated,
    ApiKeyPublic,
    Chunk,
    KnowledgeDoc,
    Persona,
    User,
    UserPublic,
    utcnow,
)
from app.services import hashing
from app.services.runtime import Principal, Runtime

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: `last_used_at` is written at most this often per key, so reads do not all become writes.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _user_public(user: User) -> UserPublic:
    return UserPublic(email=user.email, plan=user.plan_id, created_at=user.created_at)


def _key_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(
        name=key.name,
        prefix=key.prefix,
        status="active" if key.status == "active" else "disabled",
        created_at=key.created_at,
        last_used_at=key.last_used_at,
    )


def _check_plan(runtime: Runtime, plan_id: str) -> None:
    if plan_id not in runtime.settings.all_plans:
        raise UnknownPlan(
            f"No plan {plan_id!r}; configured: {', '.join(sorted(runtime.settings.all_plans))}."
        )


async def create_user(
    *, runtime: Runtime, email: str, plan_id: str | None = None, password: str | None = None
) -> UserPublic:
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise UserNotFound(f"{email!r} is not an email address.")
    plan_id = plan_id or runtime.settings.default_plan
    _check_plan(runtime, plan_id)
    user = User(
        email=email,
        plan_id=plan_id,
        password_hash=await _hash_password(password) if password else None,
        created_at=utcnow(),
    )
    try:
        async with runtime.db.write() as session:
            session.add(user)
    except IntegrityError as exc:
        raise UserExists(f"A user {email} exists already.") from exc
    return _user_public(user)


async def _get_user(runtime: Runtime, email: str) -> User:
    async with runtime.db.read() as session:
        user = (
            await session.execute(select(User).where(User.email == email.strip().lower()))
        ).scalar_one_or_none()
    if user is None:
        raise UserNotFound(f"No user {email}.")
    return user


async def list_users(*, runtime: Runtime) -> list[UserPublic]:
    async with runtime.db.read() as session:
        users = (await session.execute(select(User).order_by(col(User.id)))).scalars().all()
    return [_user_public(u) for u in users]


async def set_plan(*, runtime: Runtime, email: str, plan_id: str) -> UserPublic:
    _check_plan(runtime, plan_id)
    user = await _get_user(runtime, email)
    async with runtime.db.write() as session:
        db_user = await session.get(User, user.id)
        if db_user is None:
            raise UserNotFound(f"No user {email}.")
        db_user.plan_id = plan_id
        session.add(db_user)
    return _user_public(db_user)


async def create_key(*, runtime: Runtime, email: str, name: str = "default") -> ApiKeyCreated:
    user = await _get_user(runtime, email)
    assert user.id is not None
    key = hashing.new_api_key()
    row = ApiKey(
        user_id=user.id,
        name=name,
        prefix=hashing.visible_prefix(key),
        key_hash=hashing.hash_api_key(key),
        status="active",
        created_at=utcnow(),
    )
    async with runtime.db.write() as session:
        session.add(row)
    return ApiKeyCreated(key=key, **_key_public(row).model_dump())


async def list_keys(*, runtime: Runtime, email: str) -> list[ApiKeyPublic]:
    user = await _get_user(runtime, email)
    async with runtime.db.read() as session:
        keys = (
            await session.execute(
                select(ApiKey).where(ApiKey.user_id == user.id).order_by(col(ApiKey.id))
            )
        ).scalars()
        return [_key_public(k) for k in keys]


async def _one_key(session: AsyncSession, prefix: str, email: str | None) -> ApiKey:
    query = select(ApiKey).where(ApiKey.prefix == prefix)
    if email is not None:  # a user acting on their own keys (dashboard), not the operator
        query = query.join(User, col(User.id) == ApiKey.user_id).where(
            User.email == email.strip().lower()
        )
    found = list((await session.execute(query)).scalars())
    if len(found) != 1:
        raise KeyNotFound(
            f"No API key starts with {prefix!r}."
            if not found
            else f"{len(found)} keys start with {prefix!r}; act on them from the dashboard."
        )
    return found[0]


async def disable_key(*, runtime: Runtime, prefix: str, email: str | None = None) -> ApiKeyPublic:
    """Disable a key by its visible prefix; with `email`, only among that user's keys."""
    async with runtime.db.write() as session:
        key = await _one_key(session, prefix, email)
        key.status = "disabled"
        session.add(key)
    return _key_public(key)


async def delete_key(*, runtime: Runtime, prefix: str, email: str) -> None:
    """Delete one of the user's keys for good (the last step of a rotation)."""
    async with runtime.db.write() as session:
        await session.delete(await _one_key(session, prefix, email))


async def login(*, runtime: Runtime, email: str, password: str) -> UserPublic:
    """A dashboard sign-in: the user, or `Unauthorized` (the same for every failure)."""
    async with runtime.db.read() as session:
        user = (
            await session.execute(select(User).where(User.email == email.strip().lower()))
        ).scalar_one_or_none()
    # verify_password spends the same time when there is no user or no password.
    if not await _verify_password(password, user.password_hash if user else None) or user is None:
        raise Unauthorized()
    return _user_public(user)


# argon2 is built to be slow (tens of milliseconds of CPU, 64 MiB): on the event loop a few
# sign-ins at once would stall every other request. It releases the GIL, so a thread suffices.


async def _hash_password(password: str) -> str:
    return await asyncio.to_thread(hashing.hash_password, password)


async def _verify_password(password: str, password_hash: str | None) -> bool:
    return await asyncio.to_thread(hashing.verify_password, password, password_hash)


async def authenticate(*, runtime: Runtime, api_key: str | None) -> Principal:
    """The caller behind an `X-Api-Key`, or `Unauthorized`: one answer for every failure."""
    if not api_key or not hashing.looks_like_api_key(api_key):
        raise Unauthorized()
    digest = hashing.hash_api_key(api_key)
    row = await runtime.db.read_row(_KEY_LOOKUP, {"digest": digest})
    if row is None:
        raise Unauthorized()
    if row["status"] != "active" or not hashing.constant_time_equals(row["key_hash"], digest):
        raise Unauthorized()
    now = utcnow()
    last_used = row["last_used_at"]
    if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
        async with runtime.db.write() as session:
            db_key = await session.get(ApiKey, row["key_id"])
            if db_key is not None:
                db_key.last_used_at = now
                session.add(db_key)
    return Principal(user_id=row["user_id"], email=row["email"], plan=runtime.plan(row["plan_id"]))


#: Every request's key lookup: the columns it needs, as a text statement (typed, so the time
#: reads back as the ORM's would). Loading the two ORM objects cost ~0.5 ms a request more.
_KEY_LOOKUP = text(
    "SELECT k.id AS key_id, k.status AS status, k.key_hash AS key_hash,"
    " k.last_used_at AS last_used_at, u.id AS user_id, u.email AS email, u.plan_id AS plan_id"
    " FROM api_keys AS k JOIN users AS u ON u.id = k.user_id WHERE k.key_hash = :digest"
).columns(
    key_id=Integer(),
    status=String(),
    key_hash=String(),
    last_used_at=ApiKey.__table__.c.last_used_at.type,  # type: ignore[attr-defined]
    user_id=Integer(),
    email=String(),
    plan_id=String(),
)


async def set_password(*, runtime: Runtime, email: str, password: str) -> UserPublic:
    """Set (or replace) a user's dashboard password; a user made without one can then sign in."""
    async with runtime.db.write() as session:
        user = await _user_in(session, email)
        user.password_hash = hashing.hash_password(password)
        session.add(user)
    return _user_public(user)


@dataclass(frozen=True, slots=True)
class UserData:
    """What a user holds (or held, once deleted)."""

    email: str
    keys: int
    documents: int
    personas: int


async def _user_in(session: AsyncSession, email: str) -> User:
    user = (
        await session.execute(select(User).where(User.email == email.strip().lower()))
    ).scalar_one_or_none()
    if user is None:
        raise UserNotFound(f"No user {email}.")
    return user


async def _count(
    session: AsyncSession, model: type[ApiKey | KnowledgeDoc | Persona], user_id: int
) -> int:
    query = select(func.count()).select_from(model).where(model.user_id == user_id)
    return int((await session.execute(query)).scalar_one())


async def _held(session: AsyncSession, user: User) -> UserData:
    assert user.id is not None
    return UserData(
        email=user.email,
        keys=await _count(session, ApiKey, user.id),
        documents=await _count(session, KnowledgeDoc, user.id),
        personas=await _count(session, Persona, user.id),
    )


async def user_data(*, runtime: Runtime, email: str) -> UserData:
    async with runtime.db.read() as session:
        return await _held(session, await _user_in(session, email))


async def delete_user(*, runtime: Runtime, email: str) -> UserData:
    """Delete a user and everything they own, in one transaction: keys, documents and their
    chunks, vectors and keyword rows, personas, usage. Returns what was deleted."""
    async with runtime.db.write() as session:
        user = await _user_in(session, email)
        held = await _held(session, user)
        chunk_ids = [
            i
            for i in (
                await session.execute(select(Chunk.id).where(Chunk.user_id == user.id))
            ).scalars()
            if i is not None
        ]
        # SQLite's vector and keyword indexes are virtual tables: no foreign key cascades there.
        await runtime.index.delete(session, chunk_ids)
        # Keys, documents (with chunks and persona attachments), personas and usage counters
        # go by ON DELETE CASCADE.
        await session.delete(user)
    return held
