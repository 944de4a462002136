"""Rate limits through GraphQL (API.md sections 8 and 10): one charge per request, to `writes`
for a mutation (a unit per root field), `search` for a query selecting `search` (a unit per
search field), else `reads`; the same window and headers as REST; over the limit, nothing runs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.graphql.charging import classify
from tests.conftest import AppFactory, client_for, new_key
from tests.graphql.conftest import gql, gql_data, single_error
from tests.http.test_ratelimit import policy, ratelimit, small_plan

pytestmark = pytest.mark.anyio

CREATE = 'mutation { createPersona(input: {name: "Ava"}) { id } }'


@pytest.mark.parametrize(
    ("query", "operation_name", "expected"),
    [
        ("{ viewer { email } }", None, "reads"),
        ('{ search(query: "x") { mode } }', None, "search"),
        ('{ viewer { email } s: search(query: "x") { mode } }', None, "search"),
        ('query { ...F } fragment F on Query { search(query: "x") { mode } }', None, "search"),
        ('query { ... on Query { search(query: "x") { mode } } }', None, "search"),
        ('mutation { deletePersona(id: "x") { deleted } }', None, "writes"),
        (
            'query A { viewer { email } } mutation B { deletePersona(id: "x") { deleted } }',
            "B",
            "writes",
        ),
        (
            'query A { viewer { email } } mutation B { deletePersona(id: "x") { deleted } }',
            "A",
            "reads",
        ),
        # Nothing to execute, or not GraphQL at all: charged as a read.
        ("query A { viewer { email } } mutation B { x }", None, "reads"),
        ("{ viewer { email", None, "reads"),
        ("", None, "reads"),
        ("{ ...F } fragment F on Query { ...F }", None, "reads"),
    ],
)
def test_the_policy_of_an_operation(query: str, operation_name: str | None, expected: str) -> None:
    assert classify(query, operation_name).policy == expected


@pytest.mark.parametrize(
    ("query", "cost"),
    [
        ("{ viewer { email } plan { status } }", 1),
        ('mutation { deletePersona(id: "x") { deleted } }', 1),
        (
            'mutation { a: deletePersona(id: "x") { deleted } b: deletePersona(id: "y") { deleted } }',
            2,
        ),
        (
            'mutation { ...M __typename } fragment M on Mutation { a: deletePersona(id: "x") '
            '{ deleted } b: deleteKnowledgeDoc(externalId: "y") { deleted } }',
            2,
        ),
    ],
)
def test_each_mutation_field_is_one_write(query: str, cost: int) -> None:
    assert classify(query, None).cost == cost


SEARCH = 'search(query: "x") { mode }'


@pytest.mark.parametrize(
    ("query", "cost"),
    [
        (f"{{ {SEARCH} }}", 1),
        (f"{{ viewer {{ email }} a: {SEARCH} b: {SEARCH} }}", 2),
        (f"{{ {' '.join(f's{i}: {SEARCH}' for i in range(30))} }}", 30),
        # Execution merges fields of one response key: the same search twice runs once.
        (f"{{ {SEARCH} {SEARCH} }}", 1),
        (f"{{ ...S ...S a: {SEARCH} }} fragment S on Query {{ {SEARCH} b: {SEARCH} }}", 3),
        (
            f"{{ ... on Query {{ a: {SEARCH} }} ...S }} fragment S on Query {{ ...S b: {SEARCH} }}",
            2,
        ),
    ],
)
def test_each_search_field_is_one_search(query: str, cost: int) -> None:
    kind = classify(query, None)
    assert (kind.policy, kind.cost) == ("search", cost)


def searching(directives: str) -> str:
    """`SEARCH` with `directives` (which stand before a field's selection set)."""
    return f'search(query: "x") {directives} {{ mode }}'


@pytest.mark.parametrize(
    ("query", "variables", "policy", "cost"),
    [
        # Left out by a literal: not charged, and without a search the query is a read.
        (f"{{ {searching('@skip(if: true)')} }}", None, "reads", 1),
        (f"{{ a: {searching('@include(if: false)')} b: {searching('@skip(if: false)')} }}", None, "search", 1),
        (f"{{ a: {searching('@skip(if: true) @include(if: true)')} b: {SEARCH} }}", None, "search", 1),
        # Through a fragment spread or an inline fragment that is left out.
        (
            f"{{ ...S @skip(if: true) b: {SEARCH} }} fragment S on Query {{ a: {SEARCH} }}",
            None,
            "search",
            1,
        ),
        (f"{{ ... @include(if: false) {{ a: {SEARCH} }} b: {SEARCH} }}", None, "search", 1),
        # The same response key, left out once and run once: one search.
        (f"{{ s: {searching('@skip(if: true)')} s: {SEARCH} }}", None, "search", 1),
        # A variable's value, else its default, decides.
        (f"query($on: Boolean!) {{ a: {searching('@include(if: $on)')} b: {SEARCH} }}", {"on": False}, "search", 1),
        (f"query($on: Boolean!) {{ a: {searching('@include(if: $on)')} b: {SEARCH} }}", {"on": True}, "search", 2),
        (f"query($off: Boolean = true) {{ a: {searching('@skip(if: $off)')} b: {SEARCH} }}", {}, "search", 1),
        (f"query($off: Boolean = true) {{ a: {searching('@skip(if: $off)')} b: {SEARCH} }}", {"off": False}, "search", 2),
        # Not certain (no value; not a Boolean, which coercion refuses): charged.
        (f"query($on: Boolean!) {{ a: {searching('@include(if: $on)')} b: {SEARCH} }}", {}, "search", 2),
        (f"query($on: Boolean!) {{ a: {searching('@include(if: $on)')} b: {SEARCH} }}", {"on": "no"}, "search", 2),
        # Mutations alike: a left-out root field is not a write.
        (
            'mutation { a: deletePersona(id: "x") @skip(if: true) { deleted } '
            'b: deletePersona(id: "y") { deleted } c: deletePersona(id: "z") { deleted } }',
            None,
            "writes",
            2,
        ),
    ],
)  # fmt: skip
def test_left_out_fields_are_not_charged(
    query: str, variables: dict[str, Any] | None, policy: str, cost: int
) -> None:
    kind = classify(query, None, variables)
    assert (kind.policy, kind.cost) == (policy, cost)


async def test_skipped_searches_are_not_charged(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=10)})  # 10 searches
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        # Thirty searches of which three run: charged three, and only those three answer.
        fields = " ".join(
            f"s{i}: " + searching("" if i % 10 == 0 else "@include(if: $all)") for i in range(30)
        )
        query = f"query($all: Boolean!) {{ {fields} }}"
        r = await gql(api, query, {"all": False})
        assert sorted(r.json()["data"]) == ["s0", "s10", "s20"]
        assert ratelimit(r)[:2] == ("search", 7)
        # All thirty would not fit what is left: refused whole, nothing taken.
        r = await gql(api, query, {"all": True})
        assert single_error(r, 429)["extensions"]["code"] == "limits.rate_exceeded"
        assert ratelimit(r)[:2] == ("search", 7)


