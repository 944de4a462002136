"""Storage on both engines: drivers, schema upgrades with Alembic, refusals, the SQLite specifics."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import sqlean
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Integer, String, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from app.embedding.embedder import Embedder, Model
from app.models import Chunk, KnowledgeDoc, KnowledgeDocItem, SearchRequest, User, utcnow
from app.services import accounts, feed, knowledge
from app.services import search as search_service
from app.services.runtime import Principal, Runtime
from app.settings import Settings
from app.storage import migrations, plan_rows
from app.storage.database import Database, SchemaError, async_url
from app.storage.index.words import terms
from tests.services.test_search import QUERIES, TOPICS, long_text
from tests.support import pg
from tests.support.keyword_tables import assert_keyword_tables_derived
from tests.support.old_schema import (
    add_keyword_tables,
    add_newer_objects,
    drop_keyword_tables,
    drop_newer_objects,
)

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
async def settings(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Settings]:
    """Settings for an empty database (not even the schema) on `engine`."""
    if engine == "sqlite":
        yield Settings.for_tests(tmp_path)
        return
    server: pg.PostgresServer = request.getfixturevalue("postgres")
    name = await server.new_database(template=None)
    try:
        yield Settings.for_tests(tmp_path, database_url=server.url(name))
    finally:
        await server.drop_database(name)


async def opened(settings: Settings) -> Database:
    database = Database(settings)
    await database.migrate()
    return database


async def execute(settings: Settings, *statements: str) -> None:
    """Run raw SQL beside the server (as an operator, or a different build, would)."""
    database = Database(settings)
    try:
        async with database.writer.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
            await conn.commit()
    finally:
        await database.dispose()


async def revision(settings: Settings) -> str | None:
    database = Database(settings)
    try:
        async with database.writer.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await database.dispose()


async def test_a_new_database_is_at_head_and_matches_the_models(settings: Settings) -> None:
    database = await opened(settings)
    try:
        async with database.writer.connect() as conn:

            def differences(c: Connection) -> list[object]:
                context = MigrationContext.configure(c)
                # Objects the migrations add for one engine's index only are not in the models.
                return [
                    d
                    for d in compare_metadata(context, SQLModel.metadata)
                    if not (d[0] == "remove_index" or d[0] == "remove_table")
                ]

            assert await conn.run_sync(differences) == []
    finally:
        await database.dispose()
    assert await revision(settings) == migrations.head()
    # Opening it again changes nothing.
    again = await opened(settings)
    assert (await again.migrate()).current
    await again.dispose()


async def test_integrity_conflict_surfaces_as_sqlalchemy_error(settings: Settings) -> None:
    database = await opened(settings)
    try:
        async with database.write() as session:
            session.add(User(email="a@x.example", plan_id="free", created_at=utcnow()))
        with pytest.raises(IntegrityError) as info:
            async with database.write() as session:
                session.add(User(email="a@x.example", plan_id="free", created_at=utcnow()))
        if database.dialect == "sqlite":
            # The driver error is sqlean's, wrapped: the stock sqlite3 mapping would miss it.
            assert isinstance(info.value.orig, sqlean.IntegrityError)
    finally:
        await database.dispose()


async def test_read_row_reads_typed_values_as_a_session_would(settings: Settings) -> None:
    """`Database.read_row` (the key lookup of every request; one hop on SQLite) gives the row
    a session's statement gives, its values read back by their column types; None for no
    row; and leaves no transaction behind (a write right after is seen)."""
    database = await opened(settings)
    statement = text(
        "SELECT id AS user_id, email, created_at FROM users WHERE email = :email"
    ).columns(
        user_id=Integer(),
        email=String(),
        created_at=User.__table__.c.created_at.type,  # type: ignore[attr-defined]
    )
    try:
        async with database.write() as session:
            session.add(User(email="r@x.example", plan_id="free", created_at=utcnow()))
        row = await database.read_row(statement, {"email": "r@x.example"})
        async with database.read() as session:
            expected = (await session.execute(statement, {"email": "r@x.example"})).one()
        assert row == dict(expected._mapping)
        assert isinstance(row["created_at"], datetime) and row["created_at"].tzinfo is not None
        assert await database.read_row(statement, {"email": "s@x.example"}) is None
        async with database.write() as session:
            session.add(User(email="s@x.example", plan_id="free", created_at=utcnow()))
        assert await database.read_row(statement, {"email": "s@x.example"}) is not None
    finally:
        await database.dispose()


@pytest.mark.engines("postgresql")
async def test_read_row_is_one_round_trip_on_postgres(settings: Settings) -> None:
    """On PostgreSQL `read_row` sends its statement alone, outside a transaction block: no
    BEGIN before it (which would have made its transaction REPEATABLE READ, as a read session's
    is) nor ROLLBACK after it."""
    database = await opened(settings)
    level = text("SELECT current_setting('transaction_isolation') AS level").columns(level=String())
    try:
        assert await database.read_row(level, {}) == {"level": "read committed"}
        async with database.read() as session:
            assert (await session.execute(level)).scalar_one() == "repeatable read"
    finally:
        await database.dispose()


async def test_vectors_round_trip(settings: Settings) -> None:
    database = await opened(settings)
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    try:
        async with database.write() as session:
            session.add(User(id=1, email="v@x.example", plan_id="free", created_at=utcnow()))
            await session.execute(
                text(
                    "INSERT INTO knowledge_docs (id, user_id, external_id, content, metadata,"
                    " content_sha256, char_count, chunk_count, created_at, updated_at) VALUES"
                    " ('d', 1, 'e', 'c', '{}', 's', 1, 1, 't', 't')"
                )
            )
            session.add(
                Chunk(
                    doc_id="d",
                    user_id=1,
                    chunk_index=0,
                    text="c",
                    embed_sha256="s",
                    embedding=vector,
                )
            )
        async with database.read() as session:
            stored = (await session.execute(select(Chunk))).scalar_one()
        assert stored.embedding.dtype == np.float32
        assert np.array_equal(stored.embedding, vector)
    finally:
        await database.dispose()


async def test_newer_revision_is_refused_untouched(settings: Settings) -> None:
    await (await opened(settings)).dispose()
    await execute(settings, "UPDATE alembic_version SET version_num = 'f00d'")
    database = Database(settings)
    with pytest.raises(SchemaError, match="newer version") as info:
        await database.migrate()
    assert "\n" not in str(info.value)
    await database.dispose()
    assert await revision(settings) == "f00d"


async def test_a_database_with_foreign_tables_is_refused(settings: Settings) -> None:
    await execute(settings, "CREATE TABLE precious (x INTEGER)")
    database = Database(settings)
    with pytest.raises(SchemaError, match="not a personaizer database"):
        await database.migrate()
    await database.dispose()


async def test_a_database_with_a_different_layout_is_refused(settings: Settings) -> None:
    await (await opened(settings)).dispose()
    await execute(settings, "ALTER TABLE chunks DROP COLUMN embed_sha256")
    database = Database(settings)
    with pytest.raises(SchemaError, match="chunks lacks embed_sha256"):
        await database.migrate()
    await database.dispose()


async def test_a_later_revision_upgrades_in_place(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a release with a new revision does to a database of this one: upgrades it in
    place (SQLite: after a backup copy), data kept."""
    database = await opened(settings)
    async with database.write() as session:
        session.add(User(email="keep@x.example", plan_id="free", created_at=utcnow()))
    await database.dispose()

    future = tmp_path / "future"
    future.mkdir()
    (future / "9999_nickname.py").write_text(
        f'revision = "9999"\ndown_revision = "{migrations.head()}"\n'
        "branch_labels = None\ndepends_on = None\n"
        "from alembic import op\nimport sqlalchemy as sa\n"
        "def upgrade():\n    op.add_column('users', sa.Column('nickname', sa.String()))\n"
    )
    config = migrations._config

    def with_future(connection: Connection | None = None) -> object:
        made = config(connection)
        here = Path(migrations.__file__).parent / "versions"
        made.set_main_option("version_locations", os.pathsep.join(map(str, (here, future))))
        return made

    monkeypatch.setattr(migrations, "_config", with_future)
    database = Database(settings)
    found = await database.migrate()
    assert found.revision is not None and found.revision != "9999"
    async with database.read() as session:
        row = (await session.execute(text("SELECT email, nickname FROM users"))).one()
    assert tuple(row) == ("keep@x.example", None)
    await database.dispose()
    assert await revision(settings) == "9999"
    if database.dialect == "sqlite":
        assert (tmp_path / f"personaizer.db.{found.revision}.bak").exists()


