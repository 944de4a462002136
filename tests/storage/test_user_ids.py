"""An account's id names one account forever, and a deleted account's writes go nowhere.

A user's id keys their rows, their usage, their rate windows and the search's caches. On SQLite
`users.id` was handed out as max(id) + 1, so a user created after the newest one was deleted got
its id, and a write of the deleted user still in flight landed in the new account."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from starlette.applications import Starlette

from app.embedding.embedder import Embedder, Model
from app.models import KnowledgeDocItem
from app.services import accounts, knowledge, personas
from app.services.runtime import Runtime
from app.settings import Settings
from app.storage import migrations
from app.storage.database import Database
from tests.conftest import assert_problem, client_for, new_key
from tests.services.test_search import TOPICS, long_text
from tests.support.old_schema import add_newer_objects, drop_newer_objects

pytestmark = pytest.mark.anyio


async def user_ids(runtime: Runtime) -> dict[str, int]:
    async with runtime.db.read() as session:
        rows = await session.execute(text("SELECT email, id FROM users"))
        return {row[0]: row[1] for row in rows}


async def count(runtime: Runtime, table: str) -> int:
    async with runtime.db.read() as session:
        return int((await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_a_deleted_users_id_is_never_handed_out_again(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    for email in ("a@x.example", "b@x.example"):
        await accounts.create_user(runtime=runtime, email=email)
        await accounts.create_key(runtime=runtime, email=email)
    before = await user_ids(runtime)
    await accounts.delete_user(runtime=runtime, email="b@x.example")
    await accounts.create_user(runtime=runtime, email="c@x.example")
    key = await accounts.create_key(runtime=runtime, email="c@x.example")
    after = await user_ids(runtime)
    assert after["c@x.example"] > before["b@x.example"]
    assert after["a@x.example"] == before["a@x.example"]
    # The new account starts from nothing: no usage, no documents of anyone else.
    async with client_for(app, **{"X-Api-Key": key.key}) as api:
        usage = (await api.get("/api/subscription/usage")).json()["usage"]
        assert usage["knowledge_docs"]["used"] == 0
        assert (await api.get("/api/knowledge/docs")).json()["total"] == 0


async def test_a_write_in_flight_when_its_user_is_deleted_fails_and_changes_nothing(
    app: Starlette,
) -> None:
    """User A's batch is embedding when the operator deletes A and creates B: A's request is
    answered 401 (its account is gone), and nothing of it is stored, in B's account or at all."""
    runtime: Runtime = app.state.runtime
    key_a = await new_key(app, "a@x.example", plan="unlimited")
    items = [
        {"external_id": f"doc-{i}", "content": long_text(TOPICS[i % len(TOPICS)], 1200)}
        for i in range(60)
    ]
    async with client_for(app, **{"X-Api-Key": key_a}) as api_a:
        upload = asyncio.create_task(api_a.put("/api/knowledge/docs", json={"items": items}))
        # Wait until the batch is being embedded: the request has authenticated, and its write
        # transaction is still to come.
        for _ in range(2000):
            if runtime.embedder.queue_depth > 0 or upload.done():
                break
            await asyncio.sleep(0.005)
        assert not upload.done(), "the batch finished before it could be interrupted"
        await accounts.delete_user(runtime=runtime, email="a@x.example")
        key_b = await new_key(app, "b@x.example")
        response = await upload
    assert_problem(response, 401, "auth.unauthorized")
    assert await count(runtime, "knowledge_docs") == 0
    assert await count(runtime, "chunks") == 0
    async with client_for(app, **{"X-Api-Key": key_b}) as api_b:
        assert (await api_b.get("/api/knowledge/docs")).json()["total"] == 0
        usage = (await api_b.get("/api/subscription/usage")).json()["usage"]
        assert usage["knowledge_docs"]["used"] == 0
        assert usage["embedded_chunks"]["used"] == 0


@pytest.mark.engines("sqlite")
async def test_revision_0005_keeps_every_account_whole(tmp_path: Path, model: Model) -> None:
    """A SQLite file at 0004 with two accounts, upgraded: the tables that refer to `users` keep
    every row (a rebuild with foreign keys on would have cascaded them away), foreign keys still
    cascade afterwards, and the id of a deleted newest user is not handed out again."""
    settings = Settings.for_tests(tmp_path)
    database = Database(settings)
    async with database.writer.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(migrations._config(c), "0004"))
        await conn.commit()
    await add_newer_objects(database)
    embedder = Embedder(model=model)
    await embedder.start()
    try:
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        for email in ("a@x.example", "b@x.example"):
            await accounts.create_user(runtime=runtime, email=email)
            key = (await accounts.create_key(runtime=runtime, email=email)).key
            principal = await accounts.authenticate(runtime=runtime, api_key=key)
            await knowledge.upsert_many(
                runtime=runtime,
                principal=principal,
                items=[KnowledgeDocItem(external_id="doc", content=long_text("tea", 50))],
            )
        tables = ("users", "api_keys", "knowledge_docs", "chunks")
        before = {t: await count(runtime, t) for t in tables}
        ids = await user_ids(runtime)
        await drop_newer_objects(database)
        await database.dispose()

        database = Database(settings)
        assert (await database.migrate()).revision == "0004"
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        assert {t: await count(runtime, t) for t in tables} == before
        assert await user_ids(runtime) == ids
        async with database.read() as session:
            assert (await session.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1

        await accounts.delete_user(runtime=runtime, email="b@x.example")
        assert await count(runtime, "knowledge_docs") == before["knowledge_docs"] - 1
        await accounts.create_user(runtime=runtime, email="c@x.example")
        assert (await user_ids(runtime))["c@x.example"] == ids["b@x.example"] + 1
        # What refers to a user still goes with them.
        key = (await accounts.create_key(runtime=runtime, email="a@x.example")).key
        principal = await accounts.authenticate(runtime=runtime, api_key=key)
        await personas.list_personas(runtime=runtime, principal=principal, limit=10)
        await accounts.delete_user(runtime=runtime, email="a@x.example")
        assert await count(runtime, "knowledge_docs") == 0
        assert await count(runtime, "api_keys") == 0
    finally:
        await embedder.stop()
        await database.dispose()
