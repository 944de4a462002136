"""REST: Personas, the 6 endpoints of API.md section 6."""

from __future__ import annotations

from starlette.responses import Response

from app.errors import (
    InvalidCursor,
    InvalidExternalId,
    PersonaNotFound,
    PersonaQuotaExceeded,
    UnknownExternalIds,
)
from app.models import (
    Page,
    PersonaCreate,
    PersonaKnowledgeBody,
    PersonaKnowledgeDoc,
    PersonaKnowledgeResult,
    PersonaListItem,
    PersonaPublic,
    PersonaUpdate,
)
from app.models.pagination import PageQuery
from app.rest.operations import Call, Link, Operation, PathParam, json_response
from app.services import personas

PERSONA_ID_PARAM = {
    "id": PathParam(
        "The persona's id, `per_` + a ULID. Any other value is simply not found (404).",
        example="per_01JDQ5M3V9Z8K7X6W5T4S3R2Q1",
    )
}
_PERSONA_LINKS = {
    name: Link(operation_id, {"id": "$response.body#/id"}, description)
    for name, operation_id, description in (
        ("GetPersona", "getPersona", "Read it back."),
        ("UpdatePersona", "updatePersona", "Change some of its fields."),
        ("SetPersonaKnowledge", "setPersonaKnowledge", "Attach documents to it."),
        ("DeletePersona", "deletePersona", "Delete it."),
    )
}


async def list_personas(call: Call) -> Response:
    q: PageQuery = call.query
    page = await personas.list_personas(
        runtime=call.runtime, principal=call.principal, limit=q.limit, cursor=q.cursor
    )
    return json_response(page)


async def create_persona(call: Call) -> Response:
    persona = await personas.create_persona(
        runtime=call.runtime, principal=call.principal, body=call.body
    )
    return json_response(persona, 201, headers={"Location": f"/api/personas/{persona.id}"})


async def get_persona(call: Call) -> Response:
    persona = await personas.get_persona(
        runtime=call.runtime, principal=call.principal, persona_id=call.path("id")
    )
    return json_response(persona)


async def update_persona(call: Call) -> Response:
    persona = await personas.update_persona(
        runtime=call.runtime, principal=call.principal, persona_id=call.path("id"), body=call.body
    )
    return json_response(persona)


async def delete_persona(call: Call) -> Response:
    await personas.delete_persona(
        runtime=call.runtime, principal=call.principal, persona_id=call.path("id")
    )
    return Response(status_code=204)


async def list_knowledge(call: Call) -> Response:
    q: PageQuery = call.query
    page = await personas.list_knowledge(
        runtime=call.runtime,
        principal=call.principal,
        persona_id=call.path("id"),
        limit=q.limit,
        cursor=q.cursor,
    )
    return json_response(page, exclude={"items": {"__all__": {"content"}}})


async def set_knowledge(call: Call) -> Response:
    body: PersonaKnowledgeBody = call.body
    result = await personas.set_knowledge(
        runtime=call.runtime,
        principal=call.principal,
        persona_id=call.path("id"),
        external_ids=body.external_ids,
    )
    return json_response(result)


_BY_ID = "/api/personas/{id:str}"