def test_database_urls() -> None:
    assert async_url("sqlite:///x/y.db").drivername == "sqlite+aiosqlean"
    assert async_url("postgresql://u:p@h:5432/d").drivername == "postgresql+asyncpg"
    assert async_url("postgresql+asyncpg://u@h/d").drivername == "postgresql+asyncpg"
    for bad, why in (
        ("mysql://u@h/d", "unsupported database URL"),
        ("sqlite://", "must be a file"),
        ("postgresql+pg8000://u@h/d", "unsupported PostgreSQL driver"),
        ("::nonsense", "does not parse"),
    ):
        with pytest.raises(SchemaError, match=why):
            async_url(bad)


# --- SQLite specifics ------------------------------------------------------------------------


async def test_sqlite_pragmas_and_extensions(tmp_path: Path) -> None:
    database = await opened(Settings.for_tests(tmp_path))
    try:
        async with database.read() as session:
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await session.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (await session.execute(text("PRAGMA busy_timeout"))).scalar_one() == 10_000
            version = (await session.execute(text("SELECT vec_version()"))).scalar_one()
            assert version.startswith("v0.1")
            assert (
                await session.execute(text("PRAGMA user_version"))
            ).scalar_one() == migrations.SQLITE_USER_VERSION
    finally:
        await database.dispose()


