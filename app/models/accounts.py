"""Users and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import Column, String, Text
from sqlmodel import Field, SQLModel

from app.models.base import PublicModel, Timestamp, time_field


class PlanRow(SQLModel, table=True):
    """A plan as every server reads it (revision 0009): the table, not the configuration, is
    the truth once it holds a row (docs/scaling.md, "Plans")."""

    __tablename__ = "plans"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    name: str = Field(sa_column=Column(Text, nullable=False))
    #: The limits as a JSON object whose keys are `PlanLimits`' fields.
    limits: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: datetime = time_field()


class User(SQLModel, table=True):
    __tablename__ = "users"
    #: SQLite: ids are never reused (revision 0005): an id keys data, usage and rate windows,
    #: and a deleted user's id must never name another account.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=Column(String(320), unique=True, nullable=False))
    password_hash: str | None = None
    plan_id: str
    created_at: datetime = time_field()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    #: SQLite: ids are never reused (revision 0005).
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    name: str
    prefix: str = Field(index=True)
    key_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    status: str = "active"
    created_at: datetime = time_field()
    last_used_at: datetime | None = time_field(nullable=True)
    # Restrictions (revision 0007). NULL means "none": a key made before them keeps full access.
    #: Space-separated scopes (`SCOPES`); NULL: all of them.
    scopes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: Space-separated persona ids the key may search and read; NULL: every persona.
    persona_ids: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: Space-separated browser origins (`https://a.example`); NULL: no per-key CORS rule.
    allowed_origins: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    expires_at: datetime | None = time_field(nullable=True)
    #: Requests per minute and policy for this key alone, within the plan's; NULL: the plan's.
    rate_limit: int | None = None
    #: The HS256 secret of its tenant tokens (keys with the `search` scope), kept as-is: the
    #: server must compute HMACs with it. Why that is acceptable: docs/security.md.
    signing_secret: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


Scope = Literal[
    "docs:read", "docs:write", "personas:read", "personas:write", "search", "usage:read"
]
#: Every scope, in the order they are shown; a key made without `scopes` has all of them.
SCOPES: tuple[Scope, ...] = (
    "docs:read",
    "docs:write",
    "personas:read",
    "personas:write",
    "search",
    "usage:read",
)
#: What a tenant token may ever do, whatever its key may: search, and read personas.
TOKEN_SCOPES: frozenset[Scope] = frozenset({"search", "personas:read"})


KeyStatus = Literal["active", "disabled"]


class UserPublic(PublicModel):
    email: str
    plan: str
    created_at: Timestamp


class ApiKeyPublic(PublicModel):
    name: str
    prefix: str
    status: KeyStatus
    created_at: Timestamp
    last_used_at: Timestamp | None
    scopes: list[Scope]
    #: null: every persona.
    persona_ids: list[str] | None
    #: null: no per-key origin rule (the server's PERSONAIZER_CORS_ORIGINS apply).
    allowed_origins: list[str] | None
    expires_at: Timestamp | None
    #: Requests per minute and policy for this key, within the plan's; null: the plan's.
    rate_limit: int | None


class ApiKeyCreated(ApiKeyPublic):
    """The only model that ever carries a full key (and its signing secret): the answer to its
    creation."""

    key: str
    #: For minting tenant tokens; only keys with the `search` scope have one.
    signing_secret: str | None
