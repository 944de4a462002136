"""The dashboard's document writes: paste a new document, upload a file, edit one, delete one.

Each write is the API's own: the body goes through `KnowledgeDocBody` and
`knowledge.upsert_one` / `knowledge.delete_doc`, the functions REST and GraphQL call, so the
same validation, plan limits, quotas, no_op and changes feed apply, and it is charged to the
user's `writes` rate limit. A file is read with the text extraction `personaizer sync` uses
(app/reading/extract.py: the same formats, titles and encodings), the whole upload at most the
API's body limit (`PERSONAIZER_MAX_BODY_BYTES`) and its text at most the plan's `doc_chars`.

Forms post and redirect (303) to the document's page, which says once what happened; a
refused form comes back with what was typed and a message at each field (see app/web/forms.py).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote

import anyio.to_thread
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.errors import FieldError, KnowledgeNotFound, TooLarge, ValidationFailed
from app.http.validation import from_validation_error, validation_context
from app.models import KnowledgeDocBody, KnowledgeDocPublic
from app.reading.extract import Unreadable, extract_data, file_title
from app.reading.ids import MAX_ID, id_part
from app.services import knowledge
from app.services.runtime import Principal
from app.web.common import csrf, flash, form, render, runtime_of, to, upload_form
from app.web.forms import (
    REFUSED,
    Refusal,
    charge_write,
    form_page,
    json_object,
    pretty_json,
    refusal,
    text_input,
    writer,
)

#: Form fields by the request model's pointers, for messages at the right field.
_PASTE_FIELDS = {
    "/external_id": "external_id",
    "/title": "title",
    "/content": "content",
    "/metadata": "metadata",
}
#: An uploaded file's text is the document's content: a refusal of it is the file's.
_UPLOAD_FIELDS = {**_PASTE_FIELDS, "/content": "file", "/file": "file"}
_TEXT_FIELDS = ("external_id", "title", "content", "metadata")


def doc_path(external_id: str) -> str:
    return f"/dashboard/documents/{quote(external_id, safe=':')}"


def _body_limit(request: Request) -> int:
    limit: int = runtime_of(request).settings.max_body_bytes
    return limit


def _doc_body(principal: Principal, values: dict[str, str], content: str) -> KnowledgeDocBody:
    """The form's fields as the single upsert's body, validated as the API validates it."""
    metadata = json_object(values.get("metadata", ""), pointer="/metadata")
    try:
        return KnowledgeDocBody.model_validate(
            {
                "title": values.get("title", "").strip() or None,
                "content": content,
                "metadata": metadata,
            },
            context=validation_context(principal.plan.limits),
        )
    except ValidationError as exc:
        raise from_validation_error(exc, where="form") from None


def _new_page(
    request: Request,
    principal: Principal,
    *,
    active: str = "",
    values: dict[str, str] | None = None,
    refused: Refusal | None = None,
) -> Response:
    return form_page(
        request,
        "document_new.html",
        principal=principal,
        section="documents",
        refused=refused,
        active=active,
        values=values or {},
        limit_bytes=_body_limit(request),
        doc_chars=principal.plan.limits.doc_chars,
    )


async def new_document(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    return _new_page(request, principal)


async def _create(
    request: Request, principal: Principal, external_id: str, body: KnowledgeDocBody
) -> Response:
    """Create the document, refusing an external_id in use: a form for a new document never
    replaces one by surprise (the document's own page edits it)."""
    knowledge.check_external_id(external_id)
    runtime = runtime_of(request)
    try:
        await knowledge.get_doc(runtime=runtime, principal=principal, external_id=external_id)
    except KnowledgeNotFound:
        pass
    else:
        raise ValidationFailed(
            f"A document {external_id!r} exists already.",
            errors=[
                FieldError(
                    "/external_id",
                    ValidationFailed.code,
                    f"{external_id} exists already: choose another, or edit it on its page",
                )
            ],
        )
    status, _ = await knowledge.upsert_one(
        runtime=runtime, principal=principal, external_id=external_id, body=body
    )
    # Another writer may have made it in between: say what this write did.
    flash(request, f"Document {external_id} {'created' if status == 'created' else 'updated'}.")
    return to(doc_path(external_id))


async def paste(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    try:
        fields = await form(request, max_bytes=_body_limit(request))
    except TooLarge:
        refused = _too_large(_body_limit(request), "content")
        return _new_page(request, principal, active="paste", refused=refused)
    values = {name: fields.get(name, "") for name in _TEXT_FIELDS}
    try:
        await charge_write(request, principal)
        external_id = values["external_id"].strip()
        body = _doc_body(principal, values, text_input(values["content"]))
        return await _create(request, principal, external_id, body)
    except REFUSED as exc:
        refused = refusal(exc, _PASTE_FIELDS)
        return _new_page(request, principal, active="paste", values=values, refused=refused)


def _too_large(limit: int, field: str) -> Refusal:
    # The body was not read, so what was typed cannot be shown again.
    return Refusal(
        413,
        "Nothing was saved: the form was too large to read.",
        {field: f"at most {limit:,} bytes, the server's limit for one request"},
    )


def _file_name(upload: UploadFile) -> str:
    # Some browsers send the whole path of the file chosen; only its name is the file's.
    return PurePosixPath((upload.filename or "").replace("\\", "/")).name


def default_external_id(name: str) -> str:
    """The external_id of an uploaded file left unnamed: its name, as sync names a file's part
    (app/reading/ids.py: kept when it is in the alphabet, else a readable slug and a digest)."""
    return id_part(name)[:MAX_ID]


async def upload(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    limit = _body_limit(request)
    try:
        fields = await upload_form(request, max_bytes=limit)
    except TooLarge:
        return _new_page(request, principal, active="upload", refused=_too_large(limit, "file"))
    try:
        chosen = fields.get("file")
        values = {n: v for n in _TEXT_FIELDS if isinstance(v := fields.get(n, ""), str)}
        name = _file_name(chosen) if isinstance(chosen, UploadFile) else ""
        data = await chosen.read() if isinstance(chosen, UploadFile) and name else b""
    finally:
        await fields.close()
    try:
        await charge_write(request, principal)
        if not name:
            raise _file_problem("choose a file to upload")
        try:
            # Parsing a PDF or DOCX takes a while: off the event loop.
            found = await anyio.to_thread.run_sync(extract_data, name, data)
        except Unreadable as exc:
            raise _file_problem(f"{name}: {exc}") from None
        external_id = values.get("external_id", "").strip() or default_external_id(name)
        title = values.get("title", "").strip() or found.title or file_title(name)
        # The form's own values stay as typed, for the form shown again if this is refused.
        body = _doc_body(principal, {**values, "title": title}, found.text)
        return await _create(request, principal, external_id, body)
    except REFUSED as exc:
        refused = refusal(exc, _UPLOAD_FIELDS)
        return _new_page(request, principal, active="upload", values=values, refused=refused)


def _file_problem(message: str) -> ValidationFailed:
    return ValidationFailed(
        "The file gives no document.",
        errors=[FieldError("/file", ValidationFailed.code, message)],
    )


def _edit_page(
    request: Request,
    principal: Principal,
    doc: KnowledgeDocPublic,
    values: dict[str, str],
    refused: Refusal | None = None,
) -> Response:
    return form_page(
        request,
        "document_edit.html",
        principal=principal,
        section="documents",
        refused=refused,
        doc=doc,
        values=values,
        doc_chars=principal.plan.limits.doc_chars,
    )


async def edit_document(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    doc = await knowledge.get_doc(
        runtime=runtime_of(request),
        principal=principal,
        external_id=request.path_params["external_id"],
    )
    values = {
        "title": doc.title or "",
        "content": doc.content or "",
        "metadata": pretty_json(doc.metadata),
    }
    return _edit_page(request, principal, doc, values)


async def save_document(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    fields = await form(request, max_bytes=_body_limit(request))
    runtime = runtime_of(request)
    external_id = request.path_params["external_id"]
    doc = await knowledge.get_doc(runtime=runtime, principal=principal, external_id=external_id)
    values = {name: fields.get(name, "") for name in ("title", "content", "metadata")}
    try:
        await charge_write(request, principal)
        body = _doc_body(principal, values, text_input(values["content"], doc.content))
        status, _ = await knowledge.upsert_one(
            runtime=runtime, principal=principal, external_id=external_id, body=body
        )
    except REFUSED as exc:
        return _edit_page(request, principal, doc, values, refusal(exc, _PASTE_FIELDS))
    flash(
        request,
        "No change: nothing was written."
        if status == "no_op"
        else f"Document {external_id} saved.",
    )
    return to(doc_path(external_id))


async def confirm_delete(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    doc = await knowledge.get_doc(
        runtime=runtime_of(request),
        principal=principal,
        external_id=request.path_params["external_id"],
    )
    return render(
        "document_delete.html",
        principal=principal,
        section="documents",
        csrf=csrf(request),
        doc=doc,
    )


async def delete_document(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    fields = await form(request)
    external_id = request.path_params["external_id"]
    if fields.get("confirm") != "yes":  # not from the confirmation page: ask there first
        return to(f"{doc_path(external_id)}/delete")
    await charge_write(request, principal)
    deleted = await knowledge.delete_doc(
        runtime=runtime_of(request), principal=principal, external_id=external_id
    )
    flash(
        request,
        f"Document {external_id} deleted." if deleted else f"{external_id} was already gone.",
    )
    return to("/dashboard/documents")


def routes(session: list[Middleware]) -> list[BaseRoute]:
    by_id = "/dashboard/documents/{external_id:str}"
    return [
        Route("/dashboard/new-document", new_document, methods=["GET"], middleware=session),
        Route("/dashboard/new-document", paste, methods=["POST"], middleware=session),
        Route("/dashboard/new-document/upload", upload, methods=["POST"], middleware=session),
        Route(f"{by_id}/edit", edit_document, methods=["GET"], middleware=session),
        Route(f"{by_id}/edit", save_document, methods=["POST"], middleware=session),
        Route(f"{by_id}/delete", confirm_delete, methods=["GET"], middleware=session),
        Route(f"{by_id}/delete", delete_document, methods=["POST"], middleware=session),
    ]