def _schema(path: Path) -> list[str]:
    conn = sqlean.connect(str(path))
    try:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'chunk_vectors_%'"
            " AND name NOT IN ('sqlite_sequence', 'alembic_version')"
            " ORDER BY name"
        )
        return sorted(" ".join(r[0].split()) for r in rows)
    finally:
        conn.close()


def _legacy_file(path: Path) -> None:
    """A file as release 0.1 left it: its schema, user_version 1, no revision stamp."""
    conn = sqlean.connect(str(path))
    conn.enable_load_extension(True)
    import sqlite_vec

    sqlite_vec.load(conn)
    script = (FIXTURES / "schema_v1.sql").read_text()
    conn.executescript(script)
    conn.execute(
        "INSERT INTO users (email, plan_id, created_at) VALUES"
        " ('old@x.example', 'free', '2026-11-01T00:00:00.000Z')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


async def test_revision_0001_makes_exactly_the_schema_of_release_0_1(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    database = Database(Settings.for_tests(tmp_path / "new"))
    async with database.writer.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(migrations._config(c), "0001"))
        await conn.commit()
    await database.dispose()
    _legacy_file(tmp_path / "legacy.db")
    assert _schema(tmp_path / "new" / "personaizer.db") == _schema(tmp_path / "legacy.db")


async def test_a_release_0_1_file_is_stamped_and_upgraded_with_a_backup(tmp_path: Path) -> None:
    _legacy_file(tmp_path / "personaizer.db")
    database = Database(Settings.for_tests(tmp_path))
    found = await database.migrate()
    assert found.legacy
    async with database.read() as session:
        assert (await session.execute(text("SELECT email FROM users"))).scalar_one() == (
            "old@x.example"
        )
        assert (
            await session.execute(text("PRAGMA user_version"))
        ).scalar_one() == migrations.SQLITE_USER_VERSION
    await database.dispose()
    assert await revision(Settings.for_tests(tmp_path)) == migrations.head()
    if migrations.head() != migrations.LEGACY_REVISION:
        assert (tmp_path / "personaizer.db.v1.bak").exists()


async def test_a_newer_sqlite_user_version_is_refused_untouched(tmp_path: Path) -> None:
    await (await opened(Settings.for_tests(tmp_path))).dispose()
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


# --- PostgreSQL specifics ------------------------------------------------------------------


async def test_postgres_without_rights_to_enable_pgvector_is_refused_in_one_line(
    postgres: pg.PostgresServer, tmp_path: Path
) -> None:
    name = await postgres.new_database(template=None)
    await postgres.execute("DROP ROLE IF EXISTS plain; CREATE ROLE plain LOGIN")
    await postgres.execute(f"REVOKE CREATE ON DATABASE {name} FROM PUBLIC")
    url = postgres.url(name).replace("postgres@", "plain@")
    database = Database(Settings.for_tests(tmp_path, database_url=url))
    try:
        with pytest.raises(SchemaError, match="CREATE EXTENSION vector") as info:
            await database.migrate()
        assert "\n" not in str(info.value)
    finally:
        await database.dispose()
        await postgres.drop_database(name)


async def test_postgres_unreachable_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://u@/d?host={tmp_path}"  # no server listens there
    database = Database(Settings.for_tests(tmp_path, database_url=url, busy_timeout_s=2))
    with pytest.raises(SchemaError, match="cannot open the database") as info:
        await database.migrate()
    assert "\n" not in str(info.value)
    await database.dispose()


async def _searches(runtime: Runtime, principal: Principal) -> list[list[tuple[str, int, float]]]:
    found = []
    for query in QUERIES:
        request = SearchRequest(query=query, mode="hybrid", k=5)
        response = await search_service.search(
            runtime=runtime, principal=principal, request=request
        )
        found.append([(h.external_id, h.chunk_index, h.score) for h in response.results])
    return found


async def _chunk_ids(database: Database, external_id: str | None = None) -> list[int]:
    query = select(Chunk.id).order_by(Chunk.id)
    if external_id is not None:
        query = query.join(KnowledgeDoc).where(KnowledgeDoc.external_id == external_id)
    async with database.read() as session:
        return [i for i in (await session.execute(query)).scalars() if i is not None]


def _doc(external_id: str, topic: str) -> KnowledgeDocItem:
    return KnowledgeDocItem(external_id=external_id, title=None, content=long_text(topic, 20))


async def test_revision_0004_keeps_chunk_ids_and_never_hands_one_out_again(
    tmp_path: Path, model: Model
) -> None:
    """A SQLite file at 0003 with documents, upgraded: every chunk keeps its id, the vec0 and
    keyword rows (keyed by it) still agree with the chunks, searches answer exactly the same; and
    the largest id, deleted, is not handed out again, as it was at 0003 (the vector cache keys
    vectors by chunk id)."""
    settings = Settings.for_tests(tmp_path)
    database = Database(settings)
    async with database.writer.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(migrations._config(c), "0003"))
        await conn.commit()
    await add_newer_objects(database)
    embedder = Embedder(model=model)
    await embedder.start()
    try:
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        await accounts.create_user(runtime=runtime, email="a@x.example", plan_id="unlimited")
        key = (await accounts.create_key(runtime=runtime, email="a@x.example")).key
        principal = await accounts.authenticate(runtime=runtime, api_key=key)
        items = [_doc(f"doc-{i}", topic) for i, topic in enumerate(TOPICS)]
        await knowledge.upsert_many(runtime=runtime, principal=principal, items=items)
        # At 0003 the largest ids come back once their rows are gone.
        last = await _chunk_ids(database, "doc-7")
        await knowledge.delete_doc(runtime=runtime, principal=principal, external_id="doc-7")
        await knowledge.upsert_many(runtime=runtime, principal=principal, items=[items[7]])
        assert await _chunk_ids(database, "doc-7") == last
        before, ids = await _searches(runtime, principal), await _chunk_ids(database)
        await drop_newer_objects(database)
        await database.dispose()

        database = Database(settings)
        assert (await database.migrate()).revision == "0003"
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        assert await _chunk_ids(database) == ids
        async with database.read() as session:
            for table in ("SELECT chunk_id FROM chunk_vectors", "SELECT chunk_id FROM chunk_terms"):
                rows = (await session.execute(text(f"{table} ORDER BY 1"))).scalars()
                assert list(rows) == ids, table
            sequence = "SELECT seq FROM sqlite_sequence WHERE name = 'chunks'"
            assert (await session.execute(text(sequence))).scalar_one() == ids[-1]
        assert await _searches(runtime, principal) == before

        await knowledge.delete_doc(runtime=runtime, principal=principal, external_id="doc-7")
        await knowledge.upsert_many(
            runtime=runtime, principal=principal, items=[_doc("new", "tea")]
        )
        assert min(await _chunk_ids(database, "new")) == ids[-1] + 1
    finally:
        await embedder.stop()
        await database.dispose()


