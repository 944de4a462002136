"""The AppError tree: one class per stable `code` of the contract (API.md section 3).

    AppError
    ├── Unauthorized              auth.unauthorized              401
    ├── Forbidden                 auth.forbidden                 403
    ├── InsufficientScope         auth.insufficient_scope        403
    ├── OriginNotAllowed          auth.origin_not_allowed        403
    ├── MalformedJson             request.malformed_json         400
    ├── InvalidCursor             request.invalid_cursor         400
    ├── ValidationFailed          request.validation_failed      422
    │   ├── InvalidExternalId     knowledge.invalid_external_id  422
    │   ├── DuplicateExternalId   knowledge.duplicate_external_id 422
    │   ├── BatchTooLarge         knowledge.batch_too_large      422
    │   ├── ContentTooLarge       knowledge.content_too_large    422
    │   ├── UnknownExternalIds    knowledge.unknown_external_ids 422
    │   └── QueryTooCostly        request.query_too_costly       422
    ├── UnsupportedMediaType      request.unsupported_media_type 415
    ├── TooLarge                  request.too_large              413
    ├── RequestTimeout            request.timeout                408
    ├── RouteNotFound             request.not_found              404
    ├── MethodNotAllowed          request.method_not_allowed     405
    ├── MisdirectedRequest        request.misdirected            421
    ├── KnowledgeNotFound         knowledge.not_found            404
    ├── PersonaNotFound           persona.not_found              404
    ├── KnowledgeQuotaExceeded    knowledge.quota_exceeded       403
    ├── ChangesExpired            knowledge.changes_expired      410
    ├── PersonaQuotaExceeded      persona.quota_exceeded         403
    ├── RateLimited               limits.rate_exceeded           429
    ├── Unavailable               server.unavailable             503
    └── InternalError             server.internal_error          500

Services raise these; each door (REST, GraphQL, CLI) translates them once at its edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field at fault: a JSON Pointer into the request body, or a query parameter's name
    (`parameter`, as RFC 9457 suggests for query strings)."""

    pointer: str
    code: str
    message: str
    parameter: str | None = None

    def as_dict(self) -> dict[str, str]:
        where = {"parameter": self.parameter} if self.parameter else {"pointer": self.pointer}
        return {**where, "code": self.code, "message": self.message}


#: Field errors a problem lists. Past this, `errors` holds the first ones and `errors_total`
#: says how many there were, so that no answer is bigger than the request deserves.
MAX_FIELD_ERRORS = 100


class AppError(Exception):
    code: ClassVar[str] = "server.internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    #: What `GET /problems/{code}` says about the code.
    description: ClassVar[str] = "A bug. It is logged with the request id; report that id."

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.extra = extra or {}
        self.errors = errors or []
        self.headers = headers or {}
        super().__init__(self.detail)

    @property
    def errors(self) -> list[FieldError]:
        """The fields at fault: at most MAX_FIELD_ERRORS of them (see `errors_total`)."""
        return self._errors

    @errors.setter
    def errors(self, value: list[FieldError]) -> None:
        self._errors = value[:MAX_FIELD_ERRORS]
        if len(value) > MAX_FIELD_ERRORS:
            self.extra["errors_total"] = len(value)


class Unauthorized(AppError):
    code = "auth.unauthorized"
    status = 401
    title = "Unauthorized"
    description = (
        "The X-Api-Key header is missing, malformed, unknown, disabled or deleted. The body is "
        "the same in every case."
    )

    def __init__(self) -> None:
        super().__init__("A valid X-Api-Key header is required.")


class Forbidden(AppError):
    code = "auth.forbidden"
    status = 403
    title = "Forbidden"
    description = (
        "An API key on a browser-session-only route, a CSRF check failed, or a page from an "
        "Origin the MCP door does not know called it with a key that lists no allowed_origins."
    )


