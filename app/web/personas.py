"""The dashboard's persona writes: create, edit, delete, and the persona's knowledge (the
attached documents, and the knowledge filter of API.md section 13).

Each write is the API's own: `PersonaCreate` / `PersonaUpdate` / `PersonaKnowledgeBody` and the
functions of app/services/personas.py that REST and GraphQL call, charged to the user's `writes`
rate limit. Forms post and redirect (303) to the persona's page, which says once what happened;
a refused form comes back with what was typed and a message at each field.

Attaching is a set of checkboxes: every attached document is listed (checked) with the user's
documents, or those a search finds, after it; the boxes checked when the form is sent are the
new attached set, as `PUT /api/personas/{id}/knowledge` takes it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.errors import PersonaNotFound
from app.http.validation import from_validation_error
from app.models import PersonaCreate, PersonaKnowledgeBody, PersonaPublic, PersonaUpdate
from app.models.personas import (
    PERSONA_DESCRIPTION_MAX,
    PERSONA_GREETING_MAX,
    PERSONA_INSTRUCTIONS_MAX,
    PERSONA_KNOWLEDGE_MAX,
    PERSONA_NAME_MAX,
)
from app.services import knowledge, personas
from app.services.runtime import Principal
from app.web.common import FORM_MAX_FIELDS, csrf, flash, form, render, runtime_of, to
from app.web.forms import (
    REFUSED,
    Refusal,
    charge_write,
    form_page,
    json_object,
    listed,
    pretty_json,
    refusal,
    text_input,
    writer,
)

#: A persona's form: instructions of 20,000 characters percent-encoded (up to 9 bytes each)
#: and the other fields, with room to spare.
PERSONA_FORM_MAX_BYTES = 512 * 1024
#: The knowledge form: up to PERSONA_KNOWLEDGE_MAX checked external_ids of at most 128
#: characters each, and the candidates shown.
KNOWLEDGE_FORM_MAX_BYTES = 512 * 1024
#: Documents offered to attach (besides the attached ones): the first ones, or those found.
CANDIDATES = 100
FIND_MAX = 200

_PERSONA_TEXT = ("name", "description", "instructions", "greeting", "metadata")
_PERSONA_FIELDS = {f"/{name}": name for name in _PERSONA_TEXT}
_KNOWLEDGE_FIELDS = {"/external_ids": "external_id"}
_FILTER_FIELDS = {
    "/knowledge_filter": "filter_metadata",
    "/knowledge_filter/metadata": "filter_metadata",
    "/knowledge_filter/external_id_prefixes": "filter_prefixes",
}
LIMITS = {
    "name": PERSONA_NAME_MAX,
    "description": PERSONA_DESCRIPTION_MAX,
    "instructions": PERSONA_INSTRUCTIONS_MAX,
    "greeting": PERSONA_GREETING_MAX,
}


def persona_path(persona_id: str) -> str:
    return f"/dashboard/personas/{persona_id}"


def _validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, where="form") from None


def _persona_data(values: dict[str, str], stored: PersonaPublic | None) -> dict[str, Any]:
    """The form's fields as the request body: an empty greeting is none (null)."""
    return {
        "name": values["name"].strip(),
        "description": text_input(values["description"], stored.description if stored else None),
        "instructions": text_input(values["instructions"], stored.instructions if stored else None),
        "greeting": text_input(values["greeting"], stored.greeting if stored else None) or None,
        "metadata": json_object(values["metadata"], pointer="/metadata"),
    }


def _form_page(
    request: Request,
    principal: Principal,
    *,
    persona: PersonaPublic | None,
    values: dict[str, str],
    refused: Refusal | None = None,
) -> Response:
    return form_page(
        request,
        "persona_form.html",
        principal=principal,
        section="personas",
        refused=refused,
        persona=persona,
        values=values,
        limits=LIMITS,
    )


async def _fields(request: Request) -> dict[str, str]:
    fields = await form(request, max_bytes=PERSONA_FORM_MAX_BYTES)
    return {name: fields.get(name, "") for name in _PERSONA_TEXT}


