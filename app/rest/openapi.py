"""The OpenAPI 3.1 document, generated from the same `Operation`s and models the server runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from app import __version__
from app.errors import (
    AppError,
    InsufficientScope,
    MalformedJson,
    OriginNotAllowed,
    RateLimited,
    RouteNotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.rest.operations import DYNAMIC_PARAMETERS, Operation, PathParam

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
        "missing": {
            "type": "array",
            "items": {"type": "string"},
            "description": "`knowledge.unknown_external_ids`: the external_ids that name nothing.",
        },
    },
}

#: Errors any authenticated operation can answer, besides its own: authentication, the rate limit,
#: and 503 (the rate-limit storage unreachable, the database busy, the model still loading).
#: A restricted key (API.md section 12) is refused an operation outside its scopes or personas,
#: and a browser origin outside its allowed origins.
_COMMON: tuple[type[AppError], ...] = (
    Unauthorized,
    InsufficientScope,
    OriginNotAllowed,
    RateLimited,
    Unavailable,
)
#: Errors of an operation that takes a body: how it is read and parsed.
_BODY: tuple[type[AppError], ...] = (MalformedJson, UnsupportedMediaType, TooLarge)
#: A path value with `/` in it (sent as `%2F`) matches no route at all.
_PATH: tuple[type[AppError], ...] = (RouteNotFound,)

_REQUEST_ID = {"description": "The request's id.", "schema": {"type": "string"}}
_RATE_HEADERS = {
    "RateLimit-Policy": {
        "description": 'The policy charged, e.g. `"writes";q=120;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'Remaining and seconds until a unit frees, e.g. `"writes";r=57;t=23`.',
        "schema": {"type": "string"},
    },
    "X-Request-Id": _REQUEST_ID,
}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again (an integer, at least 1).",
    "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    "required": True,
}


_CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "failing"]},
        "reason": {"type": "string", "description": "Why it is not `ok`."},
    },
}
_CHECKS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Each check by name: `model`, `database`, `schema`, `rate_limits`.",
    "additionalProperties": _CHECK_SCHEMA,
}
#: The health routes an orchestrator or load balancer polls (app/rest/system.py): no key, no
#: rate limit. (`/healthz` predates them and stays as it was, undocumented here.)
HEALTH_PATHS: dict[str, dict[str, Any]] = {
    "/livez": {
        "get": {
            "operationId": "getLiveness",
            "summary": "Whether the process answers",
            "description": (
                "Always 200 while the server's event loop runs: nothing else is checked, so an "
                "outage of the database or Redis never gets a working process restarted. "
                "No key, no rate limit."
            ),
            "tags": ["Health"],
            "security": [],
            "x-ratelimit-policy": "none",
            "x-idempotent": True,
            "responses": {
                "200": {
                    "description": "The process is alive.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string", "const": "ok"}},
                            }
                        }
                    },
                }
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "getReadiness",
            "summary": "Whether the server should get traffic",
            "description": (
                "200 when the embedding model is loaded, the database answers (a ping reused "
                "for a second), its schema is this build's, and rate limits work: Redis "
                "answers, or is unreachable under `PERSONAIZER_RATE_LIMIT_ON_REDIS_FAILURE="
                "open`, which is 200 with `status: degraded` and the reason in "
                "`checks.rate_limits`. Otherwise 503, naming the failing checks. "
                "No key, no rate limit."
            ),
            "tags": ["Health"],
            "security": [],
            "x-ratelimit-policy": "none",
            "x-idempotent": True,
            "responses": {
                "200": {
                    "description": "Ready (`ok`), or ready with a degraded dependency.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status", "checks"],
                                "properties": {
                                    "status": {"type": "string", "enum": ["ok", "degraded"]},
                                    "checks": _CHECKS_SCHEMA,
                                },
                            }
                        }
                    },
                },
                "503": {
                    "description": (
                        "Codes: `server.unavailable`. Not ready: the problem's `checks` names "
                        "each check and why any fails."
                    ),
                    "x-error-codes": [Unavailable.code],
                    "headers": {"X-Request-Id": _REQUEST_ID, "Retry-After": _RETRY_AFTER},
                    "content": {
                        "application/problem+json": {
                            "schema": {
                                "allOf": [
                                    {"$ref": REF.format(model="Problem")},
                                    {
                                        "type": "object",
                                        "required": ["checks"],
                                        "properties": {"checks": _CHECKS_SCHEMA},
                                    },
                                ]
                            }
                        }
                    },
                },
            },
        }
    },
}


def _models(operations: Sequence[Operation]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for op in operations:
        candidates: list[Any] = [op.body, *(m for m, _ in op.responses.values())]
        for model in candidates:
            if isinstance(model, type) and issubclass(model, BaseModel) and model not in found:
                found.append(model)
    return found


def build_openapi(operations: Sequence[Operation]) -> dict[str, Any]:
    models = _models(operations)
    keys = [(m, "validation" if _is_input(m, operations) else "serialization") for m in models]
    refs, defs = models_json_schema(keys, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = {
        name: _without_impossible_defaults(schema) for name, schema in defs.get("$defs", {}).items()
    }
    schemas["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = op.path.replace(":str}", "}")
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, refs)
    paths.update(HEALTH_PATHS)
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
    return any(model is op.body for op in operations)


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_allows_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def _without_impossible_defaults(schema: Any) -> Any:
    """Drop `default: null` where null is not a valid value. Pydantic writes it for a field
    that may be left out but not sent as null (PersonaUpdate's), and OpenAPI validators rightly
    refuse a default the schema itself rejects: leaving the field out is how one says it."""
    if isinstance(schema, list):
        return [_without_impossible_defaults(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _without_impossible_defaults(v) for k, v in schema.items()}
    if "default" in out and out["default"] is None and not _allows_null(out):
        del out["default"]
    return out


def _parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: it is sent as text or left out, never null, so the model's
    `X | None = None` is just X; titles are noise next to the parameter's name."""
    branches = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    out = {k: v for k, v in schema.items() if k not in ("anyOf", "title", "description")}
    if len(branches) == 1:
        out.update(branches[0])
    elif branches:
        out["anyOf"] = branches
    if out.get("default", 0) is None:
        del out["default"]
    return out


def _path_parameter(name: str, param: PathParam) -> dict[str, Any]:
    schema = {
        k: v for k, v in TypeAdapter(param.type_).json_schema().items() if k not in ("title",)
    }
    # Routing takes one path segment: a value is never empty and never has a `/`.
    schema.setdefault("minLength", 1)
    schema.setdefault("pattern", "^[^/]+$")
    out: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "description": param.description,
        "schema": schema,
    }
    if param.example is not None:
        out["example"] = param.example
    return out


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": prop.get("description", ""),
            "schema": _parameter_schema(prop),
        }
        for name, prop in schema["properties"].items()
        if DYNAMIC_PARAMETERS not in prop
    ]


