"""Pydantic validation errors as the contract's `ValidationFailed`, for every door.

REST locates a field by a JSON Pointer into its body (or a query parameter's name); GraphQL by a
pointer into the operation's arguments, camelCased. Both come from here, so the same bad value
gets the same code whichever door it came through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.errors import ERRORS_BY_CODE, FieldError, ValidationFailed

if TYPE_CHECKING:
    from app.settings import PlanLimits

Location = tuple[int | str, ...]

#: The codes a model validator may raise as its error type (`PydanticCustomError(code, ...)`),
#: each answered as its own AppError: `knowledge.invalid_external_id`, `knowledge.batch_too_large`.
_SPECIFIC: dict[str, type[ValidationFailed]] = {
    code: cls
    for code, cls in ERRORS_BY_CODE.items()
    if issubclass(cls, ValidationFailed) and cls is not ValidationFailed
}


def validation_context(limits: PlanLimits) -> dict[str, Any]:
    """What request models read from pydantic's validation context: the caller's plan limits
    that bound a request's shape (`batch_items`), so a list is refused from its length before
    any of its items is validated. Without it those bounds are left to the services."""
    return {"batch_items": limits.batch_items}


def pointer(loc: Location) -> str:
    """A JSON Pointer (RFC 6901) to `loc`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def from_validation_error(
    exc: ValidationError,
    *,
    prefix: Location = (),
    parameter: bool = False,
    where: str | None = None,
    rename: Callable[[str], str] | None = None,
) -> ValidationFailed:
    """A pydantic error as the contract's 422: one FieldError per field, JSON Pointers.

    The error's own `code` is the specific one (`knowledge.invalid_external_id`) when every
    field error has it, else `request.validation_failed`. `rename` maps each name in a location
    (the model's field names) to the name the caller used, for a door whose names differ.
    """
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if rename is not None:
            loc = tuple(rename(p) if isinstance(p, str) else p for p in loc)
        code = err["type"] if err["type"] in _SPECIFIC else ValidationFailed.code
        name = str(loc[0]) if parameter and loc else None
        errors.append(
            FieldError(pointer=pointer(prefix + loc), code=code, message=err["msg"], parameter=name)
        )
    codes = {e.code for e in errors}
    cls = _SPECIFIC.get(codes.pop(), ValidationFailed) if len(codes) == 1 else ValidationFailed
    where = where or ("query parameters" if parameter else "request body")
    detail = f"{len(errors)} field(s) of the {where} failed validation: " + "; ".join(
        f"{e.parameter or e.pointer or '/'}: {e.message}" for e in errors[:5]
    )
    return cls(detail, errors=errors)
