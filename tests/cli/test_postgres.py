"""The operator's commands on PostgreSQL: accounts and schema upgrades against a database URL,
and `personaizer migrate --to` moving a SQLite deployment over without re-embedding anything."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import sqlean

from app.embedding.embedder import Model
from app.main import create_app
from app.services import operations
from app.settings import Settings
from tests.conftest import AppFactory, client_for, new_key
from tests.support import pg, servers

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]


async def test_accounts_and_upgrades_against_a_database_url(
    database_url: str, tmp_path: Path
) -> None:
    env = servers.clean_env(database_url=database_url, data_dir=str(tmp_path / "unused"))
    upgraded = servers.personaizer("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "already at revision" in upgraded.stdout and "postgresql" in upgraded.stdout
    assert servers.personaizer("users", "create", "pg@example.com", env=env).returncode == 0
    made = servers.personaizer("keys", "create", "pg@example.com", "--json", env=env)
    assert made.returncode == 0, made.stderr
    prefix = json.loads(made.stdout)["prefix"]
    listed = servers.personaizer("keys", "list", "pg@example.com", "--json", env=env)
    assert [k["prefix"] for k in json.loads(listed.stdout)] == [prefix]
    users = servers.personaizer("users", "list", "--json", env=env)
    assert [u["email"] for u in json.loads(users.stdout)] == ["pg@example.com"]
    # Nothing was written under the data dir: the data is in PostgreSQL.
    assert not (tmp_path / "unused" / "personaizer.db").exists()


def test_an_unsupported_database_url_is_one_line(tmp_path: Path) -> None:
    env = servers.clean_env(database_url="mysql://u@localhost/db", data_dir=str(tmp_path))
    r = servers.personaizer("users", "list", env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "unsupported database URL" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def test_migrate_copies_a_sqlite_deployment_without_re_embedding(
    postgres: pg.PostgresServer, make_app: AppFactory, model: Model, tmp_path: Path
) -> None:
    source_dir = tmp_path / "sqlite"
    queries = ["how fast is delivery", "lamp power", "password reset"]
    async with AsyncExitStack() as stack:
        source = create_app(Settings.for_tests(source_dir), model=model)
        await stack.enter_async_context(source.router.lifespan_context(source))
        key = await new_key(source, "move@example.com", plan="pro")
        api = await stack.enter_async_context(client_for(source, **{"X-Api-Key": key}))
        items = [
            {"external_id": "ship", "title": "Shipping", "content": "Orders ship in two days."},
            {"external_id": "lamp", "content": "The Aurora lamp has a USB-C port for power."},
            {"external_id": "pw", "content": "Reset a password from the sign-in page. " * 60},
        ]
        assert (await api.put("/api/knowledge/docs", json={"items": items})).status_code == 200
        persona = (await api.post("/api/personas", json={"name": "Ava"})).json()
        attach = {"external_ids": ["ship", "lamp"]}
        await api.put(f"/api/personas/{persona['id']}/knowledge", json=attach)
        before_docs = (await api.get("/api/knowledge/docs?include_content=true")).json()
        before_persona = (await api.get(f"/api/personas/{persona['id']}")).json()
        before_search = [
            (await api.post("/api/knowledge/search", json={"query": q, "mode": "semantic"})).json()
            for q in queries
        ]
        before_usage = (await api.get("/api/subscription/usage")).json()["usage"]
        # The server flushes request counts at shutdown: stop it before copying.
        await stack.aclose()

    target = postgres.url(await postgres.new_database(template=None))
    env = servers.clean_env(data_dir=str(source_dir))
    moved = servers.personaizer("migrate", "--to", target, env=env, timeout=300)
    assert moved.returncode == 0, moved.stderr
    assert "counts match, searches agree for 1 user" in moved.stdout

    app = await make_app(database_url=target)
    embedded = app.state.runtime.embedder.stats.texts
    async with client_for(app, **{"X-Api-Key": key}) as api:  # the same key works
        assert (await api.get("/api/knowledge/docs?include_content=true")).json() == before_docs
        assert (await api.get(f"/api/personas/{persona['id']}")).json() == before_persona
        for query, before in zip(queries, before_search, strict=True):
            after = (
                await api.post("/api/knowledge/search", json={"query": query, "mode": "semantic"})
            ).json()
            assert [(h["external_id"], h["chunk_index"]) for h in after["results"]] == [
                (h["external_id"], h["chunk_index"]) for h in before["results"]
            ]
            assert [h["score"] for h in after["results"]] == pytest.approx(
                [h["score"] for h in before["results"]], abs=1e-5
            )
        keyword = await api.post("/api/knowledge/search", json={"query": "lamp", "mode": "keyword"})
        assert keyword.json()["results"][0]["external_id"] == "lamp"
        after_usage = (await api.get("/api/subscription/usage")).json()["usage"]
        # New ids continue after the copied ones.
        created = await api.post("/api/personas", json={"name": "Leo"})
        assert created.status_code == 201
    # Only the queries were embedded: no document was re-embedded.
    assert app.state.runtime.embedder.stats.texts - embedded == len(queries)
    assert after_usage["embedded_chunks"] == before_usage["embedded_chunks"]
    assert after_usage["knowledge_docs"] == before_usage["knowledge_docs"]

    again = servers.personaizer("migrate", "--to", target, env=env, timeout=300)
    assert again.returncode == 1
    assert "already holds data" in again.stderr and len(again.stderr.splitlines()) == 1


async def test_migrate_refuses_while_a_server_serves_the_sqlite_file(
    postgres: pg.PostgresServer, tmp_path: Path
) -> None:
    """A copy made beside a running server would miss the writes it acknowledges meanwhile:
    refused, as `restore` is, and the target stays empty."""
    env = servers.clean_env(data_dir=str(tmp_path / "data"))
    assert servers.personaizer("init", env=env).returncode == 0
    target = postgres.url(await postgres.new_database(template=None))
    with servers.serve(env=env, log=tmp_path / "serve.log"):
        moved = servers.personaizer("migrate", "--to", target, env=env, timeout=300)
    assert moved.returncode == 1
    assert moved.stderr.startswith("error:") and "a server is using" in moved.stderr
    assert len(moved.stderr.strip().splitlines()) == 1
    # The target was not touched: not even its schema was made.
    untouched = servers.personaizer(
        "users", "list", env=servers.clean_env(database_url=target, data_dir=str(tmp_path / "x"))
    )
    assert untouched.returncode == 1 and "no personaizer database yet" in untouched.stderr
    # Once the server is gone the same copy goes through, and says which moment it copied.
    moved = servers.personaizer("migrate", "--to", target, env=env, timeout=300)
    assert moved.returncode == 0, moved.stderr
    assert " as of 20" in moved.stdout


async def test_migrate_refuses_a_source_that_changed_while_it_was_copied(
    postgres: pg.PostgresServer, tmp_path: Path
) -> None:
    """Where no lock can tell (a PostgreSQL source, or a writer that holds none), the copy is
    one snapshot; a source written meanwhile is refused before the target commits."""
    source = Settings.for_tests(tmp_path / "data")
    env = servers.clean_env(data_dir=str(tmp_path / "data"))
    assert servers.personaizer("init", env=env).returncode == 0
    assert servers.personaizer("users", "create", "w@example.com", env=env).returncode == 0
    target_url = postgres.url(await postgres.new_database(template=None))
    target = Settings.for_tests(tmp_path / "unused", database_url=target_url)
    database = tmp_path / "data" / "personaizer.db"
    written: list[str] = []

    def write_beside(line: str) -> None:
        # What a server still running does: a write of its own, acknowledged to its client.
        if not written:
            conn = sqlean.connect(str(database))
            try:
                conn.execute("UPDATE users SET plan_id = 'pro'")
                conn.execute(
                    "INSERT INTO usage_counters (user_id, period, embedded_chunks, requests)"
                    " SELECT id, '2026-12', 0, 1 FROM users"
                )
                conn.commit()
            finally:
                conn.close()
        written.append(line)

    with pytest.raises(operations.OperationError, match="changed while it was copied"):
        await operations.copy(source, target, progress=write_beside)
    after = servers.personaizer(
        "users",
        "list",
        "--json",
        env=servers.clean_env(database_url=target_url, data_dir=str(tmp_path / "x")),
    )
    assert after.returncode == 0 and json.loads(after.stdout) == []
