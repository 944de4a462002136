"""The client does not lag the API: every operation of the OpenAPI document the server serves
has a method on `Client` and on `AsyncClient`, taking each of its path, query and body
parameters. A new route or a new parameter without its client method fails here."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from app import rest
from app.client import AsyncClient, Client
from app.rest.openapi import build_openapi

#: Served, but not part of what a client does: probes for load balancers and orchestrators.
EXEMPT = frozenset({"/livez", "/readyz", "/healthz"})

#: operationId -> client method, where the method's name is not the operationId in snake_case
#: (the client drops the `Knowledge` a Python caller never types).
METHOD_OF = {
    "listKnowledgeDocs": "list_docs",
    "upsertKnowledgeDocs": "upsert_docs",
    "listKnowledgeChanges": "list_changes",
    "getKnowledgeDoc": "get_doc",
    "upsertKnowledgeDoc": "upsert_doc",
    "deleteKnowledgeDoc": "delete_doc",
    "searchKnowledge": "search",
    "getSubscription": "subscription",
    "getSubscriptionUsage": "usage",
}

#: (operationId, parameter) -> the method's parameter, where the names differ.
PARAMETER_OF = {
    ("getPersona", "id"): "persona_id",
    ("updatePersona", "id"): "persona_id",
    ("deletePersona", "id"): "persona_id",
    ("setPersonaKnowledge", "id"): "persona_id",
    ("listPersonaKnowledge", "id"): "persona_id",
}

#: Operations whose body is taken as `**changes`, since only the fields sent change (PATCH).
PARTIAL_BODY = frozenset({"updatePersona"})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _operations() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    document = build_openapi(rest.OPERATIONS)
    found = []
    for path, item in document["paths"].items():
        if path in EXEMPT:
            continue
        for operation in item.values():
            if isinstance(operation, dict) and "operationId" in operation:
                found.append((path, operation, document))
    return found


def _parameters(operation: dict[str, Any], document: dict[str, Any]) -> set[str]:
    names = {p["name"] for p in operation.get("parameters", []) if p.get("in") != "header"}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        schema = body["schema"]
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        names |= set(schema.get("properties", {}))
    return names


def test_the_document_has_operations() -> None:
    # A builder that lost its routes would make the parity test below pass vacuously.
    ids = {op["operationId"] for _, op, _ in _operations()}
    assert {"listKnowledgeDocs", "searchKnowledge", "createPersona"} <= ids


@pytest.mark.parametrize("client", [Client, AsyncClient], ids=["Client", "AsyncClient"])
def test_every_operation_has_a_method_with_every_parameter(client: type[Any]) -> None:
    missing: list[str] = []
    for path, operation, document in _operations():
        op_id = operation["operationId"]
        name = METHOD_OF.get(op_id, _snake(op_id))
        method = getattr(client, name, None)
        if method is None:
            missing.append(f"{op_id} ({path}): no method {client.__name__}.{name}")
            continue
        signature = inspect.signature(method).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
        # A single upsert's body repeats the path's external_id: one name, one parameter.
        for parameter in sorted(_parameters(operation, document)):
            wanted = PARAMETER_OF.get((op_id, parameter), parameter)
            if wanted in signature:
                continue
            if op_id in PARTIAL_BODY and takes_any:
                continue
            missing.append(f"{op_id}: {client.__name__}.{name} has no parameter {wanted!r}")
    assert missing == []


def test_the_mapping_tables_name_real_operations() -> None:
    # A renamed operation must not leave a stale row that silently maps nothing.
    ids = {op["operationId"] for _, op, _ in _operations()}
    assert set(METHOD_OF) <= ids
    assert {op_id for op_id, _ in PARAMETER_OF} <= ids
    assert ids >= PARTIAL_BODY
