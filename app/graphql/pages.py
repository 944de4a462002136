"""Lists: the same page shape as REST (`items`, `nextCursor`, `total`) and the same caps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import strawberry
from strawberry.types.nodes import SelectedField, Selection

from app.graphql.errors import validated
from app.models.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageQuery

T = TypeVar("T")

FIRST_DESCRIPTION = f"Items per page, 1-{MAX_LIMIT}."
AFTER_DESCRIPTION = "The `nextCursor` of the previous page."


@strawberry.type(description="A page of a list: `total` counts the whole list, not the page.")
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page; null on the last page."
    )
    total: int


def page_query(first: int, after: str | None) -> PageQuery:
    """`first`/`after` validated as REST validates `limit`/`cursor` (same caps, same codes)."""
    return validated(
        PageQuery, {"limit": first, "cursor": after}, names={"limit": "first", "cursor": "after"}
    )


def selects(selections: Iterable[Selection], name: str) -> bool:
    """Whether a field called `name` is selected anywhere below, through fragments too."""
    for selection in selections:
        if isinstance(selection, SelectedField) and selection.name == name:
            return True
        if selects(selection.selections, name):
            return True
    return False


__all__ = ["DEFAULT_LIMIT", "Page", "page_query", "selects"]
