"""Users and API keys: the operator's use cases (CLI, dashboard) and request authentication."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Integer, String, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, func, select

from app.errors import (
    FieldError,
    KeyNotFound,
    Unauthorized,
    UnknownPlan,
    UserExists,
    UserNotFound,
    ValidationFailed,
)
from app.models import (
    SCOPES,
    ApiKey,
    ApiKeyCreated,
    ApiKeyPublic,
    Chunk,
    KnowledgeDoc,
    Persona,
    Scope,
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
        scopes=list(key_scopes(key.scopes)),
        persona_ids=_words(key.persona_ids),
        allowed_origins=_words(key.allowed_origins),
        expires_at=key.expires_at,
        rate_limit=key.rate_limit,
    )


def _words(stored: str | None) -> list[str] | None:
    """A stored space-separated list; NULL (no restriction) stays None."""
    return None if stored is None else stored.split()


def key_scopes(stored: str | None) -> tuple[Scope, ...]:
    """A key's scopes from its column: NULL (a key from before scopes) is all of them."""
    if stored is None:
        return SCOPES
    have = set(stored.split())
    return tuple(s for s in SCOPES if s in have)


PERSONA_ID_RE = re.compile(r"^per_[0-9A-Za-z]{1,64}$")
MAX_RESTRICTION_ITEMS = 100


def _refuse(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        message, errors=[FieldError(f"/{field}", "request.validation_failed", message)]
    )


def check_scopes(scopes: Sequence[str]) -> tuple[Scope, ...]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise _refuse("scopes", f"Unknown scopes {unknown}; known: {', '.join(SCOPES)}.")
    if not scopes:
        raise _refuse("scopes", "A key needs at least one scope.")
    return tuple(s for s in SCOPES if s in scopes)


