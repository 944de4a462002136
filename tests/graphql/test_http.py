"""The `/graphql` endpoint over HTTP: authentication, request-level refusals, GET, GraphiQL,
error extensions. A refusal before execution has its own HTTP status; what GraphQL decides is
200 with `errors` (docs/decisions.md, "GraphQL")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from app.models import PERSONA_KNOWLEDGE_MAX
from app.services import accounts, subscription
from tests.conftest import AppFactory, client_for, new_key
from tests.graphql.conftest import GRAPHQL, gql, gql_data, single_error

pytestmark = pytest.mark.anyio

VIEWER = "{ viewer { email plan { id name } } }"


def refused(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """A request refused before execution: its status, `errors` only, no `data`."""
    error = single_error(response, status)
    assert "data" not in response.json()
    assert response.headers["content-type"].startswith("application/json")
    assert error["extensions"]["code"] == code
    assert error["extensions"]["status"] == status
    return error


async def test_viewer(api: httpx.AsyncClient) -> None:
    data = await gql_data(api, VIEWER)
    assert data == {
        "viewer": {"email": "owner@example.com", "plan": {"id": "unlimited", "name": "Unlimited"}}
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Api-Key": "pa_live_" + "x" * 40},  # well-formed, unknown
        {"X-Api-Key": "nope"},
        {"X-Api-Key": ""},
    ],
)
async def test_without_a_valid_key_nothing_runs(app: Starlette, headers: dict[str, str]) -> None:
    async with client_for(app, **headers) as client:
        r = await gql(client, VIEWER)
        error = refused(r, 401, "auth.unauthorized")
        assert error["message"] == "A valid X-Api-Key header is required."
        assert "ratelimit" not in r.headers
        # Mutations too, and nothing is written.
        r = await gql(client, 'mutation { createPersona(input: {name: "X"}) { id } }')
        refused(r, 401, "auth.unauthorized")


async def test_a_disabled_key_is_refused(app: Starlette) -> None:
    key = await new_key(app)
    await accounts.disable_key(runtime=app.state.runtime, prefix=key[:12])
    async with client_for(app, **{"X-Api-Key": key}) as client:
        refused(await gql(client, VIEWER), 401, "auth.unauthorized")


async def test_failed_authentication_is_limited_per_address(anon: httpx.AsyncClient) -> None:
    """Wrong keys are guesses, counted per address; a request with no key is not (401 always:
    tests/http/test_ratelimit.py)."""
    wrong = {"X-Api-Key": "pa_live_" + "x" * 40}
    for _ in range(30):
        refused(
            await anon.post(GRAPHQL, json={"query": VIEWER}, headers=wrong),
            401,
            "auth.unauthorized",
        )
    r = await anon.post(GRAPHQL, json={"query": VIEWER}, headers=wrong)
    refused(r, 429, "limits.rate_exceeded")
    assert int(r.headers["retry-after"]) >= 1
    refused(await gql(anon, VIEWER), 401, "auth.unauthorized")


async def test_request_id_is_echoed_in_extensions(api: httpx.AsyncClient) -> None:
    r = await api.post(
        GRAPHQL,
        json={"query": '{ knowledgeDoc(externalId: "none") { title } }'},
        headers={"X-Request-Id": "trace-42"},
    )
    error = single_error(r)
    assert error["extensions"] == {
        "code": "knowledge.not_found",
        "status": 404,
        "request_id": "trace-42",
    }
    assert error["path"] == ["knowledgeDoc"]
    assert r.json()["data"] is None


async def test_queries_over_get(api: httpx.AsyncClient) -> None:
    r = await api.get(GRAPHQL, params={"query": VIEWER})
    assert r.status_code == 200
    assert r.json()["data"]["viewer"]["email"] == "owner@example.com"
    assert r.headers["ratelimit-policy"].startswith('"reads"')


async def test_mutations_over_get_are_refused_and_not_run(api: httpx.AsyncClient) -> None:
    r = await api.get(
        GRAPHQL, params={"query": 'mutation { createPersona(input: {name: "X"}) { id } }'}
    )
    refused(r, 405, "request.method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert (await gql_data(api, "{ personas { total } }"))["personas"]["total"] == 0


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b'{"query": ', "application/json", 400, "request.malformed_json"),
        (b"query { viewer { email } }", "text/plain", 415, "request.unsupported_media_type"),
        (b'{"variables": {}}', "application/json", 422, "request.validation_failed"),
        (
            b'{"query": "{ viewer { email } }", "variables": [1]}',
            "application/json",
            422,
            "request.validation_failed",
        ),
        (
            b'[{"query": "{ viewer { email } }"}]',
            "application/json",
            422,
            "request.validation_failed",
        ),
    ],
)
async def test_bodies_that_are_not_a_graphql_request(
    api: httpx.AsyncClient, content: bytes, content_type: str, status: int, code: str
) -> None:
    r = await api.post(GRAPHQL, content=content, headers={"Content-Type": content_type})
    refused(r, status, code)


async def test_other_methods(api: httpx.AsyncClient) -> None:
    r = await api.put(GRAPHQL, json={"query": VIEWER})
    refused(r, 405, "request.method_not_allowed")
    assert r.headers["allow"] == "GET, POST"


async def test_body_over_the_limit(make_app: AppFactory) -> None:
    app = await make_app(max_body_bytes=2048)
    key = await new_key(app)
    async with client_for(app, **{"X-Api-Key": key}) as client:
        big = {"query": VIEWER, "variables": {"pad": "x" * 4000}}
        refused(await client.post(GRAPHQL, json=big), 413, "request.too_large")

        # A body without a declared length is counted as it streams in.
        async def stream() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b" " * 1000

        r = await client.post(
            GRAPHQL, content=stream(), headers={"Content-Type": "application/json"}
        )
        refused(r, 413, "request.too_large")


async def test_graphiql_is_off_in_production(make_app: AppFactory) -> None:
    app = await make_app(environment="production", session_secret="s" * 32)
    async with client_for(app) as client:
        r = await client.get(GRAPHQL, headers={"Accept": "text/html"})
        refused(r, 404, "request.not_found")


async def test_graphiql_is_on_by_default_outside_production(anon: httpx.AsyncClient) -> None:
    r = await anon.get(GRAPHQL, headers={"Accept": "text/html"})
    assert r.status_code == 200
    assert "graphiql" in r.text.lower()
    # The page holds no data; the API behind it still wants a key.
    refused(await gql(anon, VIEWER), 401, "auth.unauthorized")


async def test_a_bug_is_an_internal_error_without_details(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(**_: object) -> object:
        raise RuntimeError("secret SQL detail")

    monkeypatch.setattr(subscription, "get_subscription", broken)
    r = await gql(api, "{ plan { status } viewer { email } }")
    assert r.status_code == 200
    body = r.json()
    assert body["data"] is None  # `plan` is non-null, so the whole data goes
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "server.internal_error"
    assert error["extensions"]["status"] == 500
    assert "secret" not in r.text
    assert "secret SQL detail" in caplog.text  # logged, with the traceback


async def test_invalid_documents_are_validation_errors(api: httpx.AsyncClient) -> None:
    for query in [
        "{ viewer { email ",
        "{ nope }",
        "{ viewer }",
        "query($x: Int!) { viewer { email } }",
    ]:
        r = await gql(api, query)
        error = single_error(r)
        assert error["extensions"]["code"] == "request.validation_failed", query
        assert error["extensions"]["status"] == 422
        assert r.json()["data"] is None


async def test_domain_error_keeps_other_fields(api: httpx.AsyncClient) -> None:
    # Each root field is resolved on its own: a missing document does not hide the viewer...
    r = await gql(api, '{ viewer { email } a: knowledgeDoc(externalId: "a") { title } }')
    body = r.json()
    # ...but `knowledgeDoc` is non-null, so GraphQL nulls the whole `data`.
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["knowledge.not_found"]
    assert body["errors"][0]["path"] == ["a"]


# --- the shared intake: the same bytes get the same code as through REST --------------------

UPSERT = (
    "mutation($items: [KnowledgeDocItemInput!]!) "
    "{ upsertKnowledgeDocs(items: $items) { summary { created } } }"
)


def graphql_body(variables: bytes) -> bytes:
    return b'{"query": ' + json.dumps(UPSERT).encode() + b', "variables": ' + variables + b"}"


HOSTILE_ITEMS = [
    pytest.param(b'{"items": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", id="deep"),
    pytest.param(b'{"items": [{"external_id": "a", "content": "\\ud800"}]}', id="surrogate"),
    pytest.param(b'{"items": [{"external_id": "a", "content": "x", "n": 1e309}]}', id="1e309"),
    pytest.param(b'{"items": [' + b",".join([b"[]"] * 100_001) + b"]}", id="arrays"),
    pytest.param(b'{"items": [{"external_id": "a", "content": "\xff"}]}', id="not-utf-8"),
]


@pytest.mark.parametrize("items", HOSTILE_ITEMS)
async def test_hostile_bodies_get_the_code_rest_gives(api: httpx.AsyncClient, items: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    rest = await api.put("/api/knowledge/docs", content=items, headers=headers)
    assert 400 <= rest.status_code < 500
    camel = items.replace(b"external_id", b"externalId")
    r = await api.post(GRAPHQL, content=graphql_body(camel), headers=headers)
    refused(r, rest.status_code, rest.json()["code"])
    assert (await gql_data(api, "{ knowledgeDocs { total } }"))["knowledgeDocs"]["total"] == 0


async def test_json_media_types_are_accepted_as_rest_accepts_them(api: httpx.AsyncClient) -> None:
    body = json.dumps({"query": VIEWER}).encode()
    for media_type in ("application/vnd.example+json", "application/json; charset=utf-8"):
        r = await api.post(GRAPHQL, content=body, headers={"Content-Type": media_type})
        assert r.status_code == 200, (media_type, r.text)
        assert r.json()["data"]["viewer"]["email"] == "owner@example.com"
    r = await api.post(GRAPHQL, content=body, headers={"Content-Type": "application/xml"})
    refused(r, 415, "request.unsupported_media_type")


async def test_json_in_a_get_is_bounded_too(api: httpx.AsyncClient) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    r = await api.get(GRAPHQL, params={"query": VIEWER, "variables": '{"x": ' + deep + "}"})
    refused(r, 400, "request.malformed_json")


async def test_a_batch_over_the_plan_is_refused_before_its_variables_are_coerced(
    make_app: AppFactory,
) -> None:
    app = await make_app()
    key = await new_key(app, plan="free")  # batch_items 100
    async with client_for(app, **{"X-Api-Key": key}) as client:
        # Items that graphql-core would each refuse as the wrong type: the count answers first.
        for items in ([1] * 101, [{"externalId": f"d{i}", "content": "x"} for i in range(240_000)]):
            r = await gql(client, UPSERT, {"items": items})
            error = single_error(r)
            assert error["extensions"]["code"] == "knowledge.batch_too_large"
            assert error["extensions"]["status"] == 422
            assert error["extensions"]["errors"][0]["pointer"] == "/items"
            assert error["path"] == ["upsertKnowledgeDocs"]
            assert r.json()["data"] is None
        # Through a fragment and an alias too.
        query = (
            "mutation($items: [KnowledgeDocItemInput!]!) { ...F } "
            "fragment F on Mutation { up: upsertKnowledgeDocs(items: $items) { summary { created } } }"
        )
        error = single_error(await gql(client, query, {"items": [1] * 101}))
        assert error["extensions"]["code"] == "knowledge.batch_too_large"
        assert error["path"] == ["up"]
        # At the bound, the items are validated as usual.
        items = [{"externalId": f"d{i}", "content": "x"} for i in range(100)]
        data = await gql_data(client, UPSERT, {"items": items})
        assert data["upsertKnowledgeDocs"]["summary"]["created"] == 100


async def test_external_id_lists_are_bounded_as_rest_bounds_them(api: httpx.AsyncClient) -> None:
    persona = await gql_data(api, 'mutation { createPersona(input: {name: "P"}) { id } }')
    ids = [f"doc-{i}" for i in range(PERSONA_KNOWLEDGE_MAX + 1)]
    query = (
        "mutation($id: ID!, $ids: [String!]!) "
        "{ setPersonaKnowledge(id: $id, externalIds: $ids) { added } }"
    )
    r = await gql(api, query, {"id": persona["createPersona"]["id"], "ids": ids})
    error = single_error(r)
    assert error["extensions"]["code"] == "request.validation_failed"
    assert error["extensions"]["errors"][0]["pointer"] == "/externalIds"
    r = await api.put(
        f"/api/personas/{persona['createPersona']['id']}/knowledge", json={"external_ids": ids}
    )
    assert r.json()["code"] == "request.validation_failed"
    query = 'query($ids: [String!]) { search(query: "x", externalIds: $ids) { mode } }'
    error = single_error(await gql(api, query, {"ids": ids}))
    assert error["extensions"]["code"] == "request.validation_failed"


async def test_metadata_literals_must_be_finite(api: httpx.AsyncClient) -> None:
    query = 'mutation { upsertKnowledgeDoc(externalId: "a", input: {content: "x", metadata: {n: 1e309}}) { status } }'
    error = single_error(await gql(api, query))
    assert error["extensions"]["code"] == "request.validation_failed"
    assert (await gql_data(api, "{ knowledgeDocs { total } }"))["knowledgeDocs"]["total"] == 0
