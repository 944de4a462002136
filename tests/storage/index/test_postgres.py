"""PostgreSQL's keyword index internals: the postings and statistics that revision 0003 derives
from `chunk_terms` stay equal to what `chunk_terms` holds through every kind of change, the
migrations back-fill them (revision 0011 from the terms of `words.terms`), the scores read from
them are BM25 over the terms (computed here in Python), and every way of reading them (a shallow pass deepened, a scope applied by lookups
or by a hash join) gives the same ranking."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette

from app.models import KnowledgeDocItem
from app.services import accounts, knowledge
from app.services.runtime import Principal, Runtime
from app.settings import Settings
from app.storage import migrations
from app.storage.database import Database
from app.storage.index import Ranked, for_dialect
from app.storage.index import postgres_keywords as keywords
from app.storage.index.postgres import ScopeSql
from app.storage.index.scope import Scope
from app.storage.index.words import query_terms
from tests.conftest import new_key
from tests.services.test_search import TOPICS, long_text
from tests.support import pg

pytestmark = [pytest.mark.anyio, pytest.mark.engines("postgresql")]


async def derived(session: AsyncSession) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(postings, stats) as they are, checked equal to what `chunk_terms` says they must be."""
    postings = {
        tuple(r)
        for r in await session.execute(
            text("SELECT user_id, term, chunk_id, tf, length FROM chunk_postings")
        )
    }
    expected = {
        tuple(r)
        for r in await session.execute(
            text(
                "SELECT t.user_id, e.term, t.chunk_id, count(*), t.length"
                " FROM chunk_terms AS t, unnest(t.terms) AS e(term)"
                " GROUP BY t.user_id, e.term, t.chunk_id, t.length"
            )
        )
    }
    stats = {
        tuple(r)
        for r in await session.execute(text("SELECT user_id, chunks, words FROM keyword_stats"))
    }
    expected_stats = {
        tuple(r)
        for r in await session.execute(
            text("SELECT user_id, count(*), sum(length) FROM chunk_terms GROUP BY user_id")
        )
    }
    assert postings == expected
    assert stats == expected_stats
    return postings, stats


async def in_step(runtime: Runtime) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    async with runtime.db.read() as session:
        return await derived(session)


async def user(app: Starlette, email: str) -> Principal:
    return await accounts.authenticate(runtime=app.state.runtime, api_key=await new_key(app, email))


def item(external_id: str, content: str, title: str | None = None) -> KnowledgeDocItem:
    return KnowledgeDocItem(external_id=external_id, title=title, content=content)


async def test_postings_and_statistics_follow_every_change(app: Starlette) -> None:
    runtime: Runtime = app.state.runtime
    ann, bob = await user(app, "ann@example.com"), await user(app, "bob@example.com")
    await knowledge.upsert_many(
        runtime=runtime,
        principal=ann,
        items=[
            item("a", long_text(TOPICS[0], 30), title="Jet engines"),
            item("b", "Bread rises. Bread bakes, bread cools."),
        ],
    )
    await knowledge.upsert_many(
        runtime=runtime, principal=bob, items=[item("c", long_text(TOPICS[2], 3))]
    )
    postings, stats = await in_step(runtime)
    assert {s[0] for s in stats} == {ann.user_id, bob.user_id}
    assert ("bread", 3) in {(p[1], p[3]) for p in postings if p[0] == ann.user_id}

    # A new title changes every chunk's terms and length; new content replaces the chunks.
    await knowledge.upsert_many(
        runtime=runtime,
        principal=ann,
        items=[
            item("a", long_text(TOPICS[0], 30), title="Turbofan propulsion explained"),
            item("b", "Sourdough starter, flour and water.", title="Baking"),
        ],
    )
    postings, _ = await in_step(runtime)
    ann_terms = {p[1] for p in postings if p[0] == ann.user_id}
    assert {"turbofan", "sourdough"} <= ann_terms and "bread" not in ann_terms

    await knowledge.delete_doc(runtime=runtime, principal=ann, external_id="b")
    await in_step(runtime)
    # A path that forgets the index (the cascade from knowledge_docs) is kept in step too.
    async with runtime.db.write() as session:
        await session.execute(text("DELETE FROM knowledge_docs WHERE external_id = 'c'"))
    postings, stats = await in_step(runtime)
    assert {p[0] for p in postings} == {s[0] for s in stats} == {ann.user_id}

    await accounts.delete_user(runtime=runtime, email="ann@example.com")
    assert await in_step(runtime) == (set(), set())