async def new_persona(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    return _form_page(request, principal, persona=None, values={})


async def create_persona(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    values = await _fields(request)
    try:
        await charge_write(request, principal)
        body = _validated(PersonaCreate, _persona_data(values, None))
        created = await personas.create_persona(
            runtime=runtime_of(request), principal=principal, body=body
        )
    except REFUSED as exc:
        refused = refusal(exc, _PERSONA_FIELDS)
        return _form_page(request, principal, persona=None, values=values, refused=refused)
    flash(request, f"Persona {created.name} created.")
    return to(persona_path(created.id))


async def _persona(request: Request, principal: Principal) -> PersonaPublic:
    return await personas.get_persona(
        runtime=runtime_of(request),
        principal=principal,
        persona_id=request.path_params["persona_id"],
    )


async def edit_persona(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    found = await _persona(request, principal)
    values = {
        "name": found.name,
        "description": found.description,
        "instructions": found.instructions,
        "greeting": found.greeting or "",
        "metadata": pretty_json(found.metadata),
    }
    return _form_page(request, principal, persona=found, values=values)


async def save_persona(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    values = await _fields(request)
    found = await _persona(request, principal)
    try:
        await charge_write(request, principal)
        body = _validated(PersonaUpdate, _persona_data(values, found))
        saved = await personas.update_persona(
            runtime=runtime_of(request), principal=principal, persona_id=found.id, body=body
        )
    except REFUSED as exc:
        refused = refusal(exc, _PERSONA_FIELDS)
        return _form_page(request, principal, persona=found, values=values, refused=refused)
    changed = saved.updated_at != found.updated_at
    flash(request, f"Persona {saved.name} saved." if changed else "No change: nothing was written.")
    return to(persona_path(found.id))


async def confirm_delete(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    found = await _persona(request, principal)
    return render(
        "persona_delete.html",
        principal=principal,
        section="personas",
        csrf=csrf(request),
        persona=found,
    )


async def delete_persona(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    fields = await form(request)
    persona_id = request.path_params["persona_id"]
    if fields.get("confirm") != "yes":  # not from the confirmation page: ask there first
        return to(f"{persona_path(persona_id)}/delete")
    await charge_write(request, principal)
    try:
        name = (await _persona(request, principal)).name
    except PersonaNotFound:  # deleted meanwhile (another tab): deleting is idempotent
        name = None
    deleted = await personas.delete_persona(
        runtime=runtime_of(request), principal=principal, persona_id=persona_id
    )
    flash(
        request,
        f"Persona {name} deleted; its documents stay."
        if deleted and name is not None
        else "That persona was already gone.",
    )
    return to("/dashboard/personas")


async def _knowledge_page(
    request: Request,
    principal: Principal,
    persona: PersonaPublic,
    *,
    checked: list[str] | None = None,
    filter_values: dict[str, str] | None = None,
    refused: Refusal | None = None,
) -> Response:
    runtime = runtime_of(request)
    text = request.query_params.get("q", "").strip()[:FIND_MAX]
    if text:
        page = await knowledge.find_docs(
            runtime=runtime, principal=principal, text=text, limit=CANDIDATES
        )
    else:
        page = await knowledge.list_docs(runtime=runtime, principal=principal, limit=CANDIDATES)
    attached = persona.knowledge_external_ids
    rule = persona.knowledge_filter
    if filter_values is None:
        filter_values = {
            "filter_metadata": pretty_json(rule.metadata if rule else None),
            "filter_prefixes": "\n".join(rule.external_id_prefixes) if rule else "",
        }
    return form_page(
        request,
        "persona_knowledge.html",
        principal=principal,
        section="personas",
        refused=refused,
        persona=persona,
        attached=attached,
        titles={d.external_id: d.title for d in page.items},
        candidates=[d for d in page.items if d.external_id not in set(attached)],
        more=page.total - len(page.items),
        checked=set(attached if checked is None else checked),
        q=text,
        filter_values=filter_values,
    )


async def knowledge_page(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    return await _knowledge_page(request, principal, await _persona(request, principal))


async def set_knowledge(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    fields = await form(
        request,
        max_bytes=KNOWLEDGE_FORM_MAX_BYTES,
        max_fields=PERSONA_KNOWLEDGE_MAX + CANDIDATES + FORM_MAX_FIELDS,
    )
    found = await _persona(request, principal)
    checked = fields.getlist("external_id")
    try:
        await charge_write(request, principal)
        body = _validated(PersonaKnowledgeBody, {"external_ids": checked})
        result = await personas.set_knowledge(
            runtime=runtime_of(request),
            principal=principal,
            persona_id=found.id,
            external_ids=body.external_ids,
        )
    except REFUSED as exc:
        refused = refusal(exc, _KNOWLEDGE_FIELDS)
        return await _knowledge_page(request, principal, found, checked=checked, refused=refused)
    flash(
        request,
        f"Attached documents saved: {result.added} added, {result.removed} removed, "
        f"{len(result.external_ids)} attached.",
    )
    return to(persona_path(found.id))


async def set_filter(request: Request) -> Response:
    principal = await writer(request)
    if principal is None:
        return to("/login")
    fields = await form(request, max_bytes=PERSONA_FORM_MAX_BYTES)
    found = await _persona(request, principal)
    values = {name: fields.get(name, "") for name in ("filter_metadata", "filter_prefixes")}
    clear = fields.get("action") == "clear"
    try:
        await charge_write(request, principal)
        rule: dict[str, Any] | None = None
        if not clear:
            metadata = json_object(values["filter_metadata"], pointer="/knowledge_filter/metadata")
            prefixes = listed(values["filter_prefixes"])
            # Both left empty: no rule, as null is in the API (an empty rule is refused there).
            if metadata or prefixes:
                rule = {"metadata": metadata, "external_id_prefixes": prefixes}
        body = _validated(PersonaUpdate, {"knowledge_filter": rule})
        await personas.update_persona(
            runtime=runtime_of(request), principal=principal, persona_id=found.id, body=body
        )
    except REFUSED as exc:
        refused = refusal(exc, _FILTER_FIELDS)
        return await _knowledge_page(
            request, principal, found, filter_values=values, refused=refused
        )
    flash(request, "Knowledge filter saved." if rule else "Knowledge filter cleared.")
    return to(persona_path(found.id))


def routes(session: list[Middleware]) -> list[BaseRoute]:
    by_id = "/dashboard/personas/{persona_id:str}"
    return [
        Route("/dashboard/new-persona", new_persona, methods=["GET"], middleware=session),
        Route("/dashboard/new-persona", create_persona, methods=["POST"], middleware=session),
        Route(f"{by_id}/edit", edit_persona, methods=["GET"], middleware=session),
        Route(f"{by_id}/edit", save_persona, methods=["POST"], middleware=session),
        Route(f"{by_id}/delete", confirm_delete, methods=["GET"], middleware=session),
        Route(f"{by_id}/delete", delete_persona, methods=["POST"], middleware=session),
        Route(f"{by_id}/knowledge", knowledge_page, methods=["GET"], middleware=session),
        Route(f"{by_id}/knowledge", set_knowledge, methods=["POST"], middleware=session),
        Route(f"{by_id}/filter", set_filter, methods=["POST"], middleware=session),
    ]