def _error_responses(op: Operation) -> dict[str, Any]:
    """Every error status the operation can answer, each naming its codes."""
    errors = [*op.errors, *_COMMON]
    if op.query is not None or op.body is not None:
        errors.append(ValidationFailed)
    if op.body is not None:
        errors.extend(_BODY)
    if op.path_params:
        errors.extend(_PATH)
    by_status: dict[int, list[type[AppError]]] = {}
    for err in errors:
        if err not in by_status.setdefault(err.status, []):
            by_status[err.status].append(err)
    out: dict[str, Any] = {}
    for status, errs in sorted(by_status.items()):
        codes = ", ".join(f"`{e.code}`" for e in errs)
        headers: dict[str, Any] = {"X-Request-Id": _REQUEST_ID}
        if status != Unauthorized.status:  # refused before the rate limit is charged
            headers = dict(_RATE_HEADERS)
        if status in (RateLimited.status, Unavailable.status):
            headers["Retry-After"] = _RETRY_AFTER
        out[str(status)] = {
            "description": f"Codes: {codes}.",
            "x-error-codes": [e.code for e in errs],
            "headers": headers,
            "content": {
                "application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}
            },
        }
    return out


def _links(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, link in op.links.items():
        out[name] = {"operationId": link.operation_id, "parameters": dict(link.parameters)}
        if link.description:
            out[name]["description"] = link.description
    return out


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    scopes = " and ".join(f"`{s}`" for s in (op.scope, *op.extra_scopes))
    description = (
        f"{op.description}\n\nRate-limit policy: `{op.policy}`. Key scope: {scopes}. "
        f"Idempotent: {'yes' if op.idempotent else 'no'}."
    ).strip()
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": description,
        "tags": [op.tag],
        "x-ratelimit-policy": op.policy,
        "x-required-scope": op.scope,
        **({"x-also-required-scopes": list(op.extra_scopes)} if op.extra_scopes else {}),
        "x-idempotent": op.idempotent,
        "parameters": [_path_parameter(n, p) for n, p in op.path_params.items()],
        "responses": {},
    }
    if op.query is not None:
        out["parameters"].extend(_query_parameters(op.query))
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(op.body, "validation")}},
        }
    links = _links(op)
    for status, (model, desc) in sorted(op.responses.items()):
        response: dict[str, Any] = {"description": desc, "headers": _RATE_HEADERS}
        if model is not None:
            response["content"] = {"application/json": {"schema": ref(model, "serialization")}}
            if links:
                response["links"] = links
        if status == 201:
            response["headers"] = {
                **_RATE_HEADERS,
                "Location": {
                    "description": "The new resource.",
                    "schema": {"type": "string"},
                    "required": True,
                },
            }
        out["responses"][str(status)] = response
    out["responses"].update(_error_responses(op))
    return out
