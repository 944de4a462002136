"""The OpenAPI 3.1 document, generated from the same `Operation`s and models the server runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import __version__
from app.errors import (
    AppError,
    MalformedJson,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.rest.operations import Operation

REF = "#/components/schemas/{model}"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; `code` is the stable machine identifier.",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string", "example": "/problems/knowledge.not_found"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "pointer": {"type": "string", "description": "JSON Pointer into the body"},
                    "parameter": {"type": "string", "description": "query parameter name"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["code", "message"],
            },
        },
    },
}

#: Errors any authenticated operation can answer, besides its own.
_COMMON: tuple[type[AppError], ...] = (Unauthorized, RateLimited, ValidationFailed, Unavailable)
_BODY: tuple[type[AppError], ...] = (MalformedJson, UnsupportedMediaType, TooLarge)

_RATE_HEADERS = {
    "RateLimit-Policy": {
        "description": 'The policy charged, e.g. `"writes";q=120;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'Remaining and seconds until a unit frees, e.g. `"writes";r=57;t=23`.',
        "schema": {"type": "string"},
    },
    "X-Request-Id": {"description": "The request's id.", "schema": {"type": "string"}},
}


def _models(operations: Sequence[Operation]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for op in operations:
        candidates: list[Any] = [op.body, op.query, *(m for m, _ in op.responses.values())]
        for model in candidates:
            if isinstance(model, type) and issubclass(model, BaseModel) and model not in found:
                found.append(model)
    return found


def build_openapi(operations: Sequence[Operation]) -> dict[str, Any]:
    models = _models(operations)
    keys = [(m, "validation" if _is_input(m, operations) else "serialization") for m in models]
    refs, defs = models_json_schema(keys, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = op.path.replace(":str}", "}")
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PersonAIzer self-hosted API",
            "version": __version__,
            "description": (
                "The v1 contract: KnowledgeDocs, Personas, Subscription, search. "
                "Authenticate with `X-Api-Key`. Errors are `application/problem+json` with a "
                "stable `code`; `GET /problems/{code}` describes each."
            ),
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}},
        },
        "security": [{"ApiKey": []}],
        "paths": paths,
    }


def _is_input(model: type[BaseModel], operations: Sequence[Operation]) -> bool:
    return any(model in (op.body, op.query) for op in operations)


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    description = (
        f"{op.description}\n\nRate-limit policy: `{op.policy}`. "
        f"Idempotent: {'yes' if op.idempotent else 'no'}."
    ).strip()
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": description,
        "tags": [op.tag],
        "x-ratelimit-policy": op.policy,
        "x-idempotent": op.idempotent,
        "parameters": [],
        "responses": {},
    }
    for name, desc in op.path_params.items():
        out["parameters"].append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": desc,
                "schema": {"type": "string"},
            }
        )
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            out["parameters"].append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "description": prop.get("description", ""),
                    "schema": prop,
                }
            )
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(op.body, "validation")}},
        }
    for status, (model, desc) in sorted(op.responses.items()):
        response: dict[str, Any] = {"description": desc, "headers": _RATE_HEADERS}
        if model is not None:
            response["content"] = {"application/json": {"schema": ref(model, "serialization")}}
        if status == 201:
            response["headers"] = {
                **_RATE_HEADERS,
                "Location": {"description": "The new resource.", "schema": {"type": "string"}},
            }
        out["responses"][str(status)] = response
    errors = [*op.errors, *_COMMON, *(_BODY if op.body is not None else ())]
    by_status: dict[int, list[type[AppError]]] = {}
    for err in errors:
        if err not in by_status.setdefault(err.status, []):
            by_status[err.status].append(err)
    for status, errs in sorted(by_status.items()):
        codes = ", ".join(f"`{e.code}`" for e in errs)
        out["responses"][str(status)] = {
            "description": f"Codes: {codes}.",
            "x-error-codes": [e.code for e in errs],
            "content": {
                "application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}
            },
        }
    return out
