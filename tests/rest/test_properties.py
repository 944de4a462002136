"""Property: whatever a client sends to any REST operation (body, query parameters, path values,
headers), the answer is never a 5xx, and a refusal changes nothing. And SQLite and PostgreSQL
agree: the same sequence of operations, sent to an app on each, gets the same statuses, codes and
stored results (`test_engines_agree_on_operation_sequences`).

One test per operation, from the same `Operation` list that routes the server, so a new operation
is covered when it is declared. Bodies are drawn from four families: near-valid ones built from
the operation's request model (right field names, arbitrary values), arbitrary JSON, arbitrary
bytes, and known-hostile JSON texts.
"""

from __future__ import annotations

import base64
import json
import re
import types
import typing
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.applications import Starlette

from app.embedding.embedder import Model
from app.main import create_app
from app.rest import OPERATIONS
from app.rest.operations import Operation
from app.settings import Settings
from tests.conftest import client_for, new_key
from tests.http.test_intake import fingerprint
from tests.support import pg

pytestmark = pytest.mark.anyio

#: Examples per operation: enough to find the crashes the hostile tester found within a run,
#: few enough that the suite stays quick (the whole file is about half a minute).
EXAMPLES = 30

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
external_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,16}", fullmatch=True)
# Hand-written JSON texts a fuzzer takes long to stumble on; each has crashed a server before.
HOSTILE = [
    b"[" * 50_000,
    b'{"items": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a": "\\ud800"}',
    b'{"a": 1e309}',
    b'{"a": NaN}',
    b'{"a": -Infinity}',
    b'{"a": 1' + b"0" * 5000 + b"}",
    b'"\\udfff"',
    b"\xef\xbb\xbf{}",
    b'{"a": "\xed\xa0\x80"}',
    b"[" + b"[]," * 120_000 + b"[]]",
    b"null",
    b"",
]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Query values of the same kind: cursors that decode to what no cursor holds, times at the ends
# of what a datetime can hold.
HOSTILE_QUERY = [
    _b64(b'{"after": "\\ud800"}'),
    _b64(b'{"after": "\xed\xa0\x80"}'),
    _b64(b"[" * 3000),
    _b64(b'{"after": 1e999}'),
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-05:00",
    "0999-01-01T00:00:00Z",
    "",
    "\x00",
]


def typed(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of roughly `annotation`'s type, so that bodies get past the first check."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return typed(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return st.one_of(*(typed(a) for a in get_args(annotation)))
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation)
        return st.lists(typed(item), max_size=5)
    if origin is dict or annotation is dict:
        return st.dictionaries(st.text(max_size=8), json_values, max_size=4)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return near_valid(annotation)
    if annotation is str:
        return st.text(max_size=40) | external_ids
    if annotation is int:
        return st.integers(-10, 300) | st.integers()
    if annotation is bool:
        return st.booleans()
    if annotation is type(None):
        return st.none()
    return json_values


def near_valid(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the model's field names (any subset), each of its type or of any JSON."""
    fields = {
        name: typed(field.annotation) | json_values for name, field in model.model_fields.items()
    }
    return st.fixed_dictionaries({}, optional=fields)


def bodies(op: Operation) -> st.SearchStrategy[bytes]:
    families = [
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        st.sampled_from(HOSTILE),
    ]
    if op.body is not None:
        families.insert(0, near_valid(op.body).map(lambda v: json.dumps(v).encode()))
    return st.one_of(*families)


def queries(op: Operation) -> st.SearchStrategy[dict[str, str]]:
    names = list(op.query.model_fields) if op.query is not None else []
    known = st.fixed_dictionaries(
        {},
        optional={
            n: st.text(max_size=30) | st.integers().map(str) | st.sampled_from(HOSTILE_QUERY)
            for n in names
        },
    )
    return known | st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8))


#: A path value standing for the seeded document or persona, filled in when the test runs.
EXISTING = "\x00existing"


def path_values() -> st.SearchStrategy[str]:
    raw = st.text(min_size=1, max_size=40)
    return st.one_of(
        st.just(EXISTING),
        external_ids,
        raw.map(lambda v: quote(v, safe="")),
        raw.map(lambda v: quote(v, safe="/")),
    )


CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.example+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
    "application/json; charset=latin-1",
    "\u00e9",
]


def headers() -> st.SearchStrategy[dict[str, bytes]]:
    latin1 = st.text(st.characters(max_codepoint=255, exclude_categories=("Cc",)), max_size=40)
    return st.fixed_dictionaries(
        {"content-type": st.sampled_from(CONTENT_TYPES)},
        optional={
            "x-request-id": latin1,
            "accept": st.sampled_from(["*/*", "text/html", "application/json", "\u00ff"]),
            "content-encoding": st.sampled_from(["gzip", "identity", "br"]),
            "x-anything": latin1,
        },
    ).map(lambda h: {k: v.encode("latin-1") for k, v in h.items()})


@dataclass(frozen=True)
class Case:
    """One request to one operation."""

    path: dict[str, str]
    query: dict[str, str]
    headers: dict[str, bytes]
    body: bytes | None


