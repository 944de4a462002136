"""Storage: the sqlean-backed dialect, pragmas, and schema versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlean
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from app import db as dbmod
from app.db import Database, SchemaError
from app.models import User, utcnow
from app.settings import Settings

pytestmark = pytest.mark.anyio


async def new_db(path: Path) -> Database:
    database = Database(Settings.for_tests(path))
    await database.migrate()
    return database


async def test_integrity_conflict_surfaces_as_sqlalchemy_error(tmp_path: Path) -> None:
    database = await new_db(tmp_path)
    try:
        async with database.write() as session:
            session.add(User(email="a@x.example", plan_id="free", created_at=utcnow()))
        with pytest.raises(IntegrityError) as info:
            async with database.write() as session:
                session.add(User(email="a@x.example", plan_id="free", created_at=utcnow()))
        # The driver error is sqlean's, wrapped: the stock sqlite3 mapping would miss it.
        assert isinstance(info.value.orig, sqlean.IntegrityError)
    finally:
        await database.dispose()


async def test_pragmas_and_extensions(tmp_path: Path) -> None:
    database = await new_db(tmp_path)
    try:
        async with database.read() as session:
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await session.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (await session.execute(text("PRAGMA busy_timeout"))).scalar_one() == 10_000
            assert (
                (await session.execute(text("SELECT vec_version()")))
                .scalar_one()
                .startswith("v0.1")
            )
            assert (
                await session.execute(text("PRAGMA user_version"))
            ).scalar_one() == dbmod.SCHEMA_VERSION
        assert max(dbmod._MIGRATIONS) == dbmod.SCHEMA_VERSION
    finally:
        await database.dispose()


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    database = await new_db(tmp_path)
    await database.dispose()
    conn = sqlean.connect(str(tmp_path / "personaizer.db"))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    database = Database(Settings.for_tests(tmp_path))
    with pytest.raises(SchemaError, match="newer than this server"):
        await database.migrate()
    await database.dispose()
    conn = sqlean.connect(str(tmp_path / "personaizer.db"))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
    conn.close()


async def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    conn = sqlean.connect(str(tmp_path / "personaizer.db"))
    conn.execute("CREATE TABLE precious (x)")
    conn.commit()
    conn.close()
    database = Database(Settings.for_tests(tmp_path))
    with pytest.raises(SchemaError, match="not a personaizer database"):
        await database.migrate()
    await database.dispose()


async def test_older_schema_is_upgraded_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = await new_db(tmp_path)
    async with database.write() as session:
        session.add(User(email="keep@x.example", plan_id="free", created_at=utcnow()))
    await database.dispose()

    def add_column(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER TABLE users ADD COLUMN nickname TEXT")

    nxt = dbmod.SCHEMA_VERSION + 1
    monkeypatch.setitem(dbmod._MIGRATIONS, nxt, add_column)
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", nxt)
    database = Database(Settings.for_tests(tmp_path))
    await database.migrate()
    async with database.read() as session:
        assert (await session.execute(text("PRAGMA user_version"))).scalar_one() == nxt
        row = (await session.execute(text("SELECT email, nickname FROM users"))).one()
    assert tuple(row) == ("keep@x.example", None)
    assert (tmp_path / f"personaizer.db.v{nxt - 1}.bak").exists()
    await database.dispose()


async def test_a_file_with_a_different_layout_is_refused(tmp_path: Path) -> None:
    database = await new_db(tmp_path)
    await database.dispose()
    conn = sqlean.connect(str(tmp_path / "personaizer.db"))
    conn.execute("ALTER TABLE chunks DROP COLUMN embed_sha256")
    conn.commit()
    conn.close()
    database = Database(Settings.for_tests(tmp_path))
    with pytest.raises(SchemaError, match="chunks lacks embed_sha256"):
        await database.migrate()
    await database.dispose()
