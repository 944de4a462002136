"""Users and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel

from app.models.base import PublicModel, Timestamp, time_field


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


class ApiKeyCreated(ApiKeyPublic):
    """The only model that ever carries a full key: the answer to its creation."""

    key: str