def cases(op: Operation) -> st.SearchStrategy[Case]:
    # Drawn by @given before the test runs, never inside it: a draw that runs out of data
    # raises hypothesis's StopTest, which anyio's test runner takes for a crash.
    has_body = op.method in ("PUT", "POST", "PATCH")
    return st.builds(
        Case,
        path=st.fixed_dictionaries({name: path_values() for name in op.path_params}),
        query=queries(op),
        headers=headers(),
        body=bodies(op) if has_body else st.none(),
    )


@pytest.fixture
async def seeded(app: Starlette, api: httpx.AsyncClient) -> dict[str, str]:
    """One document and one persona, so that path values sometimes name what exists."""
    r = await api.put(
        "/api/knowledge/docs/by-external-id/seed", json={"content": "The seed document."}
    )
    assert r.status_code == 201
    persona = (await api.post("/api/personas", json={"name": "Seed"})).json()
    return {"external_id": "seed", "id": persona["id"]}


def property_test(op: Operation) -> Any:
    """The property for one operation, as a test function of its own (hypothesis and anyio's
    runner do not mix with parametrize: each parametrized case would wrap the one function)."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # The app (its fixtures) is shared by the examples on purpose: each compares the data
        # before and after its own request.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=cases(op))
    async def test(
        app: Starlette, api: httpx.AsyncClient, seeded: dict[str, str], case: Case
    ) -> None:
        path = op.path
        for name, value in case.path.items():
            path = path.replace(f"{{{name}:str}}", seeded[name] if value == EXISTING else value)

        before = await fingerprint(app)
        r = await api.request(
            op.method, path, params=case.query, content=case.body, headers=case.headers
        )
        assert r.status_code < 500, r.text[:2000]
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json"), r.text[:500]
            problem = r.json()
            assert problem["status"] == r.status_code and problem["code"]
            assert len(problem.get("errors", ())) <= 100
            assert await fingerprint(app) == before, (r.status_code, problem)

    test.__name__ = f"test_{op.operation_id}_never_5xx_and_refusals_change_nothing"
    return test


for _op in OPERATIONS:
    _test = property_test(_op)
    globals()[_test.__name__] = _test


# --- the engines agree ---------------------------------------------------------------------

#: Operation sequences per run; each step is sent to both apps, so writes embed twice.
SEQUENCES = 15
#: Any Unicode a JSON text can carry (hypothesis leaves out lone surrogates, which the intake
#: refuses alike on both engines: tests/http/test_intake.py).
unicode_text = st.text(max_size=24)
#: Metadata of every kind: nested, huge integers, floats of every size, Unicode and empty keys.
metadata_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -0.0, 1, 1.0, True, 2**53 + 1, 1e16, 10**30, 1e30, "", "\x00"])
    | unicode_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(unicode_text, children, max_size=3)
    ),
    max_leaves=8,
)
metadata_objects = st.dictionaries(unicode_text, metadata_values, max_size=4)
#: A few ids, so that steps meet each other's documents.
pool_ids = st.sampled_from(["a", "b", "seed", "x:1"])


def plausible(op: Operation) -> st.SearchStrategy[dict[str, Any]] | None:
    """Bodies that often succeed, every string in them arbitrary Unicode."""
    item = {"title": st.none() | unicode_text, "metadata": metadata_objects}
    content = st.text(min_size=1, max_size=60)
    if op.operation_id == "upsertKnowledgeDoc":
        return st.fixed_dictionaries({"content": content}, optional=item)
    if op.operation_id == "upsertKnowledgeDocs":
        one = st.fixed_dictionaries({"external_id": pool_ids, "content": content}, optional=item)
        return st.fixed_dictionaries({"items": st.lists(one, max_size=3)})
    if op.operation_id == "searchKnowledge":
        return st.fixed_dictionaries(
            {"query": st.text(min_size=1, max_size=30)},
            optional={
                "k": st.integers(1, 10),
                "mode": st.sampled_from(["hybrid", "semantic", "keyword"]),
                "metadata": metadata_objects,
                "external_ids": st.lists(pool_ids, max_size=3),
            },
        )
    if op.operation_id in ("createPersona", "updatePersona"):
        assert op.body is not None
        fields = {
            name: metadata_objects if name == "metadata" else st.none() | unicode_text
            for name in op.body.model_fields
        }
        if op.operation_id == "updatePersona":
            return st.fixed_dictionaries({}, optional=fields)
        fields.pop("name")
        return st.fixed_dictionaries({"name": unicode_text}, optional=fields)
    if op.operation_id == "setPersonaKnowledge":
        return st.fixed_dictionaries({"external_ids": st.lists(pool_ids, max_size=4)})
    return None


@dataclass(frozen=True)
class Step:
    op: Operation
    path: dict[str, str]
    query: dict[str, str]
    body: Any


def steps() -> st.SearchStrategy[Step]:
    def of(op: Operation) -> st.SearchStrategy[Step]:
        body: st.SearchStrategy[Any] = st.none()
        if op.body is not None:
            usual = plausible(op)
            body = near_valid(op.body) if usual is None else usual | near_valid(op.body)
        path = st.sampled_from([EXISTING, "a", "b", "per_nope"]) | path_values()
        limit = st.integers(1, 3).map(lambda n: {"limit": str(n)})
        return st.builds(
            Step,
            op=st.just(op),
            path=st.fixed_dictionaries({name: path for name in op.path_params}),
            query=limit | queries(op) if op.query is not None else st.just({}),
            body=body,
        )

    return st.sampled_from(OPERATIONS).flatmap(of)


#: What differs between two apps however alike their data: times, request ids, timings, and
#: the count of requests (recorded after the answer, so not always by the next one).
VOLATILE = {
    "created_at",
    "updated_at",
    "request_id",
    "took_ms",
    "period_start",
    "period_end",
    "requests",
}
PERSONA_ID = re.compile(r"per_[0-9A-Z]{26}")


@dataclass
class Twin:
    """One app, a client of it, and its seeded persona's id (ids differ between the apps)."""

    client: httpx.AsyncClient
    persona: str
    ids: dict[str, str]

    def stable(self, value: Any) -> Any:
        """`value` without what may differ between the apps, persona ids numbered in order of
        appearance."""
        if isinstance(value, dict):
            return {k: self.stable(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [self.stable(v) for v in value]
        if isinstance(value, str):
            return PERSONA_ID.sub(
                lambda m: self.ids.setdefault(m[0], f"per_{len(self.ids)}"), value
            )
        return value


@pytest.fixture
async def twins(
    request: pytest.FixtureRequest, model: Model, tmp_path: Path
) -> AsyncIterator[list[Twin]]:
    """An app on SQLite and one on PostgreSQL, each with one user, one document, one persona."""
    if "postgresql" not in request.config.getoption("engines").split(","):
        pytest.skip("compares SQLite with PostgreSQL")
    server: pg.PostgresServer = request.getfixturevalue("postgres")
    name = await server.new_database()
    try:
        async with AsyncExitStack() as stack:
            out = []
            for engine, url in (("sqlite", ""), ("postgresql", server.url(name))):
                settings = Settings.for_tests(tmp_path / engine, database_url=url)
                app = create_app(settings, model=model)
                await stack.enter_async_context(app.router.lifespan_context(app))
                key = await new_key(app, plan="unlimited")
                client = await stack.enter_async_context(client_for(app, **{"X-Api-Key": key}))
                await client.put(
                    "/api/knowledge/docs/by-external-id/seed",
                    json={"content": "The seed document.", "metadata": {"n": 1}},
                )
                persona = (await client.post("/api/personas", json={"name": "Seed"})).json()
                twin = Twin(client, persona["id"], {})
                twin.stable(persona["id"])
                out.append(twin)
            yield out
    finally:
        await server.drop_database(name)


@settings(
    max_examples=SEQUENCES,
    deadline=None,
    database=None,
    # The apps live across examples on purpose: their data must stay alike whatever came before.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(steps(), min_size=1, max_size=5))
async def test_engines_agree_on_operation_sequences(
    twins: list[Twin], sequence: list[Step]
) -> None:
    for step in sequence:
        answers = []
        for twin in twins:
            path = step.op.path
            for name, value in step.path.items():
                value = (
                    {"external_id": "seed", "id": twin.persona}[name]
                    if value == EXISTING
                    else value
                )
                path = path.replace(f"{{{name}:str}}", value)
            content = None if step.body is None else json.dumps(step.body).encode()
            r = await twin.client.request(
                step.op.method,
                path,
                params=step.query,
                content=content,
                headers={"content-type": "application/json"},
            )
            assert r.status_code < 500, r.text[:2000]
            body = r.json() if r.content else None
            if r.status_code >= 400:
                assert r.headers["content-type"].startswith("application/problem+json")
                assert body["status"] == r.status_code and body["code"]
            elif step.op.operation_id == "searchKnowledge":
                # Semantic rankings are each engine's own (SQLite's coarse pass is approximate);
                # keyword answers are compared in tests/services/test_keyword_engines.py. That
                # both answer, and alike for refusals, is what is compared here.
                body = None
            answers.append((r.status_code, twin.stable(body)))
        assert answers[0] == answers[1], (step, answers)
        event(f"{step.op.operation_id} {answers[0][0]}")  # --hypothesis-show-statistics
    # And what is stored is the same, read back in full.
    for path in ("/api/knowledge/docs?limit=100", "/api/personas?limit=100"):
        stored = [twin.stable((await twin.client.get(path)).json()) for twin in twins]
        assert stored[0] == stored[1], path
    docs = [(await twins[0].client.get("/api/knowledge/docs?limit=100")).json()["items"]]
    for doc in docs[0]:
        one = f"/api/knowledge/docs/by-external-id/{doc['external_id']}"
        read = [twin.stable((await twin.client.get(one)).json()) for twin in twins]
        assert read[0] == read[1], one