def check_origin(origin: str) -> str:
    """A browser origin as browsers send it: scheme://host[:port], nothing else."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise _refuse("allowed_origins", f"{origin!r} is not an origin like https://a.example.")
    return f"{parts.scheme}://{parts.netloc.lower()}"


async def _max_key_rate(runtime: Runtime, plan_id: str) -> int:
    limits = (await runtime.plan(plan_id)).limits
    return max(limits.reads_per_minute, limits.writes_per_minute, limits.searches_per_minute)


async def _check_plan(runtime: Runtime, plan_id: str) -> None:
    """Refuse, where it is set, a plan the `plans` table lacks (never a silent default)."""
    # Read afresh: the operator may have just added the plan from another process.
    runtime.forget_plans()
    plans = await runtime.plans()
    if plan_id not in plans:
        raise UnknownPlan(f"No plan {plan_id!r}; the plans are: {', '.join(sorted(plans))}.")


async def create_user(
    *, runtime: Runtime, email: str, plan_id: str | None = None, password: str | None = None
) -> UserPublic:
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise UserNotFound(f"{email!r} is not an email address.")
    plan_id = plan_id or runtime.settings.default_plan
    await _check_plan(runtime, plan_id)
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
    await _check_plan(runtime, plan_id)
    user = await _get_user(runtime, email)
    async with runtime.db.write() as session:
        db_user = await session.get(User, user.id)
        if db_user is None:
            raise UserNotFound(f"No user {email}.")
        db_user.plan_id = plan_id
        session.add(db_user)
    return _user_public(db_user)


async def create_key(
    *,
    runtime: Runtime,
    email: str,
    name: str = "default",
    scopes: Sequence[str] | None = None,
    persona_ids: Sequence[str] | None = None,
    allowed_origins: Sequence[str] | None = None,
    expires_at: datetime | None = None,
    rate_limit: int | None = None,
) -> ApiKeyCreated:
    """A new key, with restrictions when given (API.md section 12). Without `scopes` it has all
    of them. A key with the `search` scope also gets a signing secret for tenant tokens; both
    are shown only in this answer."""
    if "\x00" in name:  # PostgreSQL's text cannot hold it; refused on both engines
        raise _refuse("name", "A key name must not contain U+0000 (NUL).")
    user = await _get_user(runtime, email)
    assert user.id is not None
    chosen = check_scopes(scopes) if scopes is not None else SCOPES
    personas = list(dict.fromkeys(p.strip() for p in persona_ids)) if persona_ids else None
    if persona_ids is not None and not personas:
        raise _refuse("persona_ids", "Name at least one persona, or none to allow all.")
    if personas is not None:
        if len(personas) > MAX_RESTRICTION_ITEMS:
            raise _refuse("persona_ids", f"At most {MAX_RESTRICTION_ITEMS} personas.")
        bad = [p for p in personas if not PERSONA_ID_RE.match(p)]
        if bad:
            raise _refuse("persona_ids", f"Not persona ids: {bad}.")
    origins = (
        list(dict.fromkeys(check_origin(o) for o in allowed_origins)) if allowed_origins else None
    )
    if origins is not None and len(origins) > MAX_RESTRICTION_ITEMS:
        raise _refuse("allowed_origins", f"At most {MAX_RESTRICTION_ITEMS} origins.")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= utcnow():
            raise _refuse("expires_at", "expires_at must be in the future.")
    if rate_limit is not None:
        most = await _max_key_rate(runtime, user.plan_id)
        if not 1 <= rate_limit <= most:
            raise _refuse(
                "rate_limit",
                f"rate_limit must be 1..{most} requests per minute (the {user.plan_id} plan's).",
            )
    key = hashing.new_api_key()
    row = ApiKey(
        user_id=user.id,
        name=name,
        prefix=hashing.visible_prefix(key),
        key_hash=hashing.hash_api_key(key),
        status="active",
        created_at=utcnow(),
        scopes=None if scopes is None else " ".join(chosen),
        persona_ids=None if personas is None else " ".join(personas),
        allowed_origins=None if origins is None else " ".join(origins),
        expires_at=expires_at,
        rate_limit=rate_limit,
        signing_secret=secrets.token_urlsafe(32) if "search" in chosen else None,
    )
    if personas is not None:
        async with runtime.db.read() as session:
            found = set(
                (
                    await session.execute(
                        select(Persona.id).where(
                            col(Persona.user_id) == user.id, col(Persona.id).in_(personas)
                        )
                    )
                ).scalars()
            )
        missing = [p for p in personas if p not in found]
        if missing:
            raise _refuse("persona_ids", f"No such personas for {user.email}: {missing}.")
    async with runtime.db.write() as session:
        session.add(row)
    return ApiKeyCreated(
        key=key, signing_secret=row.signing_secret, **_key_public(row).model_dump()
    )


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
    """The caller behind an `X-Api-Key` (a key or a tenant token), or `Unauthorized`: one
    answer for every failure."""
    if not api_key:
        raise Unauthorized()
    if not hashing.looks_like_api_key(api_key):
        from app.services import tokens  # tokens builds on this module

        return await tokens.authenticate(runtime=runtime, token=api_key)
    digest = hashing.hash_api_key(api_key)
    row = await runtime.db.read_row(_KEY_LOOKUP, {"digest": digest})
    if row is None:
        raise Unauthorized()
    if row["status"] != "active" or not hashing.constant_time_equals(row["key_hash"], digest):
        raise Unauthorized()
    now = utcnow()
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise Unauthorized()
    last_used = row["last_used_at"]
    if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
        async with runtime.db.write() as session:
            db_key = await session.get(ApiKey, row["key_id"])
            if db_key is not None:
                db_key.last_used_at = now
                session.add(db_key)
    return await principal_of(runtime, row)


async def principal_of(runtime: Runtime, row: Any) -> Principal:
    """The caller a key's row (`_KEY_LOOKUP`'s columns) stands for, restrictions included."""
    personas = _words(row["persona_ids"])
    origins = _words(row["allowed_origins"])
    return Principal(
        user_id=row["user_id"],
        email=row["email"],
        plan=await runtime.plan(row["plan_id"]),
        key_id=row["key_id"],
        scopes=frozenset(key_scopes(row["scopes"])),
        persona_ids=None if personas is None else frozenset(personas),
        allowed_origins=None if origins is None else tuple(origins),
        rate_limit=row["rate_limit"],
    )


#: What both key lookups read of a key and its user to make a Principal (`principal_of`): one
#: list, so the two cannot drift apart.
_PRINCIPAL_SQL = (
    "k.id AS key_id, k.status AS status, u.id AS user_id, u.email AS email,"
    " u.plan_id AS plan_id, k.scopes AS scopes, k.persona_ids AS persona_ids,"
    " k.allowed_origins AS allowed_origins, k.expires_at AS expires_at,"
    " k.rate_limit AS rate_limit"
)
_PRINCIPAL_TYPES: dict[str, Any] = {
    "key_id": Integer(),
    "status": String(),
    "user_id": Integer(),
    "email": String(),
    "plan_id": String(),
    "scopes": String(),
    "persona_ids": String(),
    "allowed_origins": String(),
    "expires_at": ApiKey.__table__.c.expires_at.type,  # type: ignore[attr-defined]
    "rate_limit": Integer(),
}

#: Every request's key lookup: the columns it needs, as a text statement (typed, so the time
#: reads back as the ORM's would). Loading the two ORM objects cost ~0.5 ms a request more.
_KEY_LOOKUP = text(
    f"SELECT {_PRINCIPAL_SQL}, k.key_hash AS key_hash, k.last_used_at AS last_used_at"
    " FROM api_keys AS k JOIN users AS u ON u.id = k.user_id WHERE k.key_hash = :digest"
).columns(
    **_PRINCIPAL_TYPES,
    key_hash=String(),
    last_used_at=ApiKey.__table__.c.last_used_at.type,  # type: ignore[attr-defined]
)


async def signing_secrets(*, runtime: Runtime, prefix: str) -> list[tuple[int, str]]:
    """The ids and signing secrets of the keys (usually one, or none) with this visible prefix:
    what checking a tenant token's signature needs. A key's secret never changes, so a caller
    may keep the answer; whether the key may still be used is `token_key`'s to say."""
    async with runtime.db.read() as session:
        rows = (
            await session.execute(
                select(ApiKey.id, ApiKey.signing_secret).where(
                    ApiKey.prefix == prefix, col(ApiKey.signing_secret).is_not(None)
                )
            )
        ).all()
    return [(key_id, secret) for key_id, secret in rows if key_id is not None and secret]


