"""Parity: every REST operation and its GraphQL twin, on the same data, give the same values,
and for the same bad input the same error code and status (API.md section 10)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app import rest
from tests.conftest import AppFactory, client_for, new_key
from tests.graphql.conftest import as_rest, gql, gql_data

pytestmark = pytest.mark.anyio

DOCS = "/api/knowledge/docs"
PERSONAS = "/api/personas"


def plan(plan_id: str, *, docs: int, personas: int) -> dict[str, Any]:
    return {
        "id": plan_id,
        "name": plan_id.title(),
        "limits": {
            "knowledge_docs": docs,
            "knowledge_chars": 100_000,
            "doc_chars": 2000,
            "personas": personas,
            "batch_items": 4,
            "reads_per_minute": 10_000,
            "writes_per_minute": 10_000,
            "searches_per_minute": 10_000,
        },
    }


PLANS = {
    "roomy": plan("roomy", docs=100, personas=10),
    # At its limits once seeded: 3 documents, 2 personas.
    "tight": plan("tight", docs=3, personas=2),
}

DOC_FIELDS = "externalId title metadata contentSha256 charCount chunkCount createdAt updatedAt"
PERSONA_FIELDS = (
    "id name description instructions greeting metadata knowledgeCount createdAt updatedAt"
    " knowledgeFilter { metadata externalIdPrefixes }"
)


async def seed(api: httpx.AsyncClient) -> dict[str, str]:
    """Three documents and two personas, Ava with a and b attached; returns the persona ids."""
    items = [
        {
            "external_id": "a",
            "title": "Shipping",
            "content": "Orders ship within two days of payment.",
            "metadata": {"lang": "en", "tier_level": 1},
        },
        {
            "external_id": "b",
            "content": "The desk lamp has a USB-C port.",
            "metadata": {"lang": "de"},
        },
        {"external_id": "c", "content": "Refunds are paid back within a week."},
    ]
    r = await api.put(DOCS, json={"items": items})
    assert r.status_code == 200, r.text
    ava = (await api.post(PERSONAS, json={"name": "Ava", "greeting": "Hi!"})).json()["id"]
    bo = (await api.post(PERSONAS, json={"name": "Bo", "metadata": {"team": "ops"}})).json()["id"]
    r = await api.put(f"{PERSONAS}/{ava}/knowledge", json={"external_ids": ["b", "a"]})
    assert r.status_code == 200, r.text
    return {"ava": ava, "bo": bo}


def fill(value: Any, ids: dict[str, str]) -> Any:
    """`{ava}` and `{bo}` in any string of `value`, replaced by the user's persona ids."""
    if isinstance(value, str):
        for name, persona_id in ids.items():
            value = value.replace("{" + name + "}", persona_id)
        return value
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


@dataclass(frozen=True)
class Rest:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None

    async def send(self, api: httpx.AsyncClient, ids: dict[str, str]) -> httpx.Response:
        return await api.request(
            self.method,
            fill(self.path, ids),
            json=fill(self.json, ids),
            params=fill(self.params, ids) if self.params else None,
        )


@dataclass(frozen=True)
class Gql:
    query: str
    variables: dict[str, Any] = field(default_factory=dict)

    async def send(self, api: httpx.AsyncClient, ids: dict[str, str]) -> httpx.Response:
        return await gql(api, self.query, fill(self.variables, ids))


@dataclass(frozen=True)
class Case:
    operation_id: str
    rest: Rest
    graphql: Gql
    #: Turns the GraphQL root field's value (in REST spelling) into what REST answered.
    adjust: Callable[[Any, Any], tuple[Any, Any]] = lambda r, g: (r, g)


def _drop_took(r: Any, g: Any) -> tuple[Any, Any]:
    r.pop("took_ms")
    g.pop("took_ms")
    return r, g


def _ids_and_total(r: Any, g: Any) -> tuple[Any, Any]:
    return (
        ([i["external_id"] for i in r["items"]], r["total"]),
        ([i["external_id"] for i in g["items"]], g["total"]),
    )


def _persona_knowledge(r: Any, g: Any) -> tuple[Any, Any]:
    # GraphQL's `via` is an enum (ATTACHED), REST's a string (attached).
    page = g["knowledge"]
    for item in page["items"]:
        item["via"] = item["via"].lower()
    return r, page


def _one_more_request(r: Any, g: Any) -> tuple[Any, Any]:
    # The GraphQL request came second, and counts itself.
    r["usage"]["requests"]["used"] += 1
    return r, g


LIMITS = (
    "knowledgeDocs knowledgeChars docChars personas batchItems readsPerMinute writesPerMinute "
    "searchesPerMinute"
)
HITS = (
    "results { externalId title score semanticScore keywordScore chunkIndex text metadata } "
    "mode tookMs"
)

