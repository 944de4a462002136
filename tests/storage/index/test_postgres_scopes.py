"""PostgreSQL's resolved scopes (app/storage/index/postgres_scopes.py): a scope of document
conditions is resolved to chunk ids once per key of the user's data and kept; two apps on one
database stand for two server processes. The scoped answer is the exact one (every in-scope
chunk scored in numpy here, documents by their best chunk) whichever way the index ranks it,
and a write through the other app, or by SQL beside the app, is seen by the next search."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.models.json_equality import json_equal
from app.services.runtime import Runtime
from app.storage.index import postgres_scopes
from app.storage.index.postgres import PostgresIndex
from app.storage.index.postgres_vectors import ResidentVectors
from tests.conftest import AppFactory, client_for, new_key
from tests.services.test_search import TOPICS, long_text

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]

SEARCH = "/api/knowledge/search"
EMAIL = "scopes@example.com"


def index_of(app: Starlette) -> PostgresIndex:
    runtime: Runtime = app.state.runtime
    assert isinstance(runtime.index, PostgresIndex)
    return runtime.index


async def found(
    client: httpx.AsyncClient, query: str, mode: str = "semantic", **scope: Any
) -> list[str]:
    r = await client.post(SEARCH, json={"query": query, "mode": mode, "k": 50, **scope})
    assert r.status_code == 200, r.text
    return [hit["external_id"] for hit in r.json()["results"]]


async def exact(app: Starlette, query: str, metadata: dict[str, Any]) -> list[str]:
    """The documents whose metadata holds `metadata`, by their chunk most similar to the query
    (cosine, ties by chunk id), every chunk of the user scored."""
    runtime: Runtime = app.state.runtime
    vector = np.asarray((await runtime.embedder.embed([query], lane="query"))[0], np.float64)
    async with runtime.db.read() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT c.id, d.external_id, c.embedding, d.metadata FROM chunks AS c"
                    " JOIN knowledge_docs AS d ON d.id = c.doc_id JOIN users AS u"
                    " ON u.id = c.user_id WHERE u.email = :e"
                ),
                {"e": EMAIL},
            )
        ).all()
    scored = []
    for chunk_id, external_id, embedding, meta in rows:
        if all(k in (meta or {}) and json_equal(meta[k], v) for k, v in metadata.items()):
            e = np.asarray(embedding, np.float64)
            scored.append(
                (
                    -float(e @ vector / np.linalg.norm(e) / np.linalg.norm(vector)),
                    chunk_id,
                    external_id,
                )
            )
    ordered: list[str] = []
    for _, _, external_id in sorted(scored):
        if external_id not in ordered:
            ordered.append(external_id)
    return ordered


@pytest.mark.parametrize("path", ["kept matrix", "exact by ids", "walk filtered by ids"])
async def test_a_kept_scope_answers_exactly_and_follows_every_change(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    writer, reader = await make_app(), await make_app()
    index = index_of(reader)
    if path != "kept matrix":
        # Stands in for a user too large for a kept matrix (over 10,000 chunks: too slow to
        # embed here): the passes go to SQL, the scope cache stays on.
        index.residents = ResidentVectors(0)
    if path == "walk filtered by ids":
        # Every scope walks the user's nearest chunks, however small.
        monkeypatch.setattr(postgres_scopes, "EXACT_PER_CANDIDATE", 0)
    key = await new_key(writer, EMAIL, plan="unlimited")
    items = [
        {
            "external_id": f"d{i}",
            "content": long_text(topic, 1 + 12 * (i % 3)),
            "metadata": {"p": i % 2, "n": i},
        }
        for i, topic in enumerate(TOPICS * 2)
    ]
    p1 = {"metadata": {"p": 1}}
    async with (
        client_for(writer, **{"X-Api-Key": key}) as w,
        client_for(reader, **{"X-Api-Key": key}) as r,
    ):
        put = await w.put("/api/knowledge/docs", json={"items": items})
        assert put.status_code == 200, put.text

        async def check(query: str) -> list[str]:
            answer = await found(r, query, **p1)
            assert answer == await exact(reader, query, {"p": 1})
            return answer

        first = await check(TOPICS[3])
        assert len(first) == len(TOPICS) and all(int(d[1:]) % 2 for d in first)
        hits = index.scopes.hits
        assert await check(TOPICS[5]) and index.scopes.hits == hits + 1
        if path == "kept matrix":
            assert index.residents.hits >= 1

        # Through the other server: a document's metadata changes (its chunks do not) ...
        moved = {"content": long_text(TOPICS[0], 1), "metadata": {"p": 1}}
        put = await w.put("/api/knowledge/docs/by-external-id/d0", json=moved)
        assert put.status_code == 200, put.text
        assert "d0" in await check(TOPICS[0])
        # ... a document is added, another deleted ...
        added = {"content": TOPICS[2], "metadata": {"p": 1}}
        put = await w.put("/api/knowledge/docs/by-external-id/new", json=added)
        assert put.status_code == 201, put.text
        assert (await check(TOPICS[2]))[0] == "new"
        assert (await w.delete("/api/knowledge/docs/by-external-id/d3")).status_code == 204
        assert "d3" not in await check(TOPICS[3])
        # ... and by SQL beside the app (a cascade from `knowledge_docs` to the chunks).
        async with writer.state.runtime.db.write() as session:
            await session.execute(text("DELETE FROM knowledge_docs WHERE external_id = 'new'"))
        assert "new" not in await check(TOPICS[2])

        # Listed external ids are kept the same way.
        listed = {"external_ids": ["d5", "d7", "d9"]}
        assert sorted(await found(r, TOPICS[5], **listed)) == ["d5", "d7", "d9"]
        assert (await w.delete("/api/knowledge/docs/by-external-id/d7")).status_code == 204
        assert sorted(await found(r, TOPICS[5], **listed)) == ["d5", "d9"]

        # A scope of nothing, and the keyword half of a hybrid search, stay within the scope.
        assert await found(r, TOPICS[1], metadata={"p": 7}) == []
        hybrid = await found(r, TOPICS[1], "hybrid", **p1)
        expected = await exact(reader, TOPICS[1], {"p": 1})
        assert hybrid and set(hybrid) <= set(expected)