async def test_aliased_searches_are_charged_each(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=10)})  # 10 searches
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        # Thirty aliased searches once cost one unit; now they are refused whole, before any
        # of them runs, when the window cannot hold them all.
        thirty = "{ " + " ".join(f"s{i}: {SEARCH}" for i in range(30)) + " }"
        r = await gql(api, thirty)
        error = single_error(r, 429)
        assert error["extensions"]["code"] == "limits.rate_exceeded"
        assert "data" not in r.json()
        assert ratelimit(r)[:2] == ("search", 10)  # nothing was taken from the window
        five = "{ " + " ".join(f"s{i}: {SEARCH}" for i in range(5)) + " }"
        r = await gql(api, five)
        assert len(r.json()["data"]) == 5
        assert ratelimit(r)[:2] == ("search", 5)
        r = await gql(api, five)
        assert ratelimit(r)[:2] == ("search", 0)
        single_error(await gql(api, f"{{ {SEARCH} }}"), 429)


async def test_aliased_mutations_are_charged_each(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=3)})
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        two = 'mutation { a: deletePersona(id: "x") { deleted } b: deletePersona(id: "y") { deleted } }'
        r = await gql(api, two)
        assert ratelimit(r)[:2] == ("writes", 1)
        r = await gql(api, two)  # two more do not fit in the one left: refused whole
        assert r.status_code == 429
        assert r.json()["errors"][0]["extensions"]["code"] == "limits.rate_exceeded"


async def test_each_request_carries_the_headers_of_its_policy(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=10, reads=20)})
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await gql(api, "{ viewer { email } plan { status } usage { periodStart } }")
        assert policy(r) == ("reads", 20)
        assert ratelimit(r)[:2] == ("reads", 19)  # three fields, one charge
        r = await gql(api, '{ viewer { email } search(query: "anything") { mode } }')
        assert policy(r) == ("search", 10)
        assert ratelimit(r)[:2] == ("search", 9)
        r = await gql(api, CREATE)
        assert policy(r) == ("writes", 10)
        assert ratelimit(r)[:2] == ("writes", 9)
        # An invalid document is charged too, like a REST request that fails validation.
        r = await gql(api, "{ nope }")
        assert ratelimit(r)[:2] == ("reads", 18)
        # And an error while executing still answers with the headers.
        r = await gql(api, '{ knowledgeDoc(externalId: "zz") { title } }')
        single_error(r)
        assert ratelimit(r)[:2] == ("reads", 17)


async def test_over_the_limit_nothing_runs(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=2)})
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        for _ in range(2):
            await gql_data(api, CREATE)
        r = await gql(api, CREATE)
        error = single_error(r, 429)
        assert error["extensions"]["code"] == "limits.rate_exceeded"
        assert error["extensions"]["status"] == 429
        assert "data" not in r.json()
        retry_after = int(r.headers["retry-after"])
        _, remaining, t = ratelimit(r)
        assert remaining == 0 and retry_after >= t >= 1
        assert policy(r) == ("writes", 2)
        # Reads have their own window: the third persona was never made.
        data = await gql_data(api, "{ personas { total } }")
        assert data["personas"]["total"] == 2


async def test_rest_and_graphql_share_one_window(make_app: AppFactory) -> None:
    app = await make_app(plans={"small": small_plan("small", writes=3)})
    key = await new_key(app, plan="small")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        r = await api.post("/api/personas", json={"name": "Rest"})
        assert ratelimit(r)[:2] == ("writes", 2)
        r = await gql(api, CREATE)
        assert ratelimit(r)[:2] == ("writes", 1)
        r = await api.delete("/api/personas/per_01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert ratelimit(r)[:2] == ("writes", 0)
        single_error(await gql(api, CREATE), 429)
        assert (await api.post("/api/personas", json={"name": "Late"})).status_code == 429


async def test_graphql_requests_count_in_usage(app: Starlette, api: httpx.AsyncClient) -> None:
    query = "{ usage { usage { requests { used } } } }"
    first: Any = await gql_data(api, query)
    await gql_data(api, "{ viewer { email } }")
    second: Any = await gql_data(api, query)
    used = [d["usage"]["usage"]["requests"]["used"] for d in (first, second)]
    assert used[1] == used[0] + 2