#: A changes-feed token standing after the first change (seq 1).
AFTER_FIRST = "eyJhZnRlciI6IjEiLCJmbG9vciI6IjAiLCJ2IjoiMSJ9"

READS = [
    Case(
        "listKnowledgeDocs",
        Rest("GET", DOCS, params={"limit": 2}),
        Gql(f"{{ knowledgeDocs(first: 2) {{ items {{ {DOC_FIELDS} }} nextCursor total }} }}"),
    ),
    Case(
        "listKnowledgeDocs",
        Rest("GET", DOCS, params={"include_content": "true", "cursor": "eyJhZnRlciI6ImEifQ"}),
        Gql(
            "query($after: String) { knowledgeDocs(after: $after) "
            f"{{ items {{ {DOC_FIELDS} content }} nextCursor total }} }}",
            {"after": "eyJhZnRlciI6ImEifQ"},
        ),
    ),
    Case(
        "listKnowledgeDocs",
        Rest("GET", DOCS, params={"updated_since": "2000-01-01T00:00:00Z", "limit": 200}),
        Gql(
            'query { knowledgeDocs(first: 200, updatedSince: "2000-01-01T00:00:00Z") '
            "{ items { externalId } nextCursor total } }"
        ),
        adjust=lambda r, g: (
            [i["external_id"] for i in r["items"]],
            [i["external_id"] for i in g["items"]],
        ),
    ),
    *(
        Case(
            "listKnowledgeDocs",
            Rest("GET", DOCS, params={"updated_since": since}),
            Gql(
                "query($since: DateTime) { knowledgeDocs(updatedSince: $since) "
                "{ items { externalId } nextCursor total } }",
                {"since": since},
            ),
            adjust=_ids_and_total,
        )
        # Offsets other than Z, a lower-case t and z, digits past the millisecond, the first
        # and last instants (an offset beyond year 1 or 9999 in UTC): all documents, or none.
        for since in (
            "2000-01-01T05:30:00+05:30",
            "2999-12-31T23:59:59.999999999-08:00",
            "2000-01-01t00:00:00.5z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
        )
    ),
    Case(
        "listKnowledgeChanges",
        Rest("GET", "/api/knowledge/changes", params={"limit": 2}),
        Gql(
            f"{{ knowledgeChanges(first: 2) {{ changes {{ externalId op updatedAt "
            f"document {{ {DOC_FIELDS} }} }} nextSince hasMore }} }}"
        ),
    ),
    Case(
        "listKnowledgeChanges",
        Rest("GET", "/api/knowledge/changes", params={"since": AFTER_FIRST}),
        Gql(
            "query($since: String) { knowledgeChanges(since: $since) { changes { externalId op "
            f"updatedAt document {{ {DOC_FIELDS} }} }} nextSince hasMore }} }}",
            {"since": AFTER_FIRST},
        ),
    ),
    Case(
        "getKnowledgeDoc",
        Rest("GET", f"{DOCS}/by-external-id/a"),
        Gql(f'{{ knowledgeDoc(externalId: "a") {{ {DOC_FIELDS} content }} }}'),
    ),
    Case(
        "listPersonas",
        Rest("GET", PERSONAS, params={"limit": 1}),
        Gql(f"{{ personas(first: 1) {{ items {{ {PERSONA_FIELDS} }} nextCursor total }} }}"),
    ),
    Case(
        "getPersona",
        Rest("GET", PERSONAS + "/{ava}"),
        Gql(
            f"query($id: ID!) {{ persona(id: $id) {{ {PERSONA_FIELDS} knowledgeExternalIds }} }}",
            {"id": "{ava}"},
        ),
    ),
    *(
        Case(
            "listPersonaKnowledge",
            Rest("GET", PERSONAS + "/{ava}/knowledge", params=params),
            Gql(
                "query($id: ID!, $first: Int, $after: String) { persona(id: $id) { knowledge("
                f"first: $first, after: $after) {{ items {{ {DOC_FIELDS} via }} nextCursor total "
                "} } }",
                {"id": "{ava}", **variables},
            ),
            adjust=_persona_knowledge,
        )
        for params, variables in (
            ({"limit": 1}, {"first": 1}),
            ({"cursor": "eyJhZnRlciI6ImEifQ"}, {"after": "eyJhZnRlciI6ImEifQ"}),
        )
    ),
    Case(
        "getSubscription",
        Rest("GET", "/api/subscription"),
        Gql(
            "{ plan { plan { id name } status currentPeriodStart currentPeriodEnd "
            f"limits {{ {LIMITS} }} }} }}"
        ),
    ),
    Case(
        "getSubscriptionUsage",
        Rest("GET", "/api/subscription/usage"),
        Gql(
            "{ usage { periodStart periodEnd usage { knowledgeDocs { used limit } "
            "knowledgeChars { used limit } personas { used limit } embeddedChunks { used } "
            "requests { used } } } }"
        ),
        adjust=_one_more_request,
    ),
    Case(
        "searchKnowledge",
        Rest("POST", "/api/knowledge/search", json={"query": "when will my order ship?", "k": 3}),
        Gql(f'{{ search(query: "when will my order ship?", k: 3) {{ {HITS} }} }}'),
        adjust=_drop_took,
    ),
    Case(
        "searchKnowledge",
        Rest(
            "POST",
            "/api/knowledge/search",
            json={"query": "lamp port", "mode": "semantic", "persona_id": "{ava}"},
        ),
        Gql(
            f'query($p: ID) {{ search(query: "lamp port", mode: SEMANTIC, personaId: $p) {{ {HITS} }} }}',
            {"p": "{ava}"},
        ),
        adjust=_drop_took,
    ),
    Case(
        "searchKnowledge",
        Rest(
            "POST",
            "/api/knowledge/search",
            json={"query": "refunds week", "mode": "keyword", "external_ids": ["c", "a"]},
        ),
        Gql(
            'query { search(query: "refunds week", mode: KEYWORD, externalIds: ["c", "a"]) '
            f"{{ {HITS} }} }}"
        ),
        adjust=_drop_took,
    ),
    Case(
        "searchKnowledge",
        Rest(
            "POST",
            "/api/knowledge/search",
            json={"query": "shipping lamp", "metadata": {"lang": "de"}},
        ),
        Gql(
            f'query($m: JSON) {{ search(query: "shipping lamp", metadata: $m) {{ {HITS} }} }}',
            {"m": {"lang": "de"}},
        ),
        adjust=_drop_took,
    ),
    Case(
        "searchKnowledge",
        Rest(
            "POST",
            "/api/knowledge/search",
            json={"query": "when will my order ship?", "k": 5, "min_score": 0.4},
        ),
        Gql(f'{{ search(query: "when will my order ship?", k: 5, minScore: 0.4) {{ {HITS} }} }}'),
        adjust=_drop_took,
    ),
]


