"""Checks schemathesis runs besides its own, loaded through `hooks` in schemathesis.toml.

Its own checks compare statuses with the document; these also compare the problem's `code`,
which is what clients branch on.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

#: Refusals of schema-valid requests that no schema can rule out, because they depend on what
#: exists or on two values agreeing, per operation: status -> code -> the one body pointer its
#: field errors may name (None: any). Each is stated in the operation's description.
#: schemathesis.toml lets `positive_data_acceptance` pass these statuses on these operations;
#: `schema_valid_refusals_are_stated` below keeps them to exactly these codes.
UNSTATABLE: dict[str, dict[int, dict[str, str | None]]] = {
    # A cursor is opaque: a string decodes or it does not.
    "listKnowledgeDocs": {400: {"request.invalid_cursor": None}},
    "listPersonas": {400: {"request.invalid_cursor": None}},
    "listPersonaKnowledge": {400: {"request.invalid_cursor": None}},
    "listKnowledgeChanges": {400: {"request.invalid_cursor": None}},
    # JSON Schema's uniqueItems compares whole items, not one property of them.
    "upsertKnowledgeDocs": {422: {"knowledge.duplicate_external_id": None}},
    # The body's external_id must equal the path's.
    "upsertKnowledgeDoc": {422: {"request.validation_failed": "/external_id"}},
    # Attached documents must exist.
    "setPersonaKnowledge": {422: {"knowledge.unknown_external_ids": None}},
}


#: U+0000 in a document's content: refused (PostgreSQL's text cannot hold it), stated in the
#: description, not in the content's schema: its pattern already says "not blank", and every way
#: of saying both there (one anchored pattern, or `not`) makes schemathesis 4.32.5's coverage
#: phase fail inside hypothesis (SystemError: AST constructor recursion depth mismatch). Titles
#: and persona texts state it with a pattern.
CONTENT_NUL = {"upsertKnowledgeDocs", "upsertKnowledgeDoc"}
NUL_MESSAGE = "text must not contain U+0000 (NUL)"


def _only_content_nul(response: Any) -> bool:
    try:
        errors = json.loads(response.content).get("errors", [])
    except ValueError:
        return False
    return bool(errors) and all(
        e.get("message") == NUL_MESSAGE and str(e.get("pointer", "")).endswith("/content")
        for e in errors
    )


def _problem_code(response: Any) -> str | None:
    if not response.headers.get("content-type", [""])[0].startswith("application/problem+json"):
        return None
    try:
        code = json.loads(response.content).get("code")
    except ValueError:
        return None
    return code if isinstance(code, str) else None


@schemathesis.check
def problem_code_is_documented(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error answer's `code` is one the operation lists for that status (`x-error-codes`)."""
    if response.status_code < 400:
        return None
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code))
    if documented is None:
        return None  # status_code_conformance reports an undocumented status
    code = _problem_code(response)
    codes = documented.get("x-error-codes", [])
    if code not in codes:
        raise AssertionError(
            f"{response.status_code} answered with code {code!r}; the operation documents {codes}"
        )
    return None


@schemathesis.check
def schema_valid_refusals_are_stated(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request refused 400 or 422 is refused only for a rule in `UNSTATABLE`;
    any other would be a rule the document does not state."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    operation_id = case.operation.definition.raw.get("operationId", "")
    if operation_id in CONTENT_NUL and response.status_code == 422 and _only_content_nul(response):
        return None
    allowed = UNSTATABLE.get(operation_id, {}).get(response.status_code, {})
    code = _problem_code(response)
    if code not in allowed:
        raise AssertionError(
            f"schema-valid request refused {response.status_code} {code!r}: the document "
            "does not say why"
        )
    pointer = allowed[code]
    if pointer is not None:
        errors = json.loads(response.content).get("errors", [])
        if not errors or any(e.get("pointer") != pointer for e in errors):
            raise AssertionError(f"{code} for {errors}; only {pointer} may be refused")
    return None
