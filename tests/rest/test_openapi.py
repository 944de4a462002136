"""The served OpenAPI document: a valid OpenAPI 3.1 document that says exactly what the server
enforces. Each rule the document states is tried against the server through HTTP, both ways."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from app.errors import ERRORS_BY_CODE
from tests.conftest import assert_problem

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
PERSONAS = "/api/personas"


@pytest.fixture
async def spec(anon: httpx.AsyncClient) -> dict[str, Any]:
    r = await anon.get("/openapi.json")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for ops in spec["paths"].values() for op in ops.values()}


async def test_openapi_spec_validator_accepts_it(spec: dict[str, Any]) -> None:
    validate(spec)  # raises on any violation, e.g. a `default: null` on a non-nullable string


async def test_every_error_code_exists_with_its_status(spec: dict[str, Any]) -> None:
    for op in operations(spec).values():
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            assert response["x-error-codes"], (op["operationId"], status)
            for code in response["x-error-codes"]:
                assert ERRORS_BY_CODE[code].status == int(status), (op["operationId"], code)
            if status in ("429", "503"):
                assert response["headers"]["Retry-After"]["required"] is True


async def test_statuses_are_those_each_operation_can_answer(spec: dict[str, Any]) -> None:
    ops = operations(spec)

    def statuses(operation_id: str) -> set[str]:
        return {s for s in ops[operation_id]["responses"] if int(s) >= 400}

    # No input at all: nothing to refuse but the caller (403: a restricted key, API.md 12).
    assert statuses("getSubscription") == {"401", "403", "429", "503"}
    # A path value but no validation of it: 404 only.
    assert statuses("getPersona") == {"401", "403", "404", "429", "503"}
    # A body: how it is read (400, 413, 415) and what it says (422).
    assert {"400", "413", "415", "422"} <= statuses("createPersona")
    assert ops["listKnowledgeDocs"]["responses"]["400"]["x-error-codes"] == [
        "request.invalid_cursor"
    ]
    assert (
        "request.malformed_json" in ops["upsertKnowledgeDocs"]["responses"]["400"]["x-error-codes"]
    )
    attach = ops["setPersonaKnowledge"]
    assert "knowledge.unknown_external_ids" in attach["responses"]["422"]["x-error-codes"]
    assert "knowledge.unknown_external_ids" in attach["description"]


async def test_links_lead_from_writes_to_the_resource(spec: dict[str, Any]) -> None:
    ops = operations(spec)

    def links(operation_id: str, status: str) -> dict[str, str]:
        found = ops[operation_id]["responses"][status]["links"]
        return {link["operationId"]: name for name, link in found.items()}

    assert {"getKnowledgeDoc", "deleteKnowledgeDoc"} <= set(links("upsertKnowledgeDoc", "201"))
    assert {"getKnowledgeDoc", "deleteKnowledgeDoc"} <= set(links("upsertKnowledgeDoc", "200"))
    assert {"getKnowledgeDoc", "deleteKnowledgeDoc"} <= set(links("upsertKnowledgeDocs", "200"))
    assert {"getPersona", "updatePersona", "deletePersona", "setPersonaKnowledge"} <= set(
        links("createPersona", "201")
    )
    # Every link names a real operation and fills exactly its path parameters.
    for op in ops.values():
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                target = ops[link["operationId"]]
                path_params = {p["name"] for p in target["parameters"] if p["in"] == "path"}
                assert set(link["parameters"]) == path_params


def _content_pattern(spec: dict[str, Any]) -> str:
    pattern: str = spec["components"]["schemas"]["KnowledgeDocBody"]["properties"]["content"][
        "pattern"
    ]
    return pattern


@pytest.mark.parametrize(
    "content",
    [" ", "\t\n", "\u3000\u00a0", "\x1c\x1d\x85", "\u2028 \u2029", " x ", "\u200b", "é", "0"],
)
async def test_blank_content_is_what_the_pattern_says(
    api: httpx.AsyncClient, spec: dict[str, Any], content: str
) -> None:
    """The pattern (in the ECMAScript subset every JSON Schema validator reads the same way)
    accepts exactly the content the server accepts."""
    documented = re.search(_content_pattern(spec), content) is not None
    r = await api.put(f"{DOCS}/by-external-id/blank-test", json={"content": content})
    assert (r.status_code in (200, 201)) is documented, r.text
    search = await api.post("/api/knowledge/search", json={"query": content, "mode": "keyword"})
    assert (search.status_code == 200) is documented, search.text


async def test_external_id_with_a_trailing_newline_is_refused(api: httpx.AsyncClient) -> None:
    """`^...$` lets a trailing newline through in Python, not in the document's pattern."""
    r = await api.put(DOCS, json={"items": [{"external_id": "a\n", "content": "x"}]})
    assert_problem(r, 422, "knowledge.invalid_external_id")
    r = await api.get(f"{DOCS}/by-external-id/a%0A")
    assert_problem(r, 422, "knowledge.invalid_external_id")


