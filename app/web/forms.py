"""What the dashboard's writing forms share: who may write, the write charged like an API
write, form text turned into what the request models take, and a refusal turned back into
messages beside the fields that caused it.

A write is refused exactly as the API would refuse it, because it goes through the same request
model and the same service function; only the answer differs: the form again, with what was
typed kept, the status of the API's refusal (422 for a field, 403 for a quota with the plan's
limit in the message, 413 for a body over the server's limit, 429 for the rate limit) and each
message beside its field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.errors import (
    AppError,
    FieldError,
    InvalidExternalId,
    KnowledgeQuotaExceeded,
    MalformedJson,
    PersonaQuotaExceeded,
    RateLimited,
    TooLarge,
    ValidationFailed,
)
from app.http.guard import Guard
from app.models.strict_json import loads
from app.services.runtime import Principal
from app.web.common import csrf, no_api_keys, render, signed_in

#: What a writing form answers with the form again rather than with a problem page: the
#: caller can mend each of these by changing what they typed (or by waiting).
REFUSED: tuple[type[AppError], ...] = (
    ValidationFailed,
    KnowledgeQuotaExceeded,
    PersonaQuotaExceeded,
    RateLimited,
    TooLarge,
)


@dataclass
class Refusal:
    """Why a form was not saved: a status, one message for the top of the form, and a message
    per form field at fault."""

    status: int
    message: str
    fields: dict[str, str] = field(default_factory=dict)
    #: `Retry-After` for the rate limit, as the API sends it.
    headers: dict[str, str] = field(default_factory=dict)


def form_page(
    request: Request,
    name: str,
    *,
    principal: Principal,
    section: str,
    refused: Refusal | None,
    **context: Any,
) -> Response:
    """A form page: 200, or a refused form's status and headers, with the CSRF token."""
    return render(
        name,
        status=refused.status if refused else 200,
        headers=refused.headers if refused else None,
        principal=principal,
        section=section,
        csrf=csrf(request),
        refused=refused,
        **context,
    )


async def writer(request: Request) -> Principal | None:
    """The signed-in user who may write, or None (signed out: sent to sign in, nothing read).
    An API key is refused (403), as everywhere on the dashboard."""
    no_api_keys(request)
    return await signed_in(request)


async def charge_write(request: Request, principal: Principal) -> None:
    """Charge the write to the user's `writes` rate limit, as the API's writes are."""
    guard: Guard = request.app.state.guard
    await guard.charge(principal, "writes")


def refusal(exc: AppError, fields: Mapping[str, str]) -> Refusal:
    """`exc` as messages. `fields` maps a JSON Pointer into the request model (`/content`,
    `/knowledge_filter/metadata`) to the form field that holds it; the longest pointer that is
    a prefix of an error's pointer wins."""
    by_field: dict[str, str] = {}
    for err in exc.errors:
        name = field_for(err.pointer, fields)
        if name is not None:
            by_field.setdefault(name, err.message)
    if isinstance(exc, InvalidExternalId) and not exc.errors and "/external_id" in fields:
        by_field[fields["/external_id"]] = exc.detail
    message = exc.detail
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        retry = exc.headers.get("Retry-After", "60")
        headers["Retry-After"] = retry
        message = f"{exc.detail} Try again in {retry} seconds."
    elif isinstance(exc, ValidationFailed):
        message = "Nothing was saved: " + (
            "correct the fields marked below." if by_field else exc.detail
        )
    return Refusal(exc.status, message, by_field, headers)


def field_for(pointer: str, fields: Mapping[str, str]) -> str | None:
    best: str | None = None
    for prefix in fields:
        if (pointer == prefix or pointer.startswith(prefix + "/")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return None if best is None else fields[best]


def json_object(text: str, *, pointer: str) -> dict[str, Any]:
    """A text field that holds a JSON object (metadata), `{}` when left empty; read by the
    parser the API reads bodies with, so the same text gets the same answer."""
    if not text.strip():
        return {}
    problem: str | None = None
    try:
        value = loads(text)
    except (MalformedJson, TooLarge) as exc:
        problem = (
            "not JSON (" + exc.detail.removeprefix("The body is not valid JSON: ").rstrip(".") + ")"
        )
    else:
        if isinstance(value, dict):
            return value
        problem = f"a JSON object is needed, not {json.dumps(value)[:40]}"
    raise ValidationFailed(
        f"{pointer[1:]} must be a JSON object.",
        errors=[FieldError(pointer, ValidationFailed.code, f'{problem}; e.g. {{"lang": "en"}}')],
    )


def pretty_json(value: Mapping[str, Any] | None) -> str:
    """A JSON object as a text field shows it: empty for none, else indented."""
    return json.dumps(value, indent=2, ensure_ascii=False) if value else ""


def text_input(sent: str, stored: str | None = None) -> str:
    """A text area's text. Browsers send its line ends as CRLF whatever was shown; text equal
    to what is stored but for line ends is what is stored, so an edit that changed nothing
    stays a no_op and a document's own line ends survive an edit of its title."""
    text = sent.replace("\r\n", "\n")
    if stored is not None and stored.replace("\r\n", "\n") == text:
        return stored
    return text


def listed(text: str) -> list[str]:
    """Items of a text field, one per line or comma-separated, blanks dropped."""
    return [v.strip() for v in text.replace("\n", ",").split(",") if v.strip()]