class InsufficientScope(AppError):
    code = "auth.insufficient_scope"
    status = 403
    title = "Insufficient scope"
    description = (
        "The key (or tenant token) is valid but restricted: the operation needs a scope it does "
        "not have (docs:read, docs:write, personas:read, personas:write, search, usage:read), "
        "or names a persona outside its persona_ids. A tenant token can only search and read "
        "personas. Nothing was done."
    )


class OriginNotAllowed(AppError):
    code = "auth.origin_not_allowed"
    status = 403
    title = "Origin not allowed"
    description = (
        "The request carries a browser Origin header and the key (or the tenant token's key) "
        "lists allowed_origins that do not include it. Nothing was done."
    )


class MalformedJson(AppError):
    code = "request.malformed_json"
    status = 400
    title = "Malformed JSON"
    description = (
        "The request body is not valid JSON, or not UTF-8: also a number out of the range of a "
        "64-bit float (`1e309`), a string holding a lone UTF-16 surrogate (`\\ud800`), or "
        "arrays and objects nested more than 64 deep (the server's parser limit)."
    )


class InvalidCursor(AppError):
    code = "request.invalid_cursor"
    status = 400
    title = "Invalid cursor"
    description = "The cursor does not decode; pass back the next_cursor of a previous page."


class ValidationFailed(AppError):
    code = "request.validation_failed"
    status = 422
    title = "Validation failed"
    description = (
        "A field has the wrong type, range or length. `errors` lists each field at fault with "
        "a JSON Pointer."
    )


class InvalidExternalId(ValidationFailed):
    code = "knowledge.invalid_external_id"
    title = "Invalid external_id"
    description = "external_id must be 1-128 characters of A-Z a-z 0-9 . _ : -"


class DuplicateExternalId(ValidationFailed):
    code = "knowledge.duplicate_external_id"
    title = "Duplicate external_id"
    description = "The same external_id appears more than once in one batch."


class BatchTooLarge(ValidationFailed):
    code = "knowledge.batch_too_large"
    title = "Batch too large"
    description = "The batch has more items than the plan's batch_items."


class ContentTooLarge(ValidationFailed):
    code = "knowledge.content_too_large"
    title = "Content too large"
    description = "A document's content is longer than the plan's doc_chars."


class UnknownExternalIds(ValidationFailed):
    code = "knowledge.unknown_external_ids"
    title = "Unknown external_ids"
    description = "The request names documents that do not exist; `missing` lists them."


class QueryTooCostly(ValidationFailed):
    code = "request.query_too_costly"
    title = "Query too costly"
    description = (
        "GraphQL only: the operation costs more than the server's limit "
        "(PERSONAIZER_GRAPHQL_MAX_COST) and none of it ran. Each selected field "
        "counts 1, and the fields under one with `first` or `k` count once per item it may "
        "return (the argument, else its default); `cost` and `limit` in the error's extensions "
        "say by how much. Ask for smaller pages or fewer fields."
    )


class UnsupportedMediaType(AppError):
    code = "request.unsupported_media_type"
    status = 415
    title = "Unsupported media type"
    description = "A request with a body must send Content-Type: application/json."


class TooLarge(AppError):
    code = "request.too_large"
    status = 413
    title = "Request too large"
    description = (
        "The request body is over the server's limit: 10 MiB by default, and at most 1,000,000 "
        "JSON values and 100,000 arrays however few bytes they take."
    )


class RequestTimeout(AppError):
    code = "request.timeout"
    status = 408
    title = "Request timeout"
    description = (
        "The request (its line, headers and body) did not arrive within the server's read "
        "timeout (PERSONAIZER_REQUEST_READ_TIMEOUT_S, default 30 s). The connection is closed, "
        "with this answer when the headers were not complete yet. Nothing was done."
    )


class MalformedRequest(AppError):
    code = "request.malformed"
    status = 400
    title = "Malformed request"
    description = (
        "The request is not HTTP/1.1 the server can take: a request line or headers that do not "
        "parse, over 16 KiB of them, an HTTP/1.1 request without Host, both Content-Length and "
        "Transfer-Encoding, or a body that does not follow its framing. The connection is "
        "closed. Nothing was done."
    )


