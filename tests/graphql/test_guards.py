"""Abuse guards (API.md section 10): depth, alias and token limits refuse a document before any
of it runs, with `request.validation_failed`; lists are capped like REST's."""

from __future__ import annotations

import httpx
import pytest

from app.graphql.guards import MAX_ALIASES, MAX_DEPTH
from app.graphql.schema import MAX_TOKENS, schema
from tests.conftest import AppFactory, client_for, new_key
from tests.graphql.conftest import gql, gql_data, single_error
from tests.rest.test_ratelimit import ratelimit

pytestmark = pytest.mark.anyio


def refused_document(response: httpx.Response, fragment: str) -> None:
    error = single_error(response)
    assert error["extensions"]["code"] == "request.validation_failed"
    assert error["extensions"]["status"] == 422
    assert fragment in error["message"], error
    assert response.json()["data"] is None


async def test_a_deep_query_is_refused(api: httpx.AsyncClient) -> None:
    inner = "externalId"
    for name in ("a", "b", "c", "d", "e", "f", "g", "h"):
        inner = f"{name} {{ {inner} }}"
    # One-item pages, so that only the depth is over its limit and not the cost.
    query = f'{{ persona(id: "x") {{ knowledge(first: 1) {{ items {{ {inner} }} }} }} }}'
    r = await gql(api, query)
    body = r.json()
    assert body["data"] is None
    messages = [e["message"] for e in body["errors"]]
    assert f"exceeds maximum operation depth of {MAX_DEPTH}" in " ".join(messages)
    assert {e["extensions"]["code"] for e in body["errors"]} == {"request.validation_failed"}


async def test_the_deepest_useful_query_passes(api: httpx.AsyncClient) -> None:
    query = "{ personas { items { knowledge { items { metadata } } } } }"
    await gql_data(api, query)


async def test_introspection_is_not_limited_by_depth(api: httpx.AsyncClient) -> None:
    query = "{ __schema { types { fields { type { ofType { ofType { ofType { name } } } } } } } }"
    data = await gql_data(api, query)
    assert data["__schema"]["types"]


async def test_many_aliases_are_refused(api: httpx.AsyncClient) -> None:
    fields = " ".join(f"v{i}: viewer {{ email }}" for i in range(MAX_ALIASES + 1))
    refused_document(await gql(api, f"{{ {fields} }}"), f"Allowed: {MAX_ALIASES}")
    fields = " ".join(f"v{i}: viewer {{ email }}" for i in range(MAX_ALIASES))
    assert len(await gql_data(api, f"{{ {fields} }}")) == MAX_ALIASES


async def test_a_huge_document_is_refused_and_charged_once(make_app: AppFactory) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        padding = " ".join("__typename" for _ in range(MAX_TOKENS))
        r = await gql(api, f"{{ {padding} }}")
        refused_document(r, f"more than {MAX_TOKENS} tokens")
        assert ratelimit(r)[:2] == ("reads", 599)


async def test_big_inputs_go_in_variables(api: httpx.AsyncClient) -> None:
    items = [{"externalId": f"doc{i}", "content": f"Document number {i}."} for i in range(300)]
    data = await gql_data(
        api,
        "mutation($items: [KnowledgeDocItemInput!]!) "
        "{ upsertKnowledgeDocs(items: $items) { summary { created } } }",
        {"items": items},
    )
    assert data["upsertKnowledgeDocs"]["summary"]["created"] == 300


@pytest.mark.parametrize("first", [0, -1, 201])
async def test_pages_are_capped(api: httpx.AsyncClient, first: int) -> None:
    for query in (
        f"{{ knowledgeDocs(first: {first}) {{ total }} }}",
        f"{{ personas(first: {first}) {{ total }} }}",
    ):
        error = single_error(await gql(api, query))
        assert error["extensions"]["code"] == "request.validation_failed"
        assert error["extensions"]["errors"][0]["pointer"] == "/first"


async def test_nested_pages_are_capped(api: httpx.AsyncClient) -> None:
    await api.post("/api/personas", json={"name": "Ava"})
    error = single_error(
        await gql(api, "{ personas { items { knowledge(first: 201) { total } } } }")
    )
    assert error["extensions"]["code"] == "request.validation_failed"
    assert error["path"] == ["personas", "items", 0, "knowledge"]


def test_extensions_are_factories_not_shared_instances() -> None:
    from strawberry.extensions import SchemaExtension

    assert schema.extensions
    assert not any(isinstance(e, SchemaExtension) for e in schema.extensions)
    made = [factory() for factory in schema.extensions]
    again = [factory() for factory in schema.extensions]
    assert all(a is not b for a, b in zip(made, again, strict=True))
