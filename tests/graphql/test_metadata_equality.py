"""Metadata equality through GraphQL: an upsert that changes a value's JSON type (`1` to
`true`, nested too) is an update, and one that only rewrites an equal value (`1` as `1.0`, keys
in another order) a no-op, as through REST (tests/rest/test_knowledge.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.graphql.conftest import gql_data
from tests.rest.test_knowledge import METADATA_CHANGES, METADATA_SAME

pytestmark = pytest.mark.anyio

UPSERT_ONE = (
    "mutation($id: String!, $input: KnowledgeDocInput!) "
    "{ upsertKnowledgeDoc(externalId: $id, input: $input) { status document { metadata } } }"
)
UPSERT_MANY = (
    "mutation($items: [KnowledgeDocItemInput!]!) { upsertKnowledgeDocs(items: $items) "
    "{ results { externalId status } } }"
)
DOC = "query($id: String!) { knowledgeDoc(externalId: $id) { metadata } }"

PAIRS = [(p.values, "UPDATED") for p in METADATA_CHANGES] + [
    (p.values, "NO_OP") for p in METADATA_SAME
]


async def test_single_upsert_compares_metadata_as_json(api: httpx.AsyncClient) -> None:
    for i, ((old, new), status) in enumerate(PAIRS):
        doc_id = f"g{i}"
        for metadata in (old, new):
            data = await gql_data(
                api,
                UPSERT_ONE,
                {"id": doc_id, "input": {"content": "Same text.", "metadata": metadata}},
            )
        assert data["upsertKnowledgeDoc"]["status"] == status, (old, new)
        kept = new if status == "UPDATED" else old
        shown = data["upsertKnowledgeDoc"]["document"]["metadata"]
        stored = (await gql_data(api, DOC, {"id": doc_id}))["knowledgeDoc"]["metadata"]
        assert json.dumps(shown) == json.dumps(stored) == json.dumps(kept), (old, new)


async def test_batch_upsert_compares_metadata_as_json(api: httpx.AsyncClient) -> None:
    def items(which: int) -> list[dict[str, Any]]:
        return [
            {"externalId": f"g{i}", "content": "Same text.", "metadata": pair[which]}
            for i, (pair, _) in enumerate(PAIRS)
        ]

    statuses: list[str] = []
    for which in (0, 1):
        statuses = []
        every = items(which)
        for start in range(0, len(every), 10):  # within the plan's batch_items
            data = await gql_data(api, UPSERT_MANY, {"items": every[start : start + 10]})
            statuses += [r["status"] for r in data["upsertKnowledgeDocs"]["results"]]
    assert statuses == [status for _, status in PAIRS]
