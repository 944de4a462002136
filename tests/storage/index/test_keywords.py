"""The keyword index on both engines (app/storage/index/keywords.py): the postings, document
frequencies and totals that the triggers derive from `chunk_terms` stay equal to what it holds
through every kind of change, the migrations back-fill them, the scores are BM25 over the user's
own chunks (computed here in Python from `chunk_terms`; another tenant's chunks weigh nothing),
every way of reading them (a shallow pass deepened, a scope probed or filtered) gives the same
ranking, and champion lists cut short still rank the best chunks by their exact scores."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
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
from app.storage.index import TIE_DECIMALS, Ranked, for_dialect, keywords
from app.storage.index.scope import Scope
from app.storage.index.words import query_terms
from tests.conftest import new_key
from tests.services.test_search import TOPICS, long_text
from tests.support import pg
from tests.support.keyword_tables import assert_keyword_tables_derived, stored_terms

pytestmark = pytest.mark.anyio


async def in_step(runtime: Runtime) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(postings, stats) as they are, checked equal to what `chunk_terms` says they must be."""
    async with runtime.db.read() as session:
        found = await assert_keyword_tables_derived(session)
    return found["postings"], found["stats"]


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
    """A shallow first pass deepened, and a scope probed chunk by chunk or filtered from the
    best-first postings, rank as the whole account ranked at once does."""
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
                    scope = await index.restrict(
                        session, Scope(user_id=owner.user_id, external_ids=external_ids)
                    )
                    for probed in (0, 10**9):
                        monkeypatch.setattr(keywords, "SCOPE_PROBED", probed)
                        got = await index.keyword(
                            session, user_id=owner.user_id, query=query, depth=depth, within=scope
                        )
                        assert same(got, want), (query, external_ids, probed)


def bm25(chunks: dict[int, tuple[str, list[str]]], query: str) -> dict[int, float]:
    """FTS5's BM25 of each of the user's `chunks` (`stored_terms`) matching the query's terms,
    over those chunks alone."""
    lengths = {chunk: len(found) for chunk, (_, found) in chunks.items()}
    n, mean = len(lengths), sum(lengths.values()) / len(lengths)
    tf: dict[str, dict[int, int]] = defaultdict(dict)
    for chunk, (_, found) in chunks.items():
        for term, count in Counter(found).items():
            tf[term][chunk] = count
    scores: dict[int, float] = defaultdict(float)
    for term in query_terms(query):
        idf = math.log((n - len(tf[term]) + 0.5) / (len(tf[term]) + 0.5))
        idf = idf if idf > 0 else 1e-6
        for chunk, count in tf[term].items():
            norm = 1 - keywords.B + keywords.B * lengths[chunk] / mean
            scores[chunk] += idf * count * (keywords.K1 + 1) / (count + keywords.K1 * norm)
    return scores


async def reference(session: AsyncSession, user_id: int, query: str, depth: int) -> list[Ranked]:
    """The ranking by BM25 over the terms in `chunk_terms`, documents by their best chunk."""
    chunks = await stored_terms(session, user_id)
    best: dict[str, Ranked] = {}
    # Equal scores (to `TIE_DECIMALS`) go to the lower chunk id, as the index's rule says.
    scored = bm25(chunks, query).items()
    for chunk, score in sorted(scored, key=lambda s: (-round(s[1], TIE_DECIMALS), s[0])):
        doc = chunks[chunk][0]
        best.setdefault(doc, Ranked(doc, chunk, score))
    return list(best.values())[:depth]


