"""List order is byte order on both engines, whatever the database's collation: the same
documents come back in the same order, and keyset cursors page through them exactly."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.services.runtime import Runtime
from tests.conftest import client_for, new_key

pytestmark = pytest.mark.anyio

#: Ids whose order differs between byte order and a linguistic collation (en_US puts `a`
#: before `B` and ignores punctuation at first).
IDS = ["B", "a", "_x", "Z-1", "0", "a.b", "a:b", "A", "a-c", "ab", "Ab", "z", "9.z"]


async def test_documents_list_in_byte_order_page_by_page(app: Starlette) -> None:
    key = await new_key(app)
    async with client_for(app, **{"X-Api-Key": key}) as api:
        items = [{"external_id": i, "content": f"Document {i}."} for i in IDS]
        assert (await api.put("/api/knowledge/docs", json={"items": items})).status_code == 200
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/api/knowledge/docs", params=params)).json()
            seen += [d["external_id"] for d in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
    assert seen == sorted(IDS, key=lambda s: s.encode())


@pytest.mark.engines("postgresql")
async def test_postgres_columns_compare_bytes(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    async with runtime.db.read() as session:
        rows = await session.execute(
            text(
                "SELECT table_name, column_name, collation_name FROM information_schema.columns"
                " WHERE (table_name, column_name) IN (('knowledge_docs', 'external_id'),"
                " ('personas', 'id'), ('persona_knowledge', 'persona_id'))"
            )
        )
        collations = {(r[0], r[1]): r[2] for r in rows}
    assert collations == {
        ("knowledge_docs", "external_id"): "C",
        ("personas", "id"): "C",
        ("persona_knowledge", "persona_id"): "C",
    }
