"""GraphQL test helpers: post an operation, read its data or its one error."""

from __future__ import annotations

import re
from typing import Any

import httpx

GRAPHQL = "/graphql"

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
#: GraphQL enums whose values are REST's strings in upper case.
ENUM_FIELDS = {"status", "mode", "op"}


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    return await client.post(GRAPHQL, json=body)


async def gql_data(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = await gql(client, query, variables)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def single_error(response: httpx.Response, http_status: int = 200) -> dict[str, Any]:
    """The response's one error, checked for the contract's extensions."""
    assert response.status_code == http_status, response.text
    body = response.json()
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    extensions = error["extensions"]
    assert set(extensions) >= {"code", "status", "request_id"}
    assert extensions["request_id"] == response.headers["x-request-id"]
    return error


def snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def as_rest(value: Any, key: str | None = None) -> Any:
    """GraphQL data in REST's spelling: snake_case keys (metadata left alone), enums lower case."""
    if isinstance(value, dict):
        if key == "metadata":
            return value
        return {snake(k): as_rest(v, snake(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [as_rest(v, key) for v in value]
    if isinstance(value, str) and key in ENUM_FIELDS:
        return value.lower()
    return value