async def test_keyword_scores_are_bm25_over_the_users_chunks(app: Starlette) -> None:
    """FTS5's formula and constants over the user's own chunks, computed here from the terms in
    `chunk_terms`; another tenant's chunks with the same words weigh nothing: the owner's answers
    are the same doubles before and after the other tenant writes (SQLite's FTS5 counted every
    user's rows in N, the document frequencies and the mean length)."""
    runtime: Runtime = app.state.runtime
    owner, other = await user(app, "owner@example.com"), await user(app, "other@example.com")
    items = [
        item(f"doc-{i}", long_text(topic, 12 if i % 2 else 1), title=f"Notes {i}")
        for i, topic in enumerate(TOPICS)
    ]
    queries = ["bread starter culture", "case series note", "the magnetic field 3"]
    await knowledge.upsert_many(runtime=runtime, principal=owner, items=items)

    async def answers() -> list[list[Ranked]]:
        async with runtime.db.read() as session:
            return [
                await runtime.index.keyword(
                    session, user_id=owner.user_id, query=query, depth=depth, within=None
                )
                for query in queries
                for depth in (1, 8)
            ]

    alone = await answers()
    others = [item(f"o-{i}", long_text(TOPICS[i % 3], 1 + i % 5), title="Notes") for i in range(40)]
    await knowledge.upsert_many(runtime=runtime, principal=other, items=others)
    assert await answers() == alone
    async with runtime.db.read() as session:
        for query in queries:
            for depth in (1, 8):
                want = await reference(session, owner.user_id, query, depth)
                got = await runtime.index.keyword(
                    session, user_id=owner.user_id, query=query, depth=depth, within=None
                )
                assert want and same(got, want), query


async def test_cut_champion_lists_rank_by_exact_scores_and_deepen(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With lists cut at a few postings and no budget to read deeper, every document returned
    carries its best chunk's exact BM25 score, best first; with the budget, the lists are read
    deeper until the answer is shown exact, with every matching document when fewer than
    asked for."""
    runtime: Runtime = app.state.runtime
    owner = await user(app, "owner@example.com")
    items = [
        item(f"doc-{i}", long_text(TOPICS[i % len(TOPICS)], 1 + i % 4), title=f"Notes {i % 3}")
        for i in range(30)
    ]
    await knowledge.upsert_many(runtime=runtime, principal=owner, items=items)
    queries = ["case series note", "notes bread magma", "magnetic field press 2"]
    async with runtime.db.read() as session:
        chunks = await stored_terms(session, owner.user_id)
        monkeypatch.setattr(keywords, "BUDGET", 0)
        for query in queries:
            exact = bm25(chunks, query)
            matching = {chunks[c][0] for c in exact}
            for cut in (1, 3, 10):
                monkeypatch.setattr(keywords, "CHAMPIONS", cut)
                for depth in (1, 5, 100):
                    got = await runtime.index.keyword(
                        session, user_id=owner.user_id, query=query, depth=depth, within=None
                    )
                    assert 1 <= len(got) <= min(depth, len(matching)), (query, cut, depth)
                    for hit in got:
                        assert chunks[hit.chunk_id][0] == hit.doc_id
                        assert hit.score == pytest.approx(exact[hit.chunk_id], rel=1e-12)
                    scores = [round(h.score, TIE_DECIMALS) for h in got]
                    assert scores == sorted(scores, reverse=True)
            want = await reference(session, owner.user_id, query, 100)
            # Read deeper until shown exact (the threshold test: a bound too low would stop
            # early, on an answer that is not this one), or whole lists.
            monkeypatch.setattr(keywords, "BUDGET", 10**9)
            for cut in (1, 2, 3, 10, len(chunks)):
                monkeypatch.setattr(keywords, "CHAMPIONS", cut)
                got = await runtime.index.keyword(
                    session, user_id=owner.user_id, query=query, depth=5, within=None
                )
                assert same(got, want[:5]), (query, cut)
                got = await runtime.index.keyword(
                    session, user_id=owner.user_id, query=query, depth=100, within=None
                )
                assert same(got, want), (query, cut)
            monkeypatch.setattr(keywords, "BUDGET", 0)


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
            found = await assert_keyword_tables_derived(session)
            postings = {p[:5] for p in found["postings"]}
            stats = found["stats"]
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
