"""Property: every query and mutation of `schema.graphql`, with arbitrary argument values (as
literals or as variables, of the right type or not), arbitrary selections, aliases and
fragments, answers without HTTP 5xx or `server.internal_error`, and a refused mutation leaves
the stored documents and personas exactly as they were.

Operations are built from the checked-in SDL, so a new field is covered without a new test.
Three kinds of input are left to the tests of the body intake and the services that own them
(issue 9, item 1): strings with lone surrogates, times near year 1 or 9999 with an offset, and
JSON nested deeper than a few levels or holding non-finite numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    Undefined,
    build_schema,
    get_named_type,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from app.embedding.embedder import Model
from app.main import create_app
from app.settings import Settings
from tests.conftest import client_for, new_key

ROOT = Path(__file__).resolve().parents[2]
SDL = build_schema((ROOT / "schema.graphql").read_text(encoding="utf-8"))
QUERY_TYPE = SDL.query_type
MUTATION_TYPE = SDL.mutation_type
assert QUERY_TYPE is not None and MUTATION_TYPE is not None
OPERATIONS = [("query", name) for name in QUERY_TYPE.fields] + [
    ("mutation", name) for name in MUTATION_TYPE.fields
]
#: Documents and a persona that exist, so that generated ids sometimes name real things.
SEEDED_DOCS = ["a", "b", "guide:reset.md"]
EXAMPLES = 25


# --- values ----------------------------------------------------------------------------------


def rarely() -> st.SearchStrategy[bool]:
    """True about one time in eight: most of an operation stays plausible, so that the
    server's checks beyond the first one, and its successes, are reached too."""
    return st.integers(0, 7).map(lambda n: n == 3)


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return rarely().flatmap(lambda r: odd if r else usual)


class EnumValue(str):
    """An enum value: bare in a literal, a string in variables."""


@dataclass(frozen=True)
class Known:
    persona_ids: list[str]


def _text() -> st.SearchStrategy[str]:
    # Lone surrogates ("Cs") are the body intake's to refuse; see the module docstring.
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def _external_ids() -> st.SearchStrategy[str]:
    return mostly(
        st.one_of(
            st.sampled_from(SEEDED_DOCS), st.from_regex(r"[A-Za-z0-9._:-]{1,12}", fullmatch=True)
        ),
        _text(),
    )


def _times() -> st.SearchStrategy[str]:
    moments = st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    )
    return mostly(moments.map(lambda d: d.isoformat()), _text())


def _json(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        _text(),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_text(), inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def _scalar(type_: GraphQLScalarType, known: Known) -> st.SearchStrategy[Any]:
    if type_.name == "Int":
        return mostly(st.integers(1, 60), st.integers(-(2**40), 2**40))
    if type_.name == "Float":
        return st.floats(allow_nan=False, allow_infinity=False)
    if type_.name == "Boolean":
        return st.booleans()
    if type_.name == "ID":
        return mostly(st.sampled_from(known.persona_ids), _text())
    if type_.name == "DateTime":
        return _times()
    if type_.name == "JSON":
        return mostly(st.dictionaries(_text(), _json(max_leaves=4), max_size=3), _json())
    if type_.name == "BigInt":
        return st.integers(-(2**60), 2**60)
    return _external_ids()  # String: most of them name documents


def typed(type_: GraphQLInputType, known: Known) -> st.SearchStrategy[Any]:
    """Values of the argument's type (the server may still refuse them: ranges, formats)."""
    if isinstance(type_, GraphQLNonNull):
        return typed(type_.of_type, known)
    if isinstance(type_, GraphQLList):
        return st.lists(typed(type_.of_type, known), max_size=4)
    if isinstance(type_, GraphQLEnumType):
        return st.sampled_from([EnumValue(name) for name in type_.values])
    if isinstance(type_, GraphQLInputObjectType):
        required = {
            name: typed(f.type, known)
            for name, f in type_.fields.items()
            if isinstance(f.type, GraphQLNonNull)
        }
        optional = {
            name: st.one_of(st.none(), typed(f.type, known))
            for name, f in type_.fields.items()
            if not isinstance(f.type, GraphQLNonNull)
        }
        return st.fixed_dictionaries(required, optional=optional)
    assert isinstance(type_, GraphQLScalarType)
    return _scalar(type_, known)


def value_for(type_: GraphQLInputType, known: Known) -> st.SearchStrategy[Any]:
    """Mostly values of the right type, sometimes anything at all."""
    return mostly(typed(type_, known), _json(max_leaves=4))


_NAME_START = "_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def literal(value: Any) -> str:
    """`value` as a GraphQL literal. Object keys that are not GraphQL names make a document
    that does not parse, which is one more refusal to check."""
    if isinstance(value, EnumValue):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k or '_'}: {literal(v)}" for k, v in value.items()) + "}"


# --- documents -------------------------------------------------------------------------------


@dataclass
class Draft:
    """A document being drawn: its variable definitions and values, and named fragments."""

    definitions: list[str]
    variables: dict[str, Any]
    fragments: list[str]


@st.composite
def arguments(draw: st.DrawFn, args: dict[str, GraphQLArgument], draft: Draft, known: Known) -> str:
    given: list[str] = []
    for name, argument in args.items():
        required = isinstance(argument.type, GraphQLNonNull) and argument.default_value is Undefined
        if draw(rarely()) if required else draw(st.booleans()):
            continue  # left out
        value = draw(value_for(argument.type, known))
        if draw(st.booleans()):
            given.append(f"{name}: {literal(value)}")
            continue
        variable = f"v{len(draft.definitions)}"
        wrong = draw(rarely())
        declared = draw(st.sampled_from(["String", "[Int]"])) if wrong else str(argument.type)
        draft.definitions.append(f"${variable}: {declared}")
        if not draw(rarely()):
            draft.variables[variable] = value
        given.append(f"{name}: ${variable}")
    return f"({', '.join(given)})" if given else ""


