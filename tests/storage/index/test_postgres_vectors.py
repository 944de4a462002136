"""PostgreSQL's kept matrices (app/storage/index/postgres_vectors.py): two apps on one database
stand for two server processes, each with its own matrices. A search serves from a kept matrix,
and every change to the user's chunks, made through the other app or by SQL beside the app (a
cascade from `knowledge_docs`), is seen by the next search at once; the ranking is the one
pgvector's statement gives."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.services.runtime import Runtime
from app.storage.index.postgres import PostgresIndex
from app.storage.index.scope import Scope
from tests.conftest import AppFactory, client_for, new_key
from tests.services.test_search import TOPICS

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]

SEARCH = "/api/knowledge/search"


def index_of(app: Starlette) -> PostgresIndex:
    runtime: Runtime = app.state.runtime
    assert isinstance(runtime.index, PostgresIndex)
    return runtime.index


async def found(client: httpx.AsyncClient, query: str, mode: str = "semantic") -> list[str]:
    r = await client.post(SEARCH, json={"query": query, "mode": mode, "k": 50})
    assert r.status_code == 200, r.text
    return [hit["external_id"] for hit in r.json()["results"]]


async def test_a_kept_matrix_follows_every_change_made_anywhere(make_app: AppFactory) -> None:
    writer, reader = await make_app(), await make_app()
    key = await new_key(writer, "kept@example.com", plan="unlimited")
    kept = index_of(reader).residents
    async with (
        client_for(writer, **{"X-Api-Key": key}) as w,
        client_for(reader, **{"X-Api-Key": key}) as r,
    ):
        for i, topic in enumerate(TOPICS[:4]):
            put = await w.put(f"/api/knowledge/docs/by-external-id/t{i}", json={"content": topic})
            assert put.status_code == 201, put.text
        assert (await found(r, TOPICS[1]))[0] == "t1"
        assert (kept.builds, kept.hits) == (1, 0)
        assert (await found(r, TOPICS[2], "hybrid"))[0] == "t2"
        assert (kept.builds, kept.hits) == (1, 1)

        # A document written through the other process: found by the next search.
        put = await w.put("/api/knowledge/docs/by-external-id/new", json={"content": TOPICS[6]})
        assert put.status_code == 201
        assert (await found(r, TOPICS[6]))[0] == "new"
        assert kept.builds == 2
        # Hybrid reads the version with its keyword statement: the same answer.
        put = await w.put("/api/knowledge/docs/by-external-id/new2", json={"content": TOPICS[7]})
        assert put.status_code == 201
        assert (await found(r, TOPICS[7], "hybrid"))[0] == "new2"
        assert kept.builds == 3
        assert (await w.delete("/api/knowledge/docs/by-external-id/new2")).status_code == 204

        # Deleted through the other process, and by a cascade beside the app: gone at once.
        assert (await w.delete("/api/knowledge/docs/by-external-id/t1")).status_code == 204
        assert "t1" not in await found(r, TOPICS[1])
        async with writer.state.runtime.db.write() as session:
            await session.execute(text("DELETE FROM knowledge_docs WHERE external_id = 'new'"))
        assert "new" not in await found(r, TOPICS[6])
        assert sorted(await found(r, "anything")) == ["t0", "t2", "t3"]
        assert kept.builds == 5  # the two deletes before one search: one build


async def test_a_kept_matrix_ranks_as_pgvector_does(app: Starlette) -> None:
    """Every document's place and score, unscoped and scoped, equal to the SQL statement's."""
    key = await new_key(app, "rank@example.com", plan="unlimited")
    async with client_for(app, **{"X-Api-Key": key}) as client:
        items = [
            {
                "external_id": f"d{i}",
                "content": f"{topic}. " * (1 + i % 3),
                "metadata": {"p": i % 2},
            }
            for i, topic in enumerate(TOPICS)
        ]
        assert (await client.put("/api/knowledge/docs", json={"items": items})).status_code == 200
    runtime: Runtime = app.state.runtime
    index = index_of(app)
    vector = (await runtime.embedder.embed([TOPICS[3]], lane="query"))[0]
    async with runtime.db.read() as session:
        user_id = (
            await session.execute(text("SELECT id FROM users WHERE email = 'rank@example.com'"))
        ).scalar_one()
        for scope in (None, Scope(user_id=user_id, metadata={"p": 1})):
            within = None if scope is None else await index.restrict(session, scope)
            kept = await index.semantic(
                session, user_id=user_id, vector=vector, depth=len(TOPICS), within=within
            )
            sql = await index.semantic_sql(
                session, user_id=user_id, vector=vector, depth=len(TOPICS), within=within
            )
            assert [(r.doc_id, r.chunk_id) for r in kept] == [(r.doc_id, r.chunk_id) for r in sql]
            assert np.allclose([r.score for r in kept], [r.score for r in sql], atol=1e-6)
            assert len(kept) == (len(TOPICS) if scope is None else len(TOPICS) // 2)
    assert index.residents.hits >= 1