class RouteNotFound(AppError):
    code = "request.not_found"
    status = 404
    title = "Not found"
    description = "No such route."


class MethodNotAllowed(AppError):
    code = "request.method_not_allowed"
    status = 405
    title = "Method not allowed"
    description = "The route exists but does not take this method; see the Allow header."


class MisdirectedRequest(AppError):
    code = "request.misdirected"
    status = 421
    title = "Misdirected request"
    description = (
        "The Host header names a host this server does not answer for at /mcp (a guard against "
        "DNS rebinding). The operator lists extra host names in PERSONAIZER_ALLOWED_HOSTS."
    )


class KnowledgeNotFound(AppError):
    code = "knowledge.not_found"
    status = 404
    title = "Knowledge document not found"
    description = "No document with that external_id for this user."


class PersonaNotFound(AppError):
    code = "persona.not_found"
    status = 404
    title = "Persona not found"
    description = "No persona with that id for this user."


class KnowledgeQuotaExceeded(AppError):
    code = "knowledge.quota_exceeded"
    status = 403
    title = "Knowledge quota exceeded"
    description = "The write would pass the plan's knowledge_docs or knowledge_chars."


class ChangesExpired(AppError):
    code = "knowledge.changes_expired"
    status = 410
    title = "Changes expired"
    description = (
        "The changes feed's `since` token is older than the retained history (deleted "
        "documents' tombstones are kept PERSONAIZER_CHANGES_RETENTION_DAYS, 30 by default): "
        "changes after it may be gone. List every document again, then follow the feed from "
        "a call without `since`."
    )


class PersonaQuotaExceeded(AppError):
    code = "persona.quota_exceeded"
    status = 403
    title = "Persona quota exceeded"
    description = "Creating the persona would pass the plan's personas limit."


class RateLimited(AppError):
    code = "limits.rate_exceeded"
    status = 429
    title = "Rate limit exceeded"
    description = (
        "The policy's limit for this minute is used up; retry after the Retry-After header's "
        "seconds. Nothing was done."
    )


class Unavailable(AppError):
    code = "server.unavailable"
    status = 503
    title = "Service unavailable"
    description = "The server is overloaded or not ready yet; retry after Retry-After seconds."


class PlanMissing(AppError):
    """The caller's account is on a plan the `plans` table no longer has (deleted by hand):
    refused rather than served some other plan's limits, which would be a guess about what the
    operator meant. The operator restores the plan or moves the account."""

    code = "account.plan_missing"
    status = 403
    title = "Plan missing"
    description = (
        "This account's plan does not exist on the server; the operator must restore the plan "
        "or move the account to another one."
    )


class InternalError(AppError):
    pass


def all_error_classes() -> list[type[AppError]]:
    """Every concrete code, once each, in declaration order."""
    seen: dict[str, type[AppError]] = {}
    stack: list[type[AppError]] = [AppError]
    while stack:
        cls = stack.pop(0)
        seen.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return list(seen.values())


# --- operator (CLI, dashboard) errors: not produced by the v1 API routes -------------------


class UserNotFound(AppError):
    code = "account.user_not_found"
    status = 404
    title = "User not found"
    description = "No user with that email."


class UserExists(AppError):
    code = "account.user_exists"
    status = 409
    title = "User exists"
    description = "A user with that email exists already."


class KeyNotFound(AppError):
    code = "account.key_not_found"
    status = 404
    title = "API key not found"
    description = "No API key starts with that prefix (or more than one does)."


class UnknownPlan(AppError):
    code = "account.unknown_plan"
    status = 422
    title = "Unknown plan"
    description = "No plan with that id is in the plans table."


ERRORS_BY_CODE: dict[str, type[AppError]] = {cls.code: cls for cls in all_error_classes()}
