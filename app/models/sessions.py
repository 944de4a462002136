"""Dashboard sessions, kept server-side so that signing out ends them (app/services/sessions.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel

from app.models.base import time_field


class DashboardSession(SQLModel, table=True):
    __tablename__ = "dashboard_sessions"

    id: int | None = Field(default=None, primary_key=True)
    #: SHA-256 of the random token in the browser's cookie; the token itself is never stored.
    token_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    created_at: datetime = time_field()
    expires_at: datetime = time_field()