async def test_revision_0007_numbers_existing_documents_in_update_order(
    tmp_path: Path, model: Model
) -> None:
    """A SQLite file at 0006 with documents, upgraded: each user's documents get change seqs
    1..n in updated_at order, the user's counter starts at n, and the feed from the beginning
    lists them in that order and goes on with the next write."""
    settings = Settings.for_tests(tmp_path)
    database = Database(settings)
    async with database.writer.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(migrations._config(c), "0006"))
        await conn.commit()
    await add_newer_objects(database)
    embedder = Embedder(model=model)
    await embedder.start()
    try:
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        await accounts.create_user(runtime=runtime, email="a@x.example", plan_id="unlimited")
        key = (await accounts.create_key(runtime=runtime, email="a@x.example")).key
        principal = await accounts.authenticate(runtime=runtime, api_key=key)
        for name in ("c", "a", "b"):
            await knowledge.upsert_many(
                runtime=runtime, principal=principal, items=[_doc(name, f"tea {name} {len(name)}")]
            )
            await asyncio.sleep(0.002)  # distinct updated_at
        # c created first, updated last: it comes after a and b.
        await knowledge.upsert_many(
            runtime=runtime, principal=principal, items=[_doc("c", "coffee")]
        )
        await drop_newer_objects(database)
        await database.dispose()

        database = Database(settings)
        assert (await database.migrate()).revision == "0006"
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        page = await feed.list_changes(runtime=runtime, principal=principal)
        assert [c.external_id for c in page.changes] == ["a", "b", "c"]
        assert feed.decode_since(page.next_since) == (3, 0)
        await knowledge.upsert_many(runtime=runtime, principal=principal, items=[_doc("d", "tea")])
        later = await feed.list_changes(runtime=runtime, principal=principal, since=page.next_since)
        assert [c.external_id for c in later.changes] == ["d"]
        assert feed.decode_since(later.next_since)[0] == 4
    finally:
        await embedder.stop()
        await database.dispose()


