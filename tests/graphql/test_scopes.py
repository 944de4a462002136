"""Restricted keys and tenant tokens through GraphQL (API.md section 12): each field needs the
scope of its REST twin and is refused on its own, with the REST code; persona restrictions and a
token's forced metadata hold as in REST, because the same services apply them."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import GraphQLObjectType
from starlette.applications import Starlette

from app.client import Client
from app.graphql.schema import schema
from app.graphql.scopes import FIELD_SCOPES
from app.models import SCOPES
from tests.conftest import client_for
from tests.graphql.conftest import gql, gql_data, single_error
from tests.rest.test_scopes import restricted, seed

pytestmark = pytest.mark.anyio

#: One operation per scope, each selecting only fields of that scope.
CALLS: dict[str, str] = {
    "docs:read": '{ knowledgeDocs { total } knowledgeDoc(externalId: "doc-a") { title } '
    "knowledgeChanges { hasMore } }",
    "docs:write": 'mutation { upsertKnowledgeDoc(externalId: "doc-x", input: {content: "x"}) '
    "{ status } }",
    "personas:read": "{ personas { total } }",
    "personas:write": 'mutation { createPersona(input: {name: "x"}) { id } }',
    "search": '{ search(query: "gardening") { results { externalId } } }',
    "usage:read": "{ viewer { email } plan { status } usage { periodStart } }",
}


def test_every_root_field_has_a_scope() -> None:
    graphql = schema._schema
    roots = [graphql.query_type, graphql.mutation_type]
    for root in roots:
        assert root is not None
        for field in root.fields:
            assert FIELD_SCOPES.get((root.name, field)) in SCOPES, (root.name, field)
    for (type_name, field), scope in FIELD_SCOPES.items():
        named = graphql.get_type(type_name)
        assert isinstance(named, GraphQLObjectType) and field in named.fields, (type_name, field)
        assert scope in SCOPES


def insufficient(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e for e in body.get("errors", []) if e["extensions"]["code"] == "auth.insufficient_scope"
    ]


async def test_each_field_is_refused_outside_its_scope(app: Starlette) -> None:
    await seed(app)
    for scope in CALLS:
        key = (await restricted(app, scopes=[scope])).key
        async with client_for(app, **{"X-Api-Key": key}) as api:
            for other, query in CALLS.items():
                r = await gql(api, query)
                assert r.status_code == 200, r.text
                body = r.json()
                if other == scope:
                    assert "errors" not in body, (scope, body)
                else:
                    refused = insufficient(body)
                    assert refused and len(refused) == len(body["errors"]), (scope, other, body)
                    assert all(e["extensions"]["status"] == 403 for e in refused)
                    assert body["data"] is None  # non-null root fields: nothing to show


async def test_a_refused_field_does_not_run(app: Starlette) -> None:
    """A mutation outside the scopes writes nothing."""
    await seed(app)
    reader = (await restricted(app, scopes=["personas:read"])).key
    async with client_for(app, **{"X-Api-Key": reader}) as api:
        r = await gql(api, CALLS["personas:write"])
        assert single_error(r)["extensions"]["code"] == "auth.insufficient_scope"
        assert (await gql_data(api, "{ personas { total } }"))["personas"]["total"] == 2


async def test_a_persona_restricted_key_sees_its_personas_only(app: Starlette) -> None:
    a, b = await seed(app)
    key = (await restricted(app, scopes=["search", "personas:read"], persona_ids=[a])).key
    async with client_for(app, **{"X-Api-Key": key}) as api:
        listed = (await gql_data(api, "{ personas { total items { id } } }"))["personas"]
        assert listed == {"total": 1, "items": [{"id": a}]}
        one = await gql_data(api, "query($id: ID!) { persona(id: $id) { id name } }", {"id": a})
        assert one["persona"]["id"] == a
        r = await gql(api, "query($id: ID!) { persona(id: $id) { id } }", {"id": b})
        assert single_error(r)["extensions"]["code"] == "auth.insufficient_scope"
        # The attached documents are docs:read, which the key lacks; their ids are not.
        r = await gql(
            api,
            "query($id: ID!) { persona(id: $id) { knowledgeExternalIds knowledge { total } } }",
            {"id": a},
        )
        assert single_error(r)["extensions"]["code"] == "auth.insufficient_scope"
        ids = await gql_data(
            api, "query($id: ID!) { persona(id: $id) { knowledgeExternalIds } }", {"id": a}
        )
        assert ids["persona"]["knowledgeExternalIds"] == ["doc-a"]
        search = '{ search(query: "gardening", mode: KEYWORD) { results { externalId } } }'
        hits = (await gql_data(api, search))["search"]["results"]
        assert [h["externalId"] for h in hits] == ["doc-a"]
        r = await gql(
            api,
            'query($p: ID!) { search(query: "gardening", personaId: $p) { mode } }',
            {"p": b},
        )
        assert single_error(r)["extensions"]["code"] == "auth.insufficient_scope"


async def test_a_tenant_token_searches_and_reads_its_personas_and_nothing_else(
    app: Starlette,
) -> None:
    a, _ = await seed(app)
    key = await restricted(app, scopes=["search", "personas:read"])
    assert key.signing_secret
    token = Client.mint_token(
        key=key.key, signing_secret=key.signing_secret, persona_ids=[a], sub="visitor-1"
    )
    async with client_for(app, **{"Authorization": f"Bearer {token}"}) as api:
        search = '{ search(query: "gardening", mode: KEYWORD) { results { externalId } } }'
        hits = (await gql_data(api, search))["search"]["results"]
        assert [h["externalId"] for h in hits] == ["doc-a"]
        persona = await gql_data(
            api,
            "query($id: ID!) { persona(id: $id) { name greeting description } }",
            {"id": a},
        )
        assert persona["persona"]["name"] == "a"
        for scope, query in CALLS.items():
            if scope in ("search", "personas:read"):
                continue
            body = (await gql(api, query)).json()
            assert insufficient(body) and len(insufficient(body)) == len(body["errors"]), body