def root(data: dict[str, Any]) -> Any:
    (value,) = data.values()
    return as_rest(value)


@pytest.fixture
async def roomy(make_app: AppFactory) -> Starlette:
    return await make_app(plans=PLANS)


async def test_reads_give_the_same_values(roomy: Starlette) -> None:
    key = await new_key(roomy, "reader@example.com", plan="roomy")
    async with client_for(roomy, **{"X-Api-Key": key}) as api:
        ids = await seed(api)
        for case in READS:
            r = await case.rest.send(api, ids)
            assert r.status_code == 200, (case.operation_id, r.text)
            g = await case.graphql.send(api, ids)
            assert g.status_code == 200 and "errors" not in g.json(), (case.operation_id, g.text)
            expected, actual = case.adjust(r.json(), root(g.json()["data"]))
            assert actual == expected, case.operation_id


async def test_a_time_with_an_offset_is_the_same_instant_through_both_doors(
    roomy: Starlette,
) -> None:
    key = await new_key(roomy, "times@example.com", plan="roomy")
    async with client_for(roomy, **{"X-Api-Key": key}) as api:
        await seed(api)
        listed = (await api.get(DOCS)).json()["items"]
        stored = [datetime.fromisoformat(d["updated_at"]) for d in listed]
        newest = max(stored)
        india = timezone(timedelta(hours=5, minutes=30))
        for since, total in (
            # The newest update, written in India's time: inclusive, so it is there.
            (newest, sum(t >= newest for t in stored)),
            (newest + timedelta(milliseconds=1), 0),
            (newest - timedelta(days=1), len(stored)),
        ):
            text = since.astimezone(india).isoformat()
            assert text.endswith("+05:30")
            r = await api.get(DOCS, params={"updated_since": text})
            assert r.json()["total"] == total, text
            query = "query($s: DateTime) { knowledgeDocs(updatedSince: $s) { total } }"
            data = await gql_data(api, query, {"s": text})
            assert data["knowledgeDocs"]["total"] == total, text


# --- writes: two users with the same data, one per door --------------------------------------

UNSTABLE = {"id", "persona_id", "created_at", "updated_at"}