async def token_key(*, runtime: Runtime, key_id: int) -> dict[str, Any] | None:
    """A tenant token's key as it is now (`_PRINCIPAL_SQL`'s columns and its signing secret),
    or None once deleted: read for every request, in the plain key's one hop, so disabling or
    deleting a key voids its tokens at once on every process."""
    return await runtime.db.read_row(_TOKEN_KEY_LOOKUP, {"key_id": key_id})


_TOKEN_KEY_LOOKUP = text(
    f"SELECT {_PRINCIPAL_SQL}, k.signing_secret AS signing_secret"
    " FROM api_keys AS k JOIN users AS u ON u.id = k.user_id WHERE k.id = :key_id"
).columns(**_PRINCIPAL_TYPES, signing_secret=String())


async def allowed_origins_of_all_keys(*, runtime: Runtime) -> set[str]:
    """Every origin some active key allows: the origins a CORS preflight may be answered for
    (a preflight carries no key, so it cannot be told which)."""
    async with runtime.db.read() as session:
        stored = (
            await session.execute(
                select(ApiKey.allowed_origins).where(
                    col(ApiKey.allowed_origins).is_not(None), ApiKey.status == "active"
                )
            )
        ).scalars()
        return {o for value in stored if value for o in value.split()}


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
        assert user.id is not None
        # After the user's writes in flight, so that the keyword triggers of both never wait
        # on each other's rows crosswise (and what they wrote is counted and deleted).
        await runtime.db.serialize_with_user(session, user.id)
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