async def test_revisions_0011_and_0013_rederive_the_keyword_terms_without_embedding(
    tmp_path: Path, model: Model
) -> None:
    """A SQLite file at 0010 with documents (its FTS5 rows as 0010 wrote them: title and text as
    they are, for `porter unicode61`), upgraded: FTS5 is gone, `chunk_terms` holds each chunk's
    `words.terms` (title then text) with their count, the postings, document frequencies and
    totals agree with it, the vectors are the same bytes, and keyword search finds through the
    shared terms (an accent folded, an inflection stemmed)."""
    settings = Settings.for_tests(tmp_path)
    database = Database(settings)
    async with database.writer.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(migrations._config(c), "0010"))
        await conn.run_sync(plan_rows.seed_if_empty, settings.all_plans)
        await conn.commit()
    await add_keyword_tables(database)
    embedder = Embedder(model=model)
    await embedder.start()
    rows = (
        "SELECT c.id, c.embedding, d.title, c.text FROM chunks AS c"
        " JOIN knowledge_docs AS d ON d.id = c.doc_id ORDER BY c.id"
    )
    try:
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        await accounts.create_user(runtime=runtime, email="a@x.example", plan_id="unlimited")
        key = (await accounts.create_key(runtime=runtime, email="a@x.example")).key
        principal = await accounts.authenticate(runtime=runtime, api_key=key)
        items = [_doc(f"doc-{i}", topic) for i, topic in enumerate(TOPICS)]
        items.append(KnowledgeDocItem(external_id="cafe", title="Cafés", content="Naïve flows."))
        await knowledge.upsert_many(runtime=runtime, principal=principal, items=items)
        async with database.write() as session:
            before = (await session.execute(text(rows))).all()
            for chunk_id, _, title, body in before:
                await session.execute(
                    text(
                        "INSERT INTO chunk_fts (rowid, owner, title, text) VALUES (:c, 'u1', :ti, :t)"
                    ),
                    {"ti": title or "", "t": body, "c": chunk_id},
                )
        await drop_keyword_tables(database)
        await database.dispose()

        database = Database(settings)
        assert (await database.migrate()).revision == "0010"
        runtime = Runtime(settings=settings, db=database, embedder=embedder)
        async with database.read() as session:
            after = (await session.execute(text(rows))).all()
            stored = (
                await session.execute(
                    text("SELECT chunk_id, terms, length FROM chunk_terms ORDER BY 1")
                )
            ).all()
            tables = (
                await session.execute(
                    text("SELECT name FROM sqlite_master WHERE name = 'chunk_fts'")
                )
            ).all()
            await assert_keyword_tables_derived(session)
        assert tables == []
        assert [(r[0], r[1]) for r in after] == [(r[0], r[1]) for r in before]
        expected = [(cid, terms(title or "") + terms(body)) for cid, _, title, body in after]
        assert [(c, json.loads(t), n) for c, t, n in stored] == [
            (cid, found, len(found)) for cid, found in expected
        ]
        request = SearchRequest(query="CAFE naive flowing", mode="keyword", k=5)
        found = await search_service.search(runtime=runtime, principal=principal, request=request)
        assert [h.external_id for h in found.results] == ["cafe"]
    finally:
        await embedder.stop()
        await database.dispose()