def stable(value: Any) -> Any:
    """`value` without what differs between two users' identical data: ids and times."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in UNSTABLE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


ITEMS: list[dict[str, Any]] = [
    {"external_id": "d", "content": "New: gift cards never expire.", "metadata": {"k": [1, 2]}},
    {
        "external_id": "a",
        "title": "Shipping",
        "content": "Orders ship within two days of payment.",
        "metadata": {"lang": "en", "tier_level": 1},
    },
    {"external_id": "b", "title": "Lamp", "content": "The desk lamp has a USB-C port."},
]
GQL_ITEMS: list[dict[str, Any]] = [
    {("externalId" if k == "external_id" else k): v for k, v in item.items()} for item in ITEMS
]
UPSERT_ONE = (
    'mutation($input: KnowledgeDocInput!) { upsertKnowledgeDoc(externalId: "e", input: $input) '
    f"{{ status document {{ {DOC_FIELDS} }} }} }}"
)

WRITES = [
    Case(
        "upsertKnowledgeDocs",
        Rest("PUT", DOCS, json={"items": ITEMS}),
        Gql(
            "mutation($items: [KnowledgeDocItemInput!]!) { upsertKnowledgeDocs(items: $items) "
            "{ results { externalId status } summary { created updated noOp } } }",
            {"items": GQL_ITEMS},
        ),
    ),
    Case(  # created (REST 201)
        "upsertKnowledgeDoc",
        Rest("PUT", f"{DOCS}/by-external-id/e", json={"content": "Gift wrap is free."}),
        Gql(UPSERT_ONE, {"input": {"content": "Gift wrap is free."}}),
    ),
    Case(  # no_op
        "upsertKnowledgeDoc",
        Rest("PUT", f"{DOCS}/by-external-id/e", json={"content": "Gift wrap is free."}),
        Gql(UPSERT_ONE, {"input": {"content": "Gift wrap is free."}}),
    ),
    Case(  # updated: title and metadata only
        "upsertKnowledgeDoc",
        Rest(
            "PUT",
            f"{DOCS}/by-external-id/e",
            json={"content": "Gift wrap is free.", "title": "Wrap", "metadata": {"x": None}},
        ),
        Gql(
            UPSERT_ONE,
            {"input": {"content": "Gift wrap is free.", "title": "Wrap", "metadata": {"x": None}}},
        ),
    ),
    Case(
        "deleteKnowledgeDoc",
        Rest("DELETE", f"{DOCS}/by-external-id/e"),
        Gql('mutation { deleteKnowledgeDoc(externalId: "e") { externalId deleted } }'),
        adjust=lambda r, g: (r, None if g == {"external_id": "e", "deleted": True} else g),
    ),
    Case(
        "deleteKnowledgeDoc",  # absent: still fine, nothing deleted
        Rest("DELETE", f"{DOCS}/by-external-id/e"),
        Gql('mutation { deleteKnowledgeDoc(externalId: "e") { externalId deleted } }'),
        adjust=lambda r, g: (r, None if g == {"external_id": "e", "deleted": False} else g),
    ),
    Case(
        "createPersona",
        Rest(
            "POST",
            PERSONAS,
            json={"name": "Cy", "instructions": "Be brief.", "metadata": {"tone": "dry"}},
        ),
        Gql(
            "mutation($input: PersonaCreateInput!) { createPersona(input: $input) "
            f"{{ {PERSONA_FIELDS} knowledgeExternalIds }} }}",
            {"input": {"name": "Cy", "instructions": "Be brief.", "metadata": {"tone": "dry"}}},
        ),
    ),
    Case(
        "updatePersona",
        Rest("PATCH", PERSONAS + "/{ava}", json={"greeting": None, "description": "Helps."}),
        Gql(
            "mutation($id: ID!, $input: PersonaUpdateInput!) { updatePersona(id: $id, input: $input) "
            f"{{ {PERSONA_FIELDS} knowledgeExternalIds }} }}",
            {"id": "{ava}", "input": {"greeting": None, "description": "Helps."}},
        ),
    ),
    Case(
        "setPersonaKnowledge",
        Rest("PUT", PERSONAS + "/{ava}/knowledge", json={"external_ids": ["d", "c", "c"]}),
        Gql(
            'mutation($id: ID!) { setPersonaKnowledge(id: $id, externalIds: ["d", "c", "c"]) '
            "{ personaId externalIds added removed } }",
            {"id": "{ava}"},
        ),
    ),
    Case(
        "deletePersona",
        Rest("DELETE", PERSONAS + "/{bo}"),
        Gql(
            "mutation($id: ID!) { deletePersona(id: $id) { id deleted } }",
            {"id": "{bo}"},
        ),
        adjust=lambda r, g: (r, None if g["deleted"] is True else g),
    ),
]

STATE = Gql(
    f"{{ knowledgeDocs {{ items {{ {DOC_FIELDS} content }} total }} "
    f"personas {{ items {{ {PERSONA_FIELDS} knowledgeExternalIds }} total }} }}"
)


async def rest_state(api: httpx.AsyncClient) -> Any:
    docs = (await api.get(DOCS, params={"include_content": "true"})).json()
    personas = (await api.get(PERSONAS)).json()
    for item in personas["items"]:
        item["knowledge_external_ids"] = (await api.get(f"{PERSONAS}/{item['id']}")).json()[
            "knowledge_external_ids"
        ]
    docs.pop("next_cursor")
    personas.pop("next_cursor")
    return {"knowledge_docs": docs, "personas": personas}


async def test_writes_give_the_same_values_and_leave_the_same_state(roomy: Starlette) -> None:
    rest_key = await new_key(roomy, "rest@example.com", plan="roomy")
    gql_key = await new_key(roomy, "graphql@example.com", plan="roomy")
    async with (
        client_for(roomy, **{"X-Api-Key": rest_key}) as by_rest,
        client_for(roomy, **{"X-Api-Key": gql_key}) as by_graphql,
    ):
        rest_ids = await seed(by_rest)
        gql_ids = await seed(by_graphql)
        for case in WRITES:
            r = await case.rest.send(by_rest, rest_ids)
            assert r.status_code in (200, 201, 204), (case.operation_id, r.text)
            g = await case.graphql.send(by_graphql, gql_ids)
            assert g.status_code == 200 and "errors" not in g.json(), (case.operation_id, g.text)
            rest_value = r.json() if r.status_code != 204 else None
            expected, actual = case.adjust(rest_value, root(g.json()["data"]))
            assert stable(actual) == stable(expected), case.operation_id
            # And both users' data are alike after every step.
            after_rest = await rest_state(by_rest)
            after_graphql = as_rest(await gql_data(by_graphql, STATE.query))
            assert stable(after_graphql) == stable(after_rest), case.operation_id


# --- errors: the same bad input, the same code and status ------------------------------------


@dataclass(frozen=True)
class Bad:
    operation_id: str
    code: str
    rest: Rest
    graphql: Gql


TOO_LONG = "x" * 2001
UPSERT_ONE_BARE = (
    "mutation($id: String!, $input: KnowledgeDocInput!) { upsertKnowledgeDoc(externalId: $id, "
    "input: $input) { status } }"
)
UPSERT_MANY_BARE = (
    "mutation($items: [KnowledgeDocItemInput!]!) { upsertKnowledgeDocs(items: $items) "
    "{ summary { created } } }"
)
SEARCH_BARE = (
    "query($q: String!, $k: Int!, $mode: SearchMode!, $p: ID, $ids: [String!], $m: JSON, "
    "$min: Float) { search(query: $q, k: $k, mode: $mode, personaId: $p, externalIds: $ids, "
    "metadata: $m, minScore: $min) { mode } }"
)


def search_vars(**overrides: Any) -> dict[str, Any]:
    return {"q": "ship", "k": 5, "mode": "HYBRID", **overrides}


def list_docs(**variables: Any) -> Gql:
    return Gql(
        "query($first: Int!, $after: String, $since: DateTime) "
        "{ knowledgeDocs(first: $first, after: $after, updatedSince: $since) { total } }",
        {"first": 50, **variables},
    )


#: Times pydantic (or Python) would take but RFC 3339 with an offset does not, or that are no
#: real instant: both doors refuse each with the same code.
BAD_TIMES = [
    "2026-01-01T00:00:00",  # no offset: whose midnight?
    "2026-01-01",  # a date, not a time
    "1700000000",  # epoch seconds
    "0000-01-01T00:00:00Z",  # year 0000
    "2026-01-01T24:00:00Z",  # 24:00
    "2016-12-31T23:59:60Z",  # a leap second, which no `datetime` holds
    "2026-01-01T00:00:00+24:00",  # an offset of a whole day
]


def inline_since(since: str) -> Gql:
    """The time written into the document, where GraphQL parses it as a literal."""
    return Gql(f'{{ knowledgeDocs(updatedSince: "{since}") {{ total }} }}')


def upsert_many(*items: dict[str, Any]) -> tuple[Rest, Gql]:
    gql_items = [
        {("externalId" if k == "external_id" else k): v for k, v in item.items()} for item in items
    ]
    return Rest("PUT", DOCS, json={"items": list(items)}), Gql(
        UPSERT_MANY_BARE, {"items": gql_items}
    )


def upsert_one(external_id: str, body: dict[str, Any]) -> tuple[Rest, Gql]:
    return (
        Rest("PUT", f"{DOCS}/by-external-id/{external_id}", json=body),
        Gql(UPSERT_ONE_BARE, {"id": external_id, "input": body}),
    )


def persona_input(mutation: str, input_type: str, body: dict[str, Any], id: str | None) -> Gql:
    head = f"mutation($input: {input_type}!" + (", $id: ID!" if id else "") + ")"
    args = ("id: $id, " if id else "") + "input: $input"
    return Gql(
        f"{head} {{ {mutation}({args}) {{ id }} }}", {"input": body, **({"id": id} if id else {})}
    )


_missing_persona = "per_01ARZ3NDEKTSV4RRFFQ69G5FAV"

# One row per case: the table reads best unwrapped.
# fmt: off
BAD = [
    Bad("listKnowledgeDocs", "request.validation_failed", Rest("GET", DOCS, params={"limit": 0}), list_docs(first=0)),
    Bad("listKnowledgeDocs", "request.validation_failed", Rest("GET", DOCS, params={"limit": 201}), list_docs(first=201)),
    Bad("listKnowledgeDocs", "request.invalid_cursor", Rest("GET", DOCS, params={"cursor": "nope!"}), list_docs(after="nope!")),
    Bad("listKnowledgeDocs", "request.invalid_cursor", Rest("GET", DOCS, params={"cursor": "eyJ4IjoxfQ"}), list_docs(after="eyJ4IjoxfQ")),
    Bad("listKnowledgeDocs", "request.validation_failed", Rest("GET", DOCS, params={"updated_since": "soon"}), list_docs(since="soon")),
    *(
        Bad("listKnowledgeDocs", "request.validation_failed", Rest("GET", DOCS, params={"updated_since": since}), list_docs(since=since))
        for since in BAD_TIMES
    ),
    *(
        Bad("listKnowledgeDocs", "request.validation_failed", Rest("GET", DOCS, params={"updated_since": since}), inline_since(since))
        for since in BAD_TIMES
    ),
    Bad("listKnowledgeDocs", "request.validation_failed", Rest("GET", DOCS, params={"updated_since": "1700000000"}), list_docs(since=1700000000)),
    Bad("listKnowledgeChanges", "request.invalid_cursor", Rest("GET", "/api/knowledge/changes", params={"since": "nope!"}), Gql('{ knowledgeChanges(since: "nope!") { hasMore } }')),
    Bad("listKnowledgeChanges", "request.invalid_cursor", Rest("GET", "/api/knowledge/changes", params={"since": "eyJhZnRlciI6ImEifQ"}), Gql('{ knowledgeChanges(since: "eyJhZnRlciI6ImEifQ") { hasMore } }')),
    Bad("listKnowledgeChanges", "request.validation_failed", Rest("GET", "/api/knowledge/changes", params={"limit": 1001}), Gql("{ knowledgeChanges(first: 1001) { hasMore } }")),
    Bad("listKnowledgeChanges", "request.validation_failed", Rest("GET", "/api/knowledge/changes", params={"limit": 0}), Gql("{ knowledgeChanges(first: 0) { hasMore } }")),
    Bad("getKnowledgeDoc", "knowledge.invalid_external_id", Rest("GET", f"{DOCS}/by-external-id/bad%20id"), Gql('{ knowledgeDoc(externalId: "bad id") { title } }')),
    Bad("getKnowledgeDoc", "knowledge.not_found", Rest("GET", f"{DOCS}/by-external-id/zz"), Gql('{ knowledgeDoc(externalId: "zz") { title } }')),
    Bad("upsertKnowledgeDocs", "knowledge.invalid_external_id", *upsert_many({"external_id": "a b", "content": "x"})),
    Bad("upsertKnowledgeDocs", "knowledge.duplicate_external_id", *upsert_many({"external_id": "a", "content": "x"}, {"external_id": "a", "content": "y"})),
    Bad("upsertKnowledgeDocs", "knowledge.batch_too_large", *upsert_many(*({"external_id": f"n{i}", "content": "x"} for i in range(5)))),
    Bad("upsertKnowledgeDocs", "knowledge.content_too_large", *upsert_many({"external_id": "a", "content": TOO_LONG})),
    Bad("upsertKnowledgeDocs", "knowledge.quota_exceeded", *upsert_many({"external_id": "new", "content": "x"})),
    Bad("upsertKnowledgeDocs", "request.validation_failed", *upsert_many({"external_id": "a", "content": "  "})),
    Bad("upsertKnowledgeDocs", "request.validation_failed", *upsert_many({"external_id": "a", "content": "x", "metadata": [1]})),
    Bad("upsertKnowledgeDocs", "request.validation_failed", *upsert_many({"external_id": "a", "content": "x", "metadata": {"k": "v" * 9000}})),
    Bad("upsertKnowledgeDocs", "request.validation_failed", *upsert_many({"external_id": "a", "content": "x", "title": "t" * 513})),
    Bad("upsertKnowledgeDocs", "request.validation_failed", Rest("PUT", DOCS, json={"items": []}), Gql(UPSERT_MANY_BARE, {"items": []})),
    Bad("upsertKnowledgeDoc", "knowledge.invalid_external_id", *upsert_one("bad id", {"content": "x"})),
    Bad("upsertKnowledgeDoc", "knowledge.content_too_large", *upsert_one("a", {"content": TOO_LONG})),
    Bad("upsertKnowledgeDoc", "knowledge.quota_exceeded", *upsert_one("new", {"content": "x"})),
    Bad("upsertKnowledgeDoc", "request.validation_failed", *upsert_one("a", {"content": ""})),
    Bad("upsertKnowledgeDoc", "request.validation_failed", *upsert_one("a", {"content": "x", "metadata": None})),
    Bad("deleteKnowledgeDoc", "knowledge.invalid_external_id", Rest("DELETE", f"{DOCS}/by-external-id/bad%20id"), Gql('mutation { deleteKnowledgeDoc(externalId: "bad id") { deleted } }')),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "ship", "k": 0}), Gql(SEARCH_BARE, search_vars(k=0))),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "ship", "k": 51}), Gql(SEARCH_BARE, search_vars(k=51))),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "ship", "k": "five"}), Gql(SEARCH_BARE, search_vars(k="five"))),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "   "}), Gql(SEARCH_BARE, search_vars(q="   "))),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "ship", "min_score": 1.5}), Gql(SEARCH_BARE, search_vars(min=1.5))),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "ship", "mode": "fuzzy"}), Gql(SEARCH_BARE, search_vars(mode="fuzzy"))),
    Bad("searchKnowledge", "request.validation_failed", Rest("POST", "/api/knowledge/search", json={"query": "ship", "metadata": {f"k{i}": i for i in range(33)}}), Gql(SEARCH_BARE, search_vars(m={f"k{i}": i for i in range(33)}))),
    Bad("searchKnowledge", "knowledge.invalid_external_id", Rest("POST", "/api/knowledge/search", json={"query": "ship", "external_ids": ["ok", "not ok"]}), Gql(SEARCH_BARE, search_vars(ids=["ok", "not ok"]))),
    Bad("searchKnowledge", "persona.not_found", Rest("POST", "/api/knowledge/search", json={"query": "ship", "persona_id": _missing_persona}), Gql(SEARCH_BARE, search_vars(p=_missing_persona))),
    Bad("listPersonas", "request.validation_failed", Rest("GET", PERSONAS, params={"limit": 500}), Gql("{ personas(first: 500) { total } }")),
    Bad("listPersonas", "request.invalid_cursor", Rest("GET", PERSONAS, params={"cursor": "%%%"}), Gql('{ personas(after: "%%%") { total } }')),
    Bad("listPersonaKnowledge", "persona.not_found", Rest("GET", f"{PERSONAS}/{_missing_persona}/knowledge"), Gql(f'{{ persona(id: "{_missing_persona}") {{ knowledge {{ total }} }} }}')),
    Bad("listPersonaKnowledge", "request.invalid_cursor", Rest("GET", PERSONAS + "/{ava}/knowledge", params={"cursor": "%%%"}), Gql('query($id: ID!) { persona(id: $id) { knowledge(after: "%%%") { total } } }', {"id": "{ava}"})),
    Bad("listPersonaKnowledge", "request.validation_failed", Rest("GET", PERSONAS + "/{ava}/knowledge", params={"limit": 500}), Gql('query($id: ID!) { persona(id: $id) { knowledge(first: 500) { total } } }', {"id": "{ava}"})),
    Bad("getPersona", "persona.not_found", Rest("GET", f"{PERSONAS}/{_missing_persona}"), Gql(f'{{ persona(id: "{_missing_persona}") {{ id }} }}')),
    Bad("getPersona", "persona.not_found", Rest("GET", f"{PERSONAS}/not-a-persona"), Gql('{ persona(id: "not-a-persona") { id } }')),
    Bad("createPersona", "persona.quota_exceeded", Rest("POST", PERSONAS, json={"name": "Dee"}), persona_input("createPersona", "PersonaCreateInput", {"name": "Dee"}, None)),
    Bad("createPersona", "request.validation_failed", Rest("POST", PERSONAS, json={"name": ""}), persona_input("createPersona", "PersonaCreateInput", {"name": ""}, None)),
    Bad("createPersona", "request.validation_failed", Rest("POST", PERSONAS, json={"name": "n" * 121}), persona_input("createPersona", "PersonaCreateInput", {"name": "n" * 121}, None)),
    Bad("createPersona", "request.validation_failed", Rest("POST", PERSONAS, json={"name": "Dee", "greeting": "g" * 2001}), persona_input("createPersona", "PersonaCreateInput", {"name": "Dee", "greeting": "g" * 2001}, None)),
    Bad("createPersona", "request.validation_failed", Rest("POST", PERSONAS, json={"name": "Dee", "description": None}), persona_input("createPersona", "PersonaCreateInput", {"name": "Dee", "description": None}, None)),
    Bad("updatePersona", "persona.not_found", Rest("PATCH", f"{PERSONAS}/{_missing_persona}", json={"name": "X"}), persona_input("updatePersona", "PersonaUpdateInput", {"name": "X"}, _missing_persona)),
    Bad("updatePersona", "request.validation_failed", Rest("PATCH", PERSONAS + "/{ava}", json={"name": None}), persona_input("updatePersona", "PersonaUpdateInput", {"name": None}, "{ava}")),
    Bad("updatePersona", "request.validation_failed", Rest("PATCH", PERSONAS + "/{ava}", json={"metadata": None}), persona_input("updatePersona", "PersonaUpdateInput", {"metadata": None}, "{ava}")),
    Bad("updatePersona", "request.validation_failed", Rest("PATCH", PERSONAS + "/{ava}", json={"instructions": "i" * 20001}), persona_input("updatePersona", "PersonaUpdateInput", {"instructions": "i" * 20001}, "{ava}")),
    Bad("setPersonaKnowledge", "knowledge.unknown_external_ids", Rest("PUT", PERSONAS + "/{ava}/knowledge", json={"external_ids": ["a", "zz"]}), Gql('mutation($id: ID!) { setPersonaKnowledge(id: $id, externalIds: ["a", "zz"]) { added } }', {"id": "{ava}"})),
    Bad("setPersonaKnowledge", "knowledge.invalid_external_id", Rest("PUT", PERSONAS + "/{ava}/knowledge", json={"external_ids": ["a", "z z"]}), Gql('mutation($id: ID!) { setPersonaKnowledge(id: $id, externalIds: ["a", "z z"]) { added } }', {"id": "{ava}"})),
    Bad("setPersonaKnowledge", "persona.not_found", Rest("PUT", f"{PERSONAS}/{_missing_persona}/knowledge", json={"external_ids": ["a"]}), Gql(f'mutation {{ setPersonaKnowledge(id: "{_missing_persona}", externalIds: ["a"]) {{ added }} }}')),
]
# fmt: on


async def test_bad_input_gives_the_same_code_and_status(make_app: AppFactory) -> None:
    app = await make_app(plans=PLANS)
    key = await new_key(app, "tight@example.com", plan="tight")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        ids = await seed(api)
        before = await rest_state(api)
        for bad in BAD:
            r = await bad.rest.send(api, ids)
            problem = r.json()
            assert (problem["code"], r.status_code) == (bad.code, problem["status"]), (bad, problem)
            g = await bad.graphql.send(api, ids)
            assert g.status_code == 200, (bad, g.text)
            body = g.json()
            assert body.get("data") is None, (bad, body)
            (error,) = body["errors"]
            extensions = error["extensions"]
            assert (extensions["code"], extensions["status"]) == (bad.code, r.status_code), (
                bad,
                error,
            )
            assert extensions["request_id"] == g.headers["x-request-id"]
            if "path" in error:
                # Validated by the same model or service: GraphQL names the same fields at fault.
                # (A value GraphQL's own types refuse, such as `k: "five"`, has only a message.)
                assert len(extensions.get("errors", [])) == len(problem.get("errors", [])), (
                    bad,
                    error,
                )
            if "missing" in problem:
                assert extensions["missing"] == problem["missing"]
        # A refused request changes nothing, through either door.
        assert await rest_state(api) == before


def test_every_rest_operation_has_a_twin_in_every_table() -> None:
    every = {op.operation_id for op in rest.OPERATIONS}
    assert {c.operation_id for c in READS} | {c.operation_id for c in WRITES} == every
    reads = {
        op.operation_id for op in rest.OPERATIONS if op.method == "GET" or op.policy == "search"
    }
    writes = every - reads
    assert {c.operation_id for c in READS} == reads
    assert {c.operation_id for c in WRITES} == writes
    # Every operation that takes input has its bad-input twin (the subscription takes none).
    assert {b.operation_id for b in BAD} == every - {
        "getSubscription",
        "getSubscriptionUsage",
        "deletePersona",
    }