OPERATIONS = [
    Operation(
        method="GET",
        path="/api/personas",
        operation_id="listPersonas",
        summary="List personas",
        description=(
            "The user's personas ordered by creation, with cursor pagination. Items carry "
            "`knowledge_count` but not `knowledge_external_ids`."
        ),
        handler=list_personas,
        tag="Personas",
        policy="reads",
        scope="personas:read",
        idempotent=True,
        query=PageQuery,
        responses={200: (Page[PersonaListItem], "A page of personas.")},
        errors=(InvalidCursor,),
    ),
    Operation(
        method="POST",
        path="/api/personas",
        operation_id="createPersona",
        summary="Create a persona",
        description=(
            "201 with the persona and a Location header. Refused with `persona.quota_exceeded` "
            "when the user already has the plan's `personas`."
        ),
        handler=create_persona,
        tag="Personas",
        policy="writes",
        scope="personas:write",
        idempotent=False,
        body=PersonaCreate,
        status=201,
        responses={201: (PersonaPublic, "Created.")},
        errors=(PersonaQuotaExceeded, InvalidExternalId),
        links=_PERSONA_LINKS,
    ),
    Operation(
        method="GET",
        path=_BY_ID,
        operation_id="getPersona",
        summary="Get one persona",
        description="The persona with its sorted `knowledge_external_ids`.",
        handler=get_persona,
        tag="Personas",
        policy="reads",
        scope="personas:read",
        idempotent=True,
        path_params=PERSONA_ID_PARAM,
        responses={200: (PersonaPublic, "The persona.")},
        errors=(PersonaNotFound,),
    ),
    Operation(
        method="PATCH",
        path=_BY_ID,
        operation_id="updatePersona",
        summary="Update a persona",
        description=(
            "A partial update: only the top-level fields sent change (`metadata` is replaced "
            "as a whole). `greeting` may be set to null; the other fields may be left out but "
            "not set to null. `updated_at` moves only when a value changes."
        ),
        handler=update_persona,
        tag="Personas",
        policy="writes",
        scope="personas:write",
        idempotent=True,
        body=PersonaUpdate,
        path_params=PERSONA_ID_PARAM,
        responses={200: (PersonaPublic, "The persona as updated.")},
        errors=(PersonaNotFound, InvalidExternalId),
    ),
    Operation(
        method="DELETE",
        path=_BY_ID,
        operation_id="deletePersona",
        summary="Delete a persona",
        description=(
            "Idempotent: 204 also when the persona does not exist. The attached documents stay."
        ),
        handler=delete_persona,
        tag="Personas",
        policy="writes",
        scope="personas:write",
        idempotent=True,
        path_params=PERSONA_ID_PARAM,
        status=204,
        responses={204: (None, "Deleted, or there was nothing to delete.")},
    ),
    Operation(
        method="GET",
        path=f"{_BY_ID}/knowledge",
        operation_id="listPersonaKnowledge",
        summary="List a persona's knowledge",
        description=(
            "The documents the persona's searches see, ordered by external_id, without "
            "content, with cursor pagination: those attached to it and those matching its "
            "`knowledge_filter` (API.md section 13), each with `via` (`attached`, also when the "
            "filter matches it too, or `filter`). `total` counts the whole knowledge. The "
            "documents are the user's own data, so a key needs `docs:read` as well as "
            "`personas:read` (as GraphQL's `Persona.knowledge`); a key restricted to other "
            "personas is refused this one."
        ),
        handler=list_knowledge,
        tag="Personas",
        policy="reads",
        scope="personas:read",
        extra_scopes=("docs:read",),
        idempotent=True,
        query=PageQuery,
        path_params=PERSONA_ID_PARAM,
        responses={200: (Page[PersonaKnowledgeDoc], "A page of the persona's documents.")},
        errors=(PersonaNotFound, InvalidCursor),
    ),
    Operation(
        method="PUT",
        path=f"{_BY_ID}/knowledge",
        operation_id="setPersonaKnowledge",
        summary="Replace a persona's knowledge documents",
        description=(
            "Replaces the set of attached documents with `external_ids` (a repeated id counts "
            "once). Answers the set after the call and what was `added` and `removed`, all "
            "sorted. Unknown external_ids are refused with `knowledge.unknown_external_ids`, "
            "listed in the problem's `missing`, and nothing changes."
        ),
        handler=set_knowledge,
        tag="Personas",
        policy="writes",
        scope="personas:write",
        idempotent=True,
        body=PersonaKnowledgeBody,
        path_params=PERSONA_ID_PARAM,
        responses={200: (PersonaKnowledgeResult, "The attached set and the change.")},
        errors=(PersonaNotFound, InvalidExternalId, UnknownExternalIds),
    ),
]