async def test_path_parameters_carry_the_external_id_pattern(spec: dict[str, Any]) -> None:
    op = operations(spec)["getKnowledgeDoc"]
    (param,) = op["parameters"]
    assert param["schema"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"


@pytest.mark.parametrize("path", [DOCS, PERSONAS])
async def test_an_empty_cursor_is_the_first_page(api: httpx.AsyncClient, path: str) -> None:
    first = await api.get(path)
    empty = await api.get(path, params={"cursor": ""})
    assert empty.status_code == 200, empty.text
    assert empty.json() == first.json()


async def test_updated_since_is_rfc3339_with_an_offset(
    api: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    param = next(
        p
        for p in operations(spec)["listKnowledgeDocs"]["parameters"]
        if p["name"] == "updated_since"
    )
    assert param["schema"] == {"type": "string", "format": "date-time"}
    await api.put(f"{DOCS}/by-external-id/a", json={"content": "x"})
    # What `format: date-time` does not allow, the server refuses.
    for bad in ("0.5", "1700000000", "2026-01-01", "2026-01-01T00:00:00", "yesterday"):
        r = await api.get(DOCS, params={"updated_since": bad})
        assert_problem(r, 422, "request.validation_failed")
    # And what it allows, the server takes, up to the ends of the calendar.
    for good, total in (
        ("0001-01-01T00:00:00+05:00", 1),
        ("2000-01-01t00:00:00.5z", 1),
        ("9999-12-31T23:59:59-05:00", 0),
    ):
        r = await api.get(DOCS, params={"updated_since": good})
        assert r.status_code == 200, r.text
        assert r.json()["total"] == total, good


async def test_null_where_only_leaving_out_is_allowed(
    api: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    """PersonaUpdate's `name` has no null default in the document, and null is refused."""
    name = spec["components"]["schemas"]["PersonaUpdate"]["properties"]["name"]
    assert "default" not in name and name["type"] == "string"
    created = (await api.post(PERSONAS, json={"name": "Ava"})).json()
    r = await api.patch(f"{PERSONAS}/{created['id']}", json={"name": None})
    assert_problem(r, 422, "request.validation_failed")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"query": "lamp", "k": True}, 422),
        ({"query": "lamp", "k": "3"}, 422),
        ({"query": "lamp", "k": 3.5}, 422),
        ({"query": "lamp", "k": 3.0}, 200),  # an integer, to JSON Schema
        ({"query": "lamp", "mode": 1}, 422),
        ({"query": ["lamp"]}, 422),
    ],
)
async def test_json_types_are_the_documented_ones(
    api: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    """Request bodies are validated strictly: pydantic's lax mode took `true` for 1."""
    r = await api.post("/api/knowledge/search", json=body)
    assert r.status_code == status, r.text
