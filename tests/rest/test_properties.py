"""Property: whatever a client sends to any REST operation (body, query parameters, path values,
headers), the answer is never a 5xx, and a refusal changes nothing.

One test per operation, from the same `Operation` list that routes the server, so a new operation
is covered when it is declared. Bodies are drawn from four families: near-valid ones built from
the operation's request model (right field names, arbitrary values), arbitrary JSON, arbitrary
bytes, and known-hostile JSON texts.
"""

from __future__ import annotations

import base64
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.applications import Starlette

from app.rest import OPERATIONS
from app.rest.operations import Operation
from tests.http.test_intake import fingerprint

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