def same(got: list[Ranked], want: list[Ranked]) -> bool:
    return [(r.doc_id, r.chunk_id) for r in got] == [(r.doc_id, r.chunk_id) for r in want] and all(
        g.score == pytest.approx(w.score, rel=1e-12) for g, w in zip(got, want, strict=True)
    )


async def test_every_way_of_ranking_gives_the_same_ranking(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shallow first pass deepened, and a scope applied by lookups or by a hash join, rank
    as the whole account ranked at once does."""
    runtime: Runtime = app.state.runtime
    owner = await user(app, "owner@example.com")
    items = [
        item(f"doc-{i}", long_text(topic, 12 if i % 2 else 1), title=f"Notes {i}")
        for i, topic in enumerate(TOPICS)
    ]
    await knowledge.upsert_many(runtime=runtime, principal=owner, items=items)
    index = runtime.index
    queries = ["case series note", "bread chess money magma", "magnetic field press", "note 3"]
    scopes = [["doc-1", "doc-2"], [f"doc-{i}" for i in range(0, 8, 2)]]
    async with runtime.db.read() as session:
        ids = dict(
            (await session.execute(text("SELECT external_id, id FROM knowledge_docs"))).all()
        )
        for query in queries:
            everything = await index.keyword(
                session, user_id=owner.user_id, query=query, depth=len(TOPICS), within=None
            )
            assert len(everything) >= 2
            for depth in (1, 3):
                with monkeypatch.context() as m:
                    m.setattr(keywords, "CHUNKS_PER_DOC", 1)
                    got = await index.keyword(
                        session, user_id=owner.user_id, query=query, depth=depth, within=None
                    )
                assert same(got, everything[:depth]), query
                for external_ids in scopes:
                    docs = {ids[e] for e in external_ids}
                    want = [r for r in everything if r.doc_id in docs][:depth]
                    scope = ScopeSql(Scope(user_id=owner.user_id, external_ids=external_ids))
                    for probe_cost in (0, 10**9):
                        monkeypatch.setattr(keywords, "PROBE_COST", probe_cost)
                        got = await index.keyword(
                            session, user_id=owner.user_id, query=query, depth=depth, within=scope
                        )
                        assert same(got, want), (query, external_ids, probe_cost)


def bm25(rows: list[tuple[int, str, str, int, int]], words: str) -> dict[int, float]:
    """FTS5's BM25 per chunk from (chunk, doc, lexeme, tf, length) rows of every chunk of the
    user, for the query's lexemes."""
    lengths = {chunk: length for chunk, _, _, _, length in rows}
    n, mean = len(lengths), sum(lengths.values()) / len(lengths)
    tf: dict[str, dict[int, int]] = defaultdict(dict)
    for chunk, _, lexeme, count, _ in rows:
        tf[lexeme][chunk] = count
    scores: dict[int, float] = defaultdict(float)
    for lexeme in words.split():
        idf = math.log((n - len(tf[lexeme]) + 0.5) / (len(tf[lexeme]) + 0.5))
        idf = idf if idf > 0 else 1e-6
        for chunk, count in tf[lexeme].items():
            norm = 1 - keywords.B + keywords.B * lengths[chunk] / mean
            scores[chunk] += idf * count * (keywords.K1 + 1) / (count + keywords.K1 * norm)
    return scores


async def reference(session: AsyncSession, user_id: int, query: str, depth: int) -> list[Ranked]:
    """The ranking by BM25 over the terms in `chunk_terms`, documents by their best chunk."""
    lexemes = " ".join(query_terms(query))
    rows = [
        (int(c), str(d), str(lexeme), int(tf), int(length))
        for c, d, lexeme, tf, length in await session.execute(
            text(
                "SELECT t.chunk_id, c.doc_id, e.term, count(*), t.length"
                " FROM chunk_terms AS t JOIN chunks AS c ON c.id = t.chunk_id,"
                " unnest(t.terms) AS e(term) WHERE t.user_id = :u"
                " GROUP BY t.chunk_id, c.doc_id, e.term, t.length"
            ),
            {"u": user_id},
        )
    ]
    doc_of = {chunk: doc for chunk, doc, *_ in rows}
    best: dict[str, Ranked] = {}
    scored = bm25(rows, lexemes or "")
    for chunk, score in sorted(scored.items(), key=lambda s: (-s[1], s[0])):
        best.setdefault(doc_of[chunk], Ranked(doc_of[chunk], chunk, score))
    return list(best.values())[:depth]


async def test_keyword_scores_are_bm25_over_the_users_chunks(app: Starlette) -> None:
    """FTS5's formula and constants over the user's own chunks (another tenant's chunks with
    the same words weigh nothing), computed here from the terms in `chunk_terms`."""
    runtime: Runtime = app.state.runtime
    owner, other = await user(app, "owner@example.com"), await user(app, "other@example.com")
    items = [
        item(f"doc-{i}", long_text(topic, 12 if i % 2 else 1), title=f"Notes {i}")
        for i, topic in enumerate(TOPICS)
    ]
    await knowledge.upsert_many(runtime=runtime, principal=owner, items=items)
    await knowledge.upsert_many(runtime=runtime, principal=other, items=items[:3])
    async with runtime.db.read() as session:
        for query in ["bread starter culture", "case series note", "the magnetic field 3"]:
            for depth in (1, 8):
                want = await reference(session, owner.user_id, query, depth)
                got = await runtime.index.keyword(
                    session, user_id=owner.user_id, query=query, depth=depth, within=None
                )
                assert want and same(got, want), query


async def test_the_migration_back_fills_postings_and_statistics(
    postgres: pg.PostgresServer, tmp_path: Path
) -> None:
    """A database of revision 0002 with indexed chunks upgrades to postings that agree, of the
    terms `words.terms` makes (revision 0011: no stopword dropped; 0013: a length is the number
    of terms, document frequencies per user)."""
    name = await postgres.new_database(template=None)
    settings = Settings.for_tests(tmp_path, database_url=postgres.url(name))
    database = Database(settings)
    try:
        async with database.writer.connect() as conn:
            await conn.run_sync(lambda c: command.upgrade(migrations._config(c), "0002"))
            for user_id in (1, 2):
                await conn.execute(
                    text(
                        "INSERT INTO users (id, email, plan_id, created_at)"
                        " VALUES (:u, :e, 'free', '2026-01-01T00:00:00.000Z')"
                    ),
                    {"u": user_id, "e": f"u{user_id}@example.com"},
                )
                await conn.execute(
                    text(
                        "INSERT INTO knowledge_docs (id, user_id, external_id, content,"
                        " content_sha256, char_count, chunk_count, created_at, updated_at)"
                        " VALUES (:d, :u, 'x', '', '', 0, 2, '2026', '2026')"
                    ),
                    {"d": f"d{user_id}", "u": user_id},
                )
            # As revision 0002's index wrote them: chunks, then their tsvectors and lengths.
            for chunk_id, user_id, body in (
                (1, 1, "Bread rises and bread bakes"),
                (2, 1, "Engines burn fuel"),
                (3, 2, "Bread and butter"),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO chunks (id, doc_id, user_id, chunk_index, text, embed_sha256,"
                        " embedding) VALUES (:c, :d, :u, 0, :t, '', array_fill(0.1, ARRAY[384]))"
                    ),
                    {"c": chunk_id, "d": f"d{user_id}", "u": user_id, "t": body},
                )
                await conn.execute(
                    text(
                        "INSERT INTO chunk_terms (chunk_id, user_id, terms, length)"
                        " VALUES (:c, :u, to_tsvector('english', ' ' || :t), :n)"
                    ),
                    {"c": chunk_id, "u": user_id, "t": body, "n": len(body.split())},
                )
            await conn.commit()
        found = await database.migrate()
        assert found.revision == "0002"
        async with database.read() as session:
            postings, stats = await derived(session)
            # Lengths count the terms: 5 and 3; 3.
            assert stats == {(1, 2, 8), (2, 1, 3)}
            assert (1, "bread", 1, 2, 5) in postings
            assert (2, "and", 3, 1, 3) in postings
            df = (await session.execute(text("SELECT user_id, term, df FROM keyword_df"))).all()
            assert (1, "bread", 1) in df and (2, "bread", 1) in df and (1, "engin", 1) in df
            hits = await for_dialect(database.dialect).keyword(
                session, user_id=1, query="bread", depth=5, within=None
            )
            assert [(h.doc_id, h.chunk_id) for h in hits] == [("d1", 1)]
    finally:
        await database.dispose()
        await postgres.drop_database(name)
