"""Abuse guards (API.md section 10): depth, alias and token limits refuse a document before any
of it runs, with `request.validation_failed`, and a cost limit with `request.query_too_costly`;
every fragment is measured once however often it is spread; lists are capped like REST's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import parse

from app.graphql.document_limits import MAX_ALIASES, MAX_DEPTH, SATURATED, DocumentMeasure
from app.graphql.schema import MAX_TOKENS, schema
from app.settings import Settings
from tests.conftest import AppFactory, client_for, new_key
from tests.graphql.conftest import gql, gql_data, single_error
from tests.http.test_ratelimit import ratelimit

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


# --- one pass over fragments, and the cost limit ------------------------------------------------


def fragment_bomb(levels: int, leaf: str = "viewer { email }") -> str:
    """Each fragment spreads the next one twice: 2^levels copies of `leaf` once expanded."""
    fragments = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    fragments.append(f"fragment F{levels} on Query {{ {leaf} }}")
    return "{ ...F0 } " + " ".join(fragments)


def refused_for_cost(response: httpx.Response, cost: int, limit: int) -> None:
    error = single_error(response)
    assert error["extensions"]["code"] == "request.query_too_costly", error
    assert error["extensions"]["status"] == 422
    assert (error["extensions"]["cost"], error["extensions"]["limit"]) == (cost, limit)
    assert response.json()["data"] is None


async def test_a_fragment_bomb_is_refused_by_its_cost(make_app: AppFactory) -> None:
    # Expanded one spread at a time, 20 levels took 6 s of the event loop; measured once per
    # fragment it is 2^20 copies of a 2-field leaf, computed, and refused.
    app = await make_app()
    key = await new_key(app, plan="free")
    bomb = fragment_bomb(20)
    assert len(bomb) < 1024
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await gql(api, bomb)
        refused_for_cost(r, 2 * 2**20, Settings.for_tests(Path()).graphql_max_cost)
        assert ratelimit(r)[:2] == ("reads", 599)  # charged once, like any invalid document


async def test_spreads_count_as_often_as_they_are_spread(api: httpx.AsyncClient) -> None:
    # Five levels: 32 copies of one aliased field, one over the limit of 30; four levels pass
    # (execution merges the 16 copies into one field).
    refused_document(await gql(api, fragment_bomb(5, "v: viewer { email }")), "32 aliases found")
    data = await gql_data(api, fragment_bomb(4, "v: viewer { email }"))
    assert data["v"]["email"]
    # Sixty levels would be 2^60 copies: the count saturates rather than growing without end.
    bomb = await gql(api, fragment_bomb(60, "v: viewer { email }"))
    messages = " ".join(e["message"] for e in bomb.json()["errors"])
    assert f"{SATURATED} aliases found" in messages
    assert {e["extensions"]["code"] for e in bomb.json()["errors"]} == {
        "request.validation_failed",
        "request.query_too_costly",
    }


async def test_depth_adds_up_through_fragments(api: httpx.AsyncClient) -> None:
    # Eleven fragments, each one level deeper than the one before.
    fragments = [f"fragment L{i} on Query {{ a{i} {{ ...L{i + 1} }} }}" for i in range(11)]
    fragments.append("fragment L11 on Query { viewer { email } }")
    r = await gql(api, "{ ...L0 } " + " ".join(fragments))
    messages = [e["message"] for e in r.json()["errors"]]
    assert f"'anonymous' exceeds maximum operation depth of {MAX_DEPTH}" in messages


@pytest.mark.parametrize(
    "document",
    [
        "{ ...F } fragment F on Query { ...F }",
        "{ ...F } fragment F on Query { viewer { email } ...G } fragment G on Query { ...F ...F }",
        "{ ...Missing }",
        "{ ... on Nope { x } } fragment F on Nope { ...F }",
    ],
)
async def test_cycles_and_unknown_fragments_are_invalid_not_hung(
    api: httpx.AsyncClient, document: str
) -> None:
    error = (await gql(api, document)).json()["errors"][0]
    assert error["extensions"]["code"] == "request.validation_failed", error


async def test_a_long_chain_of_fragments_is_refused_not_a_crash(api: httpx.AsyncClient) -> None:
    # Hundreds of fragments in a row are deeper than Python's recursion limit if walked
    # recursively; graphql-core aborts such a document, and the guards must not fail first.
    n = 500
    chain = " ".join(f"fragment a{i} on Query {{ ...a{i + 1} }}" for i in range(n))
    r = await gql(api, f"{{ ...a0 }} {chain} fragment a{n} on Query {{ viewer {{ email }} }}")
    error = single_error(r)
    assert error["extensions"]["code"] == "request.validation_failed"
    assert error["message"] == "Validation aborted."


@pytest.mark.parametrize(
    ("query", "variables", "cost"),
    [
        # 1 for the page, then per item: `items` and `externalId` (the page default: 50).
        ("{ knowledgeDocs { items { externalId } } }", None, 1 + 50 * 2),
        ("{ knowledgeDocs(first: 50) { items { externalId } } }", None, 101),
        ("{ knowledgeDocs(first: 51) { items { externalId } } }", None, 103),
        ("query($n: Int!) { knowledgeDocs(first: $n) { items { externalId } } }", {"n": 51}, 103),
        ("query($n: Int!) { knowledgeDocs(first: $n) { items { externalId } } }", {"n": 51.0}, 103),
        ("query($n: Int! = 51) { knowledgeDocs(first: $n) { items { externalId } } }", {}, 103),
        ('{ search(query: "x", k: 50) { results { text } } }', None, 101),
        ('{ search(query: "x", k: 26) { results { text title } } }', None, 1 + 26 * 3),
        # Nested pages multiply: 1 + 2 * (items, knowledge, 25 * (items, externalId)).
        (
            "{ personas(first: 2) { items { knowledge(first: 25) { items { externalId } } } } }",
            None,
            1 + 2 * (1 + 1 + 25 * 2),
        ),
        # A fragment spread twice counts twice.
        (
            "{ ...P ...P } fragment P on Query { knowledgeDocs(first: 25) { items { externalId } } }",
            None,
            2 * (1 + 25 * 2),
        ),
    ],
)
async def test_the_cost_of_pages(
    make_app: AppFactory, query: str, variables: dict[str, Any] | None, cost: int
) -> None:
    app = await make_app(graphql_max_cost=101)
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await gql(api, query, variables)
        if cost <= 101:
            assert "errors" not in r.json(), r.json()
        else:
            refused_for_cost(r, cost, 101)


async def test_out_of_range_pages_are_refused_as_rest_refuses_them(make_app: AppFactory) -> None:
    # The resolver refuses them before loading an item, so the cost does not count them and
    # the answer is REST's `request.validation_failed`, not a cost refusal.
    app = await make_app(graphql_max_cost=101)
    key = await new_key(app, plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        for first in ("201", "0", "-5", "99999999999999999999999"):
            query = f"{{ knowledgeDocs(first: {first}) {{ items {{ externalId title }} }} }}"
            error = single_error(await gql(api, query))
            assert error["extensions"]["code"] == "request.validation_failed", error
            assert "cost" not in error["extensions"]


async def test_the_default_limit_takes_the_default_nested_page(api: httpx.AsyncClient) -> None:
    # 50 personas x 50 documents: one field per document fits (5,101), three do not (10,101).
    await gql_data(api, "{ personas { items { knowledge { items { externalId } } } } }")
    r = await gql(
        api, "{ personas { items { knowledge { items { externalId title metadata } } } } }"
    )
    refused_for_cost(r, 1 + 50 * (2 + 50 * 4), 10_000)


async def test_a_costly_mutation_runs_none_of_its_fields(api: httpx.AsyncClient) -> None:
    one = (
        'createPersona(input: {name: "Ava"}) { knowledge(first: 200) '
        "{ items { externalId title content metadata charCount chunkCount } } }"
    )
    fields = " ".join(f"p{i}: {one}" for i in range(8))
    r = await gql(api, f"mutation {{ {fields} }}")
    refused_for_cost(r, 8 * (1 + 1 + 200 * 7), 10_000)
    assert (await api.get("/api/personas")).json()["total"] == 0


@pytest.mark.parametrize(("variables", "cost"), [({}, 1 + 60 * 2), ({"n": 7}, 1 + 7 * 2)])
def test_a_variable_counts_with_the_largest_page_it_may_be(
    variables: dict[str, Any], cost: int
) -> None:
    # Two operations give `$n` different defaults; one of them (500) is out of range, so the
    # page it asks for is refused, and the other (60) is what may run.
    document = parse(
        "query A($n: Int! = 60) { knowledgeDocs(first: $n) { items { externalId } } } "
        "query B($n: Int! = 500) { knowledgeDocs(first: $n) { items { externalId } } }"
    )
    measure = DocumentMeasure(schema._schema, document, variables)
    assert [measure.operation(o).cost for o in measure.operations] == [cost, cost]


def docs_51(directives: str = "") -> str:
    """A page of 51 documents (cost 103), with `directives`."""
    return f"knowledgeDocs(first: 51) {directives} {{ items {{ externalId }} }}"


DOCS_51 = docs_51()


@pytest.mark.parametrize(
    ("query", "variables", "cost"),
    [
        (f"{{ a: {DOCS_51} b: {DOCS_51} }}", {}, 2 * 103),
        # Left out by a literal, a variable or a variable's default: it costs nothing.
        (f"{{ a: {DOCS_51} b: {docs_51('@skip(if: true)')} }}", {}, 103),
        (f"{{ a: {docs_51('@include(if: false)')} b: {DOCS_51} }}", {}, 103),
        (f"query($on: Boolean!) {{ a: {DOCS_51} b: {docs_51('@include(if: $on)')} }}", {"on": False}, 103),
        (f"query($on: Boolean!) {{ a: {DOCS_51} b: {docs_51('@include(if: $on)')} }}", {"on": True}, 2 * 103),
        (f"query($off: Boolean = true) {{ a: {DOCS_51} b: {docs_51('@skip(if: $off)')} }}", {}, 103),
        # Through an inline fragment, a fragment spread, or deeper in a selection.
        (f"{{ a: {DOCS_51} ... @skip(if: true) {{ b: {DOCS_51} }} }}", {}, 103),
        (f"{{ a: {DOCS_51} ...F @skip(if: true) }} fragment F on Query {{ b: {DOCS_51} }}", {}, 103),
        ("{ knowledgeDocs(first: 51) { items { externalId title @skip(if: true) } } }", {}, 103),
        # Not certain (no value; not a Boolean, which coercion refuses): it counts.
        (f"query($on: Boolean!) {{ a: {DOCS_51} b: {docs_51('@include(if: $on)')} }}", {}, 2 * 103),
        (f"query($on: Boolean!) {{ a: {DOCS_51} b: {docs_51('@include(if: $on)')} }}", {"on": 0}, 2 * 103),
    ],
)  # fmt: skip
def test_left_out_selections_cost_nothing(query: str, variables: dict[str, Any], cost: int) -> None:
    measure = DocumentMeasure(schema._schema, parse(query), variables)
    (operation,) = measure.operations
    assert measure.operation(operation).cost == cost


async def test_a_skipped_costly_search_is_not_refused(make_app: AppFactory) -> None:
    app = await make_app(graphql_max_cost=101)
    key = await new_key(app, plan="unlimited")
    search = 'search(query: "x", k: 50) @include(if: $on) { results { text title } }'  # 151
    query = f"query($on: Boolean!) {{ viewer {{ email }} s: {search} }}"
    async with client_for(app, **{"X-Api-Key": key}) as api:
        data = await gql_data(api, query, {"on": False})
        assert data == {"viewer": {"email": "owner@example.com"}}
        refused_for_cost(await gql(api, query, {"on": True}), 1 + 1 + 151, 101)
