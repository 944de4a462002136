"""The tools' schemas, in process: every tool has a rate-limit policy at the edge, and each
parameter's limits are read from the models' constants, so changing nothing but a constant
changes what an agent is told (the schema's bound, or its description)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.mcp import build_server
from app.mcp.edge import POLICIES
from app.models import (
    METADATA_MAX_BYTES,
    SEARCH_EXTERNAL_IDS_MAX,
    SEARCH_K_MAX,
    SEARCH_METADATA_KEYS_MAX,
    SEARCH_QUERY_MAX,
    SearchRequest,
)
from app.models.knowledge import DOC_NEIGHBOURS_MAX, DOC_PAGE_DEFAULT_CHARS, DOC_PAGE_MAX_CHARS
from app.models.pagination import DEFAULT_LIMIT, MAX_LIMIT

pytestmark = pytest.mark.anyio


async def schemas() -> dict[str, tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each tool's input schema and output schema, as `tools/list` gives them."""
    return {t.name: (t.input_schema, t.output_schema) for t in await build_server().list_tools()}


def states(text: str, value: str) -> bool:
    """Whether `text` gives `value` as a whole number (200 is not stated by 2000)."""
    return re.search(rf"(?<![\d,]){re.escape(value)}(?![\d,])", text) is not None


async def test_every_tool_has_its_policy() -> None:
    # The edge charges a call by its tool's name before the SDK parses it: a tool without an
    # entry would be charged as a read, whatever its REST twin is.
    assert set(await schemas()) == set(POLICIES)


async def test_bounds_are_the_models() -> None:
    tools = await schemas()
    search = tools["search_knowledge"][0]["properties"]
    assert search["query"]["maxLength"] == SEARCH_QUERY_MAX
    assert search["k"]["maximum"] == SEARCH_K_MAX
    for name in ("list_personas", "list_documents"):
        listing = tools[name][0]["properties"]
        assert listing["limit"]["maximum"] == MAX_LIMIT
        assert listing["limit"]["default"] == DEFAULT_LIMIT
    page = tools["get_document"][0]["properties"]
    assert page["max_chars"]["maximum"] == DOC_PAGE_MAX_CHARS
    assert page["max_chars"]["default"] == DOC_PAGE_DEFAULT_CHARS
    assert states(page["max_chars"]["description"], f"{DOC_PAGE_MAX_CHARS:,}")
    assert page["neighbours"]["maximum"] == DOC_NEIGHBOURS_MAX
    assert states(page["neighbours"]["description"], str(DOC_NEIGHBOURS_MAX))
    listing = tools["list_documents"][0]["properties"]
    assert states(listing["metadata"]["description"], str(SEARCH_METADATA_KEYS_MAX))


@pytest.mark.parametrize(
    ("parameter", "limit"),
    [
        ("external_ids", f"{SEARCH_EXTERNAL_IDS_MAX}"),
        ("metadata", f"{SEARCH_METADATA_KEYS_MAX}"),
        ("metadata", f"{METADATA_MAX_BYTES:,}"),
    ],
)
async def test_descriptions_state_the_models_limits(parameter: str, limit: str) -> None:
    text = (await schemas())["search_knowledge"][0]["properties"][parameter]["description"]
    assert states(text, limit), text


async def test_descriptions_are_the_request_models() -> None:
    search = (await schemas())["search_knowledge"][0]["properties"]
    for name in ("query", "min_score"):
        assert search[name]["description"] == SearchRequest.model_fields[name].description


async def test_attached_documents_state_the_page_limit() -> None:
    output = (await schemas())["get_persona"][1]
    assert output is not None
    text = output["properties"]["documents"]["description"]
    assert states(text, str(MAX_LIMIT)), text
