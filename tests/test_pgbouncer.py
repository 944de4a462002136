"""A server behind PgBouncer in transaction pooling mode (docs/scaling.md, "Connections"): with
`PERSONAIZER_DATABASE_POOLER=transaction` it writes and searches as it does on a direct
connection, while its own pool of client connections shares two server connections, so
consecutive transactions of one client connection run on different server connections.

Without the setting the same run fails: asyncpg's prepared statements, named per client
connection, collide on a shared server connection ("prepared statement ... already exists")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.support import pg, servers

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]


async def test_a_server_behind_pgbouncer_in_transaction_mode_writes_and_searches(
    database_url: str, postgres: pg.PostgresServer, tmp_path: Path
) -> None:
    database = urlsplit(database_url).path.lstrip("/")
    with servers.pgbouncer(
        tmp_path / "pgbouncer", socket_dir=postgres.socket_dir, database=database, pool_size=2
    ) as pooled_url:
        env = servers.clean_env(
            data_dir=str(tmp_path / "data"), database_url=pooled_url, database_pooler="transaction"
        )
        made = servers.personaizer("users", "create", "pool@example.com", "--plan", "pro", env=env)
        assert made.returncode == 0, made.stderr
        key = servers.personaizer("keys", "create", "pool@example.com", "--json", env=env)
        assert key.returncode == 0, key.stderr
        h = {"X-Api-Key": json.loads(key.stdout)["key"]}
        with servers.serve(env=env, log=tmp_path / "serve.log") as base:
            async with httpx.AsyncClient(base_url=base, headers=h, timeout=120) as http:
                batch = [
                    {"external_id": f"doc-{i}", "content": f"Document {i} is about topic {i}."}
                    for i in range(20)
                ]
                r = await http.put("/api/knowledge/docs", json={"items": batch})
                assert r.status_code == 200, r.text
                assert r.json()["summary"]["created"] == 20

                # Many transactions at once over the two server connections: single upserts,
                # replays, reads and searches side by side.
                def one(i: int) -> list[httpx.Request]:
                    return [
                        http.build_request(
                            "PUT",
                            f"/api/knowledge/docs/by-external-id/single-{i}",
                            json={"content": f"A single lamp number {i} with a USB-C port."},
                        ),
                        http.build_request(
                            "PUT", "/api/knowledge/docs", json={"items": batch[i : i + 1]}
                        ),
                        http.build_request("GET", f"/api/knowledge/docs/by-external-id/doc-{i}"),
                        http.build_request(
                            "POST", "/api/knowledge/search", json={"query": f"topic {i}", "k": 3}
                        ),
                    ]

                answers = await asyncio.gather(
                    *(http.send(request) for i in range(16) for request in one(i))
                )
                statuses = [r.status_code for r in answers]
                assert all(code in (200, 201) for code in statuses), [
                    (r.request.url.path, r.status_code, r.text[:200])
                    for r in answers
                    if r.status_code not in (200, 201)
                ]
                for i in range(16):
                    replay = answers[4 * i + 1].json()
                    assert replay["results"][0]["status"] == "no_op"
                    hits = answers[4 * i + 3].json()["results"]
                    assert hits and hits[0]["external_id"] == f"doc-{i}", hits[:1]

                listed = await http.get("/api/knowledge/docs", params={"limit": 100})
                assert listed.json()["total"] == 36

        # What the server wrote through the pooler is in the database.
        conn = await asyncpg.connect(postgres.dsn(database))
        try:
            count = await conn.fetchval("SELECT count(*) FROM knowledge_docs")
        finally:
            await conn.close()
        assert count == 36
        assert "Traceback" not in (tmp_path / "serve.log").read_text()
