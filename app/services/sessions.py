"""Dashboard sessions: started at sign-in, looked up on every dashboard request, ended at sign-out.

The browser's signed cookie carries only a random token; the database keeps its SHA-256 (a copy
of the database hands out no live session) with the user and an expiry. Signing out deletes the
row, so a copied cookie stops working at once, in every server process and after a restart, and
deleting a user ends their sessions with it (the foreign key cascades).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import col, select

from app.errors import Unauthorized
from app.models import DashboardSession, User, utcnow
from app.services.runtime import Principal, Runtime

#: How long a session lasts from sign-in, however active (the cookie has the same max-age).
SESSION_TTL = timedelta(hours=8)
#: Tokens sent by browsers are never longer; anything longer is not one of ours.
_TOKEN_MAX = 128


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start(*, runtime: Runtime, email: str) -> str:
    """A new session for the user with `email`; returns the token to put in the cookie."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with runtime.db.write() as session:
        user_id = (
            await session.execute(select(User.id).where(User.email == email.strip().lower()))
        ).scalar_one_or_none()
        if user_id is None:  # deleted between the password check and now
            raise Unauthorized()
        # Expired rows are of no use to anyone; sign-ins are rare enough to sweep them here.
        await session.execute(
            delete(DashboardSession).where(col(DashboardSession.expires_at) <= now)
        )
        session.add(
            DashboardSession(
                token_hash=_digest(token),
                user_id=user_id,
                created_at=now,
                expires_at=now + SESSION_TTL,
            )
        )
    return token


async def signed_in_email(*, runtime: Runtime, token: object) -> str | None:
    """The email of the session's user, or None when `token` names no live session."""
    if not isinstance(token, str) or not token or len(token) > _TOKEN_MAX:
        return None
    async with runtime.db.read() as session:
        email: str | None = (
            await session.execute(
                select(User.email)
                .join(DashboardSession, col(DashboardSession.user_id) == User.id)
                .where(
                    DashboardSession.token_hash == _digest(token),
                    col(DashboardSession.expires_at) > utcnow(),
                )
            )
        ).scalar_one_or_none()
    return email


async def end(*, runtime: Runtime, token: object) -> None:
    """End the session named by `token` (nothing happens when there is none)."""
    if not isinstance(token, str) or not token or len(token) > _TOKEN_MAX:
        return
    async with runtime.db.write() as session:
        await session.execute(
            delete(DashboardSession).where(col(DashboardSession.token_hash) == _digest(token))
        )


async def signed_in_principal(*, runtime: Runtime, token: object) -> Principal | None:
    """The session's user as the services see a caller (their plan included), or None when
    `token` names no live session. The dashboard's pages read through the same service
    functions as the API, acting as this principal."""
    if not isinstance(token, str) or not token or len(token) > _TOKEN_MAX:
        return None
    async with runtime.db.read() as session:
        row = (
            await session.execute(
                select(User.id, User.email, User.plan_id)
                .join(DashboardSession, col(DashboardSession.user_id) == User.id)
                .where(
                    DashboardSession.token_hash == _digest(token),
                    col(DashboardSession.expires_at) > utcnow(),
                )
            )
        ).one_or_none()
    if row is None:
        return None
    user_id, email, plan_id = row
    return Principal(user_id=user_id, email=email, plan=await runtime.plan(plan_id))