@st.composite
def selection(
    draw: st.DrawFn, type_: GraphQLOutputType, draft: Draft, known: Known, depth: int
) -> str:
    named = get_named_type(type_)
    if not isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
        return ""
    if depth == 0:
        return "{ __typename }"
    names = draw(st.lists(st.sampled_from([*named.fields, "__typename"]), min_size=1, max_size=5))
    parts: list[str] = []
    for i, name in enumerate(names):
        alias = draw(st.sampled_from(["", f"f{i}: "]))
        if name == "__typename":
            parts.append(f"{alias}__typename")
            continue
        field = named.fields[name]
        args = draw(arguments(field.args, draft, known))
        inner = draw(selection(field.type, draft, known, depth - 1))
        parts.append(f"{alias}{name}{args} {inner}")
    body = " ".join(parts)
    shape = draw(st.sampled_from(["plain", "plain", "inline", "fragment"]))
    if shape == "inline":
        return f"{{ ... on {named.name} {{ {body} }} }}"
    if shape == "fragment":
        fragment = f"F{len(draft.fragments)}"
        draft.fragments.append(f"fragment {fragment} on {named.name} {{ {body} }}")
        return f"{{ ...{fragment} ...{fragment} }}"
    return f"{{ {body} }}"


@st.composite
def operations(draw: st.DrawFn, kind: str, field_name: str, known: Known) -> dict[str, Any]:
    root = QUERY_TYPE if kind == "query" else MUTATION_TYPE
    assert root is not None
    field = root.fields[field_name]
    draft = Draft([], {}, [])
    args = draw(arguments(field.args, draft, known))
    inner = draw(selection(field.type, draft, known, depth=3))
    alias = draw(st.sampled_from(["", "r: "]))
    header = f"{kind} Main" + (f"({', '.join(draft.definitions)})" if draft.definitions else "")
    document = " ".join([f"{header} {{ {alias}{field_name}{args} {inner} }}", *draft.fragments])
    body: dict[str, Any] = {"query": document, "variables": draft.variables}
    if draw(st.booleans()):
        body["query"] += " query Other { viewer { email } }"
        body["operationName"] = (
            "Main" if not draw(rarely()) else draw(st.sampled_from(["Other", "Nope", None]))
        )
    return body


# --- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    portal: BlockingPortal
    app: Starlette
    key: str
    known: Known

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return self.portal.call(self._post, body)

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        async with client_for(self.app, **{"X-Api-Key": self.key}) as api:
            return await api.post("/graphql", json=body)

    def stored(self) -> Any:
        """Every document (with content) and persona (with its attached set) of the user."""
        response = self.post({"query": STORED})
        data = response.json()["data"]
        assert data["knowledgeDocs"]["nextCursor"] is None, "more documents than one page"
        assert data["personas"]["nextCursor"] is None, "more personas than one page"
        return data


#: One request for all that a mutation could change (the runs stay well under 200 of each).
STORED = """{
  knowledgeDocs(first: 200) {
    items { externalId title content metadata contentSha256 chunkCount updatedAt }
    nextCursor
  }
  personas(first: 200) {
    items { id name description instructions greeting metadata knowledgeExternalIds updatedAt }
    nextCursor
  }
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model: Model) -> Iterator[Server]:
    """One app for the module, on the `unlimited` plan (no 429 hides a bug), with a few
    documents and a persona to aim at."""
    app = create_app(Settings.for_tests(tmp_path_factory.mktemp("props")), model=model)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        key = portal.call(new_key, app, "props@example.com", "unlimited")
        server = Server(portal, app, key, Known([]))
        items = [{"external_id": e, "content": f"About {e}."} for e in SEEDED_DOCS]
        assert server.post({"query": "{ viewer { email } }"}).status_code == 200
        created = portal.call(_seed, app, key, items)
        server.known.persona_ids.extend([created, "per_01ARZ3NDEKTSV4RRFFQ69G5FAV"])
        yield server


async def _seed(app: Starlette, key: str, items: list[dict[str, str]]) -> str:
    async with client_for(app, **{"X-Api-Key": key}) as api:
        assert (await api.put("/api/knowledge/docs", json={"items": items})).status_code == 200
        persona = await api.post("/api/personas", json={"name": "Ava"})
        persona_id: str = persona.json()["id"]
        attach = await api.put(
            f"/api/personas/{persona_id}/knowledge", json={"external_ids": SEEDED_DOCS[:2]}
        )
        assert attach.status_code == 200
        return persona_id


def refused(response: httpx.Response) -> bool:
    """The operation did not run: refused before execution, invalid, or its root field failed
    (an error deeper down means the root field ran, and may rightly have written)."""
    if response.status_code != 200:
        return True
    errors = response.json().get("errors") or []
    return any(len(e.get("path") or ()) <= 1 for e in errors)


@pytest.mark.parametrize(("kind", "field_name"), OPERATIONS)
def test_no_operation_fails_or_writes_when_refused(
    server: Server, kind: str, field_name: str
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=operations(kind, field_name, server.known))
    def check(body: dict[str, Any]) -> None:
        before = server.stored() if kind == "mutation" else None
        response = server.post(body)
        assert response.status_code < 500, (body, response.text)
        payload = response.json()
        codes = [e.get("extensions", {}).get("code") for e in payload.get("errors") or ()]
        assert "server.internal_error" not in codes, (body, payload)
        assert all(codes), payload  # every error carries its code
        if kind == "mutation" and refused(response):
            assert server.stored() == before, (body, payload)

    check()
