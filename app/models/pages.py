"""A page of a list."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import (
    BaseModel,
)

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list: `total` counts the whole list, not the page."""

    items: list[T]
    next_cursor: str | None
    total: int
