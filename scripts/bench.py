"""Benchmark the search service at 10,000 and 100,000 chunks of one user.

The corpus is synthetic and written straight through the indexes (documents and chunks as rows
with their float vectors, random unit vectors into `VectorIndex`, Zipf-distributed words into
`KeywordIndex`), so building 100,000 chunks takes a minute instead of the hours the model would
need. As in English text, the 50 most frequent words are function words ("the", "of", ...;
`--plain-words` makes them pseudo-words like the rest). Searches run through
`app.services.search.search`, the function both doors call, with a stand-in model that returns a
random unit vector (the index work is what is measured); the real model's time to embed one
query is measured on its own and is to be added to the semantic and hybrid figures.

Scenarios per size (k = 10): semantic, keyword and hybrid over every document (queries of two
very common words, two mid-frequency and two rare ones); keyword with three of the most frequent
content words only (the dearest keyword query: each word in 3-17% of the chunks); hybrid within a
persona of 3 documents; semantic within 100 listed documents (exact scoring); semantic within a
metadata scope holding a quarter of the chunks (SQLite: the coarse pass restricted to the
scope; PostgreSQL: the user's HNSW walk filtered by the scope's chunk ids). Each scenario's
first search is not timed, so a scope kept by the index (scope_cache.py) is timed as kept.

    .venv/bin/python scripts/bench.py [--sizes 10000,100000] [--repeat 20] [--no-model]
                                      [--plain-words] [--database-url postgresql://...]
                                      [--keep DIR] [--no-sqlite]
                                      [--auth-only] [--auth-repeat 2000]

A million chunks (`--sizes 10000,100000,1000000`, outside CI: about half an hour to write on
SQLite, an hour on PostgreSQL) is what `--keep DIR` is for: one database per size, built the
first time and measured again as it is after that. A SQLite user large enough for a partition
(app/storage/index/partition.py) has it built before the timing starts. Figures:
docs/scaling.md.

Prints p50 per scenario, size and engine (SQLite always; PostgreSQL too with --database-url, an
empty database), and the ratio of the largest size's p50 to the smallest's. Then what a tenant
token adds to a request against its plain key, p50 of `--auth-repeat` alternating rounds in one
run (scripts/bench_auth.py; target <= +0.2 ms); `--auth-only` prints that alone.

Before the two-stage vector search and the per-user keyword index (float vec0 KNN; FTS5 over
every user's rows, stopwords included; same machine, `--plain-words` corpus), p50 at 10,000 ->
100,000 chunks was: semantic 16 -> 91 ms, keyword 18 -> 129 ms, hybrid 29 -> 231 ms, hybrid in
a persona 12 -> 57 ms, 100 listed documents 7 -> 7 ms, metadata scope 26 -> 175 ms.

On PostgreSQL, before keyword search read per-user postings (BM25 from an `unnest` of every
matching chunk's tsvector; same machine, busy, two runs each), p50 at 10,000 -> 100,000 chunks
was: keyword 18-22 -> 229-317 ms, frequent words only 60-94 -> 757-1156 ms, hybrid 56-69 ->
260-358 ms; with postings 3-4 -> 6-9 ms, 6-8 -> 17-21 ms and 28-34 -> 80 ms.

Engines mode (`--engines --database-url postgresql://...`, scripts/bench_engines.py): a server
on SQLite and one on PostgreSQL, the same Cranfield abstracts on each, p50 over HTTP per mode on
both in one run and PostgreSQL's over SQLite's (target <= 1.3x), and how many keyword answers
are equal on both.

End-to-end mode (`--e2e`, scripts/bench_e2e.py, whose docstring says what each figure means and
why it is measured so): a real `personaizer serve` process (scripts/local_server.py, as
scripts/eval_cranfield.py starts one) measured over HTTP on Cranfield abstracts, each figure a
ratio to the raw encoder measured in the same run before the server starts, or to a limit:

    batch ingest docs/s / raw encoder docs/s                        >= 0.9x
    first ingest time / identical replay time (all no_op)           >= 100x
    search p50 over HTTP - p50 of one raw query encoding            <= +10 ms
    16 clients' single-document PUTs docs/s / 1 client's            >= 1.5x
    server RSS idle (model loaded) and after the ingests            reported
    user A search p50 while user B ingests 1,398 docs / idle        <= 2x
    user A GET by external_id p99 during that ingest                <= 50 ms

with Chroma in-process (same model and texts) as a peer when `chromadb` is importable
(`pip install '.[bench]'`). It prints a markdown table and one `BENCH_JSON {...}` line:

    .venv/bin/python scripts/bench.py --e2e [--docs 600] [--ingest-docs 1398] [--clients 16]
        [--single-docs 160] [--small-docs 100] [--queries 225] [--idle-searches 100]
        [--data DIR] [--no-chroma]
        [--database-url postgresql://... (the server runs on it instead of SQLite)] [--check]

Exit 0 whatever the figures, unless `--check` is given (then 1 when a target is missed); 2 when
the server could not be started or a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlmodel import col, select

from app.embedding.embedder import DIMS, Embedder, LocalModel
from app.models import (
    Chunk,
    KnowledgeDoc,
    Persona,
    PersonaKnowledge,
    SearchRequest,
    User,
    utcnow,
)
from app.models.knowledge import Vectors
from app.services import search as search_service
from app.services.runtime import Principal, Runtime
from app.settings import Settings
from app.storage.database import Database
from app.storage.index import IndexedChunk, keywords, postgres_keywords, sqlite_keywords

CHUNKS_PER_DOC = 4
WORDS_PER_CHUNK = 100
VOCABULARY = 30_000
INSERT_BATCH = 5_000


class RandomModel:
    """A stand-in model: a random unit vector per text (the searches measure index work)."""

    dims = DIMS

    def __init__(self, seed: int = 7) -> None:
        self._rng = np.random.default_rng(seed)

    def encode(self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False) -> Vectors:
        return _unit(self._rng.standard_normal((len(texts), DIMS)))


def _unit(matrix: np.ndarray) -> Vectors:
    out = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(out, dtype=np.float32)


#: The most frequent words of English text are function words, as in this order: the corpus's
#: most frequent pseudo-words are these (keyword search leaves them out of queries).
_FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at "
    "which but have an had they you were their all we can her has there been if more when will "
    "would who so no its into"
)
FUNCTION_WORDS = _FUNCTION_WORDS.split()


class Corpus:
    """Synthetic documents of `CHUNKS_PER_DOC` chunks; word frequencies follow Zipf's law, the
    `len(FUNCTION_WORDS)` most frequent being English function words (unless `plain`)."""

    def __init__(self, seed: int = 1, *, plain: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.words = [f"w{i}x" for i in range(VOCABULARY)]
        if not plain:
            self.words[: len(FUNCTION_WORDS)] = FUNCTION_WORDS
        weights = 1.0 / np.arange(1, VOCABULARY + 1)
        self.p = weights / weights.sum()
        self.docs = 0

    def text(self, n: int) -> list[str]:
        idx = self.rng.choice(VOCABULARY, size=(n, WORDS_PER_CHUNK), p=self.p)
        return [" ".join(self.words[j] for j in row) for row in idx]

    def query(self, kind: str = "mixed") -> str:
        if kind == "frequent":
            # Three of the most frequent content words (each in 3-17% of the chunks).
            picks = list(self.rng.integers(len(FUNCTION_WORDS), 300, 3))
        else:
            # Two of the most common words, two mid-frequency words and two rare ones.
            picks = [*self.rng.integers(0, 50, 2), *self.rng.integers(50, 2000, 2)]
            picks += [*self.rng.integers(2000, VOCABULARY, 2)]
        return " ".join(self.words[int(i)] for i in picks)


async def add_chunks(runtime: Runtime, user_id: int, corpus: Corpus, n_chunks: int) -> None:
    """Append `n_chunks` chunks (whole documents) to the user's account."""
    n_docs = n_chunks // CHUNKS_PER_DOC
    for start in range(0, n_docs, INSERT_BATCH // CHUNKS_PER_DOC):
        count = min(INSERT_BATCH // CHUNKS_PER_DOC, n_docs - start)
        texts = corpus.text(count * CHUNKS_PER_DOC)
        vectors = _unit(corpus.rng.standard_normal((len(texts), DIMS)))
        now = utcnow()
        async with runtime.db.write() as session:
            docs = []
            for i in range(count):
                number = corpus.docs + i
                docs.append(
                    KnowledgeDoc(
                        id=uuid.uuid4().hex,
                        user_id=user_id,
                        external_id=f"doc-{number}",
                        title=f"Document {number}",
                        content="(synthetic)",
                        metadata_={"group": "a" if number % 4 == 0 else "b"},
                        content_sha256="-",
                        char_count=0,
                        chunk_count=CHUNKS_PER_DOC,
                        created_at=now,
                        updated_at=now,
                    )
                )
            session.add_all(docs)
            await session.flush()
            chunks = [
                Chunk(
                    doc_id=doc.id,
                    user_id=user_id,
                    chunk_index=c,
                    text=texts[i * CHUNKS_PER_DOC + c],
                    embed_sha256="-",
                    embedding=vectors[i * CHUNKS_PER_DOC + c],
                )
                for i, doc in enumerate(docs)
                for c in range(CHUNKS_PER_DOC)
            ]
            session.add_all(chunks)
            await session.flush()
            await runtime.index.put_many(
                session,
                user_id=user_id,
                docs=[
                    (
                        doc.title,
                        [
                            IndexedChunk(c.id, c.text, c.embedding)
                            for c in chunks[i * CHUNKS_PER_DOC : (i + 1) * CHUNKS_PER_DOC]
                            if c.id
                        ],
                    )
                    for i, doc in enumerate(docs)
                ],
            )
        corpus.docs += count


async def setup(runtime: Runtime) -> tuple[Principal, int]:
    """The bench user (made, with its persona, on a new database) and its chunk count (kept
    from an earlier run with `--keep`)."""
    async with runtime.db.write() as session:
        user = (
            await session.execute(select(User).where(User.email == "bench@example.com"))
        ).scalar_one_or_none()
        if user is None:
            user = User(email="bench@example.com", plan_id="unlimited", created_at=utcnow())
            session.add(user)
            await session.flush()
            assert user.id is not None
            persona = Persona(
                id="per_bench",
                user_id=user.id,
                name="Bench",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            session.add(persona)
        assert user.id is not None
        have = await runtime.index.count(session, user_id=user.id)
    plan = await runtime.plan("unlimited")
    return Principal(user_id=user.id, email=user.email, plan=plan), have


async def attach_persona(runtime: Runtime, external_ids: Sequence[str]) -> None:
    async with runtime.db.write() as session:
        rows = await session.execute(
            select(KnowledgeDoc.id).where(col(KnowledgeDoc.external_id).in_(list(external_ids)))
        )
        session.add_all(PersonaKnowledge(persona_id="per_bench", doc_id=d) for d in rows.scalars())


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    await run()  # warm the caches
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        out.append((time.perf_counter() - started) * 1000)
    return out


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


SCENARIOS: list[tuple[str, dict[str, Any]]] = [
    ("semantic, all documents", {"mode": "semantic"}),
    ("keyword, all documents", {"mode": "keyword"}),
    ("keyword, frequent words only", {"mode": "keyword", "query_kind": "frequent"}),
    ("hybrid, all documents", {"mode": "hybrid"}),
    ("hybrid, persona of 3 docs", {"mode": "hybrid", "persona_id": "per_bench"}),
    (
        "semantic, 100 listed docs",
        {"mode": "semantic", "external_ids": [f"doc-{i * 7}" for i in range(100)]},
    ),
    ("semantic, metadata 1/4 of docs", {"mode": "semantic", "metadata": {"group": "a"}}),
]


async def bench_engine(
    settings_for: Callable[[int | None], Awaitable[Settings]],
    sizes: Sequence[int],
    repeat: int,
    plain: bool,
    keep: bool,
) -> dict[tuple[str, int], list[float]]:
    """Time every scenario at each size: on one database grown size by size, or (`keep`) on
    one database per size (`settings_for(size)`), built only when it holds fewer chunks."""
    results: dict[tuple[str, int], list[float]] = {}
    if keep:
        for size in sorted(sizes):
            results.update(await _bench_sizes(await settings_for(size), [size], repeat, plain))
        return results
    return await _bench_sizes(await settings_for(None), sizes, repeat, plain)


async def _bench_sizes(
    settings: Settings, sizes: Sequence[int], repeat: int, plain: bool
) -> dict[tuple[str, int], list[float]]:
    db = Database(settings)
    await db.migrate()
    embedder = Embedder(model=RandomModel())
    await embedder.start()
    runtime = Runtime(settings=settings, db=db, embedder=embedder)
    results: dict[tuple[str, int], list[float]] = {}
    try:
        principal, have = await setup(runtime)
        corpus = Corpus(plain=plain)
        corpus.docs = have // CHUNKS_PER_DOC
        for size in sorted(sizes):
            started = time.perf_counter()
            if size > have:
                async with bulk_load(db):
                    await add_chunks(runtime, principal.user_id, corpus, size - have)
                if not have:
                    await attach_persona(runtime, ["doc-1", "doc-2", "doc-3"])
                have = size
            print(
                f"{db.dialect}: {have:>7} chunks ({corpus.docs} documents) written in "
                f"{time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            await warm_partitions(runtime, principal)
            for name, scenario in SCENARIOS:
                body = {k: v for k, v in scenario.items() if k != "query_kind"}
                kind = scenario.get("query_kind", "mixed")
                queries = iter([corpus.query(kind) for _ in range(repeat + 1)])

                async def run(body: dict[str, Any] = body, queries: Any = queries) -> Any:
                    request = SearchRequest.model_validate(
                        {"query": next(queries), "k": 10, **body}
                    )
                    return await search_service.search(
                        runtime=runtime, principal=principal, request=request
                    )

                results[(name, size)] = await timed(run, repeat)
            for kind in ("mixed", "frequent"):
                AGREEMENT[(db.dialect, kind, size)] = await keyword_agreement(
                    runtime, principal, [corpus.query(kind) for _ in range(repeat)]
                )
    finally:
        await embedder.stop()
        await db.dispose()
    return results


#: (engine, query kind, size) -> the share of the top 10 keyword documents that exact scoring
#: of every posting also ranks in its top 10, averaged over the queries.
AGREEMENT: dict[tuple[str, str, int], float] = {}


async def keyword_agreement(runtime: Runtime, principal: Principal, queries: list[str]) -> float:
    """How much of the top 10 of keyword search (champion lists, app/storage/index/keywords.py)
    the exact ranking of every matching chunk shares, on average over `queries`."""
    shared = []
    for query in queries:
        request = SearchRequest.model_validate({"query": query, "k": 10, "mode": "keyword"})
        tops = []
        for champions in (keywords.CHAMPIONS, 10**9):
            saved, keywords.CHAMPIONS = keywords.CHAMPIONS, champions
            try:
                found = await search_service.search(
                    runtime=runtime, principal=principal, request=request
                )
            finally:
                keywords.CHAMPIONS = saved
            tops.append({h.external_id for h in found.results})
        shared.append(len(tops[0] & tops[1]) / max(1, len(tops[1])))
    return statistics.mean(shared)


async def warm_partitions(runtime: Runtime, principal: Principal) -> None:
    """SQLite: a user large enough for a partition (app/storage/index/partition.py) gets it
    built in the background after a first search; wait for it, as a server's searches after
    its first few seconds would, and say how long it took."""
    partitions = getattr(runtime.index, "partitions", None)
    if partitions is None:
        return
    started = time.perf_counter()
    request = SearchRequest.model_validate({"query": "warm", "k": 10, "mode": "semantic"})
    await search_service.search(runtime=runtime, principal=principal, request=request)
    await asyncio.to_thread(partitions.wait)
    if len(partitions):
        print(f"partition built in {time.perf_counter() - started:.1f} s", file=sys.stderr)


@contextlib.asynccontextmanager
async def bulk_load(db: Database) -> AsyncIterator[None]:
    """Build the indexes once after a bulk load rather than row by row (what an operator
    importing a large corpus would do too): the keyword postings, derived from `chunk_terms` in
    key order (app/storage/index/sqlite_keywords.py, postgres_keywords.py), and PostgreSQL's
    HNSW index."""
    if db.dialect != "postgresql":
        async with db.write() as session:
            for statement in sqlite_keywords.DERIVATIONS:
                await session.execute(text(statement))
        yield
        async with db.write() as session:
            for statement in (
                *sqlite_keywords.DERIVE,
                sqlite_keywords.IMPACT_INDEX,
                *sqlite_keywords.TRIGGERS,
            ):
                await session.execute(text(statement))
        return
    async with db.write() as session:
        await session.execute(text("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw"))
        for statement in postgres_keywords.DERIVATIONS:
            await session.execute(text(statement))
    yield
    async with db.write() as session:
        await session.execute(text("SET LOCAL maintenance_work_mem = '3GB'"))
        for statement in postgres_keywords.DERIVE:
            await session.execute(text(statement))
        await session.execute(
            text(
                "CREATE INDEX ix_chunks_embedding_hnsw ON chunks"
                " USING hnsw (embedding vector_cosine_ops)"
            )
        )
        await session.execute(text("ANALYZE"))


async def bench(
    sizes: Sequence[int],
    repeat: int,
    real_model: bool,
    plain: bool,
    database_url: str | None,
    keep: Path | None = None,
    sqlite: bool = True,
) -> None:
    engines: dict[str, dict[tuple[str, int], list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="personaizer-bench-") as tmp:

        async def sqlite_for(size: int | None) -> Settings:
            if keep is None or size is None:
                return Settings.for_tests(Path(tmp))
            folder = keep / f"sqlite-{size}"
            folder.mkdir(parents=True, exist_ok=True)
            return Settings.for_tests(folder)

        async def postgres_for(size: int | None) -> Settings:
            assert database_url is not None
            url = database_url
            if keep is not None and size is not None:
                url = await _database_for(database_url, size)
            return Settings.for_tests(Path(tmp), database_url=url)

        if sqlite:
            engines["sqlite"] = await bench_engine(
                sqlite_for, sizes, repeat, plain, keep is not None
            )
        if database_url:
            engines["postgresql"] = await bench_engine(
                postgres_for, sizes, repeat, plain, keep is not None
            )

    embed_ms: list[float] = []
    if real_model:
        model = LocalModel()
        query = "how do swept wings behave at transonic speeds"
        model.encode([query])
        for _ in range(repeat):
            started = time.perf_counter()
            model.encode([query])
            embed_ms.append((time.perf_counter() - started) * 1000)

    ordered = sorted(sizes)
    header = f"{'scenario (k = 10)':<32}"
    for engine in engines:
        header += "".join(f"{f'{engine} {s:,} p50':>22}" for s in ordered)
        if len(ordered) > 1:
            header += f"{'ratio':>7}"
    print(f"\nsearch latency in ms (p50), {repeat} queries each, stand-in query vectors")
    print(header)
    for name, _ in SCENARIOS:
        line = f"{name:<32}"
        for results in engines.values():
            for s in ordered:
                line += f"{pct(results[(name, s)], 50):>22.1f}"
            if len(ordered) > 1:
                first, last = results[(name, ordered[0])], results[(name, ordered[-1])]
                line += f"{statistics.median(last) / statistics.median(first):>6.1f}x"
        print(line)
    if AGREEMENT:
        print("\nkeyword top 10 shared with exact scoring of every posting (champion lists)")
        for (engine, kind, size), share in sorted(AGREEMENT.items()):
            print(f"{engine:<12}{kind:<10}{size:>10,} chunks: {share:.1%}")
    if embed_ms:
        print(
            f"\nreal model, one query embedding: p50 {pct(embed_ms, 50):.1f} ms, "
            f"p95 {pct(embed_ms, 95):.1f} ms (add to semantic and hybrid)"
        )


async def _database_for(database_url: str, size: int) -> str:
    """`database_url` with `_<size>` after its database name; that database made if missing."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    name = f"{url.database}_{size}"
    dsn = url.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.set(database=name).render_as_string(hide_password=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000",
        help="comma-separated chunk counts (default: 10000,100000)",
    )
    parser.add_argument("--repeat", type=int, default=20, help="queries per scenario")
    parser.add_argument(
        "--no-model", action="store_true", help="skip timing the real embedding model"
    )
    parser.add_argument(
        "--database-url",
        help="also run on this empty database (postgresql://...), beside SQLite in the table; "
        "with --e2e, the server runs on it instead of SQLite",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="one database per size, kept in this folder (SQLite) or as <database>_<size> "
        "(PostgreSQL), built only the first time: measure again without rebuilding",
    )
    parser.add_argument(
        "--no-sqlite", action="store_true", help="PostgreSQL only (with --database-url)"
    )
    parser.add_argument(
        "--plain-words",
        action="store_true",
        help="no function words in the corpus (its most common words are then content words)",
    )
    parser.add_argument(
        "--auth-repeat",
        type=int,
        default=2000,
        help="rounds of the tenant token vs plain key figures (scripts/bench_auth.py)",
    )
    parser.add_argument(
        "--auth-only", action="store_true", help="only the tenant token vs plain key figures"
    )
    e2e = parser.add_argument_group("end-to-end mode (a real server over HTTP)")
    e2e.add_argument("--e2e", action="store_true", help="run the end-to-end mode")
    e2e.add_argument("--docs", type=int, default=600, help="batch-ingested abstracts (600)")
    e2e.add_argument(
        "--ingest-docs", type=int, help="abstracts user B imports under load (all 1,398)"
    )
    e2e.add_argument("--clients", type=int, default=16, help="concurrent PUT clients (16)")
    e2e.add_argument(
        "--single-docs", type=int, default=160, help="single PUTs per client mode (160)"
    )
    e2e.add_argument("--small-docs", type=int, default=100, help="user A's corpus (100)")
    e2e.add_argument("--queries", type=int, help="Cranfield queries to search (all 225)")
    e2e.add_argument(
        "--idle-searches", type=int, default=100, help="user A's searches on an idle server"
    )
    e2e.add_argument("--data", type=Path, help="the Cranfield folder (as eval_cranfield.py)")
    e2e.add_argument("--no-chroma", action="store_true", help="skip the Chroma peer")
    e2e.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    both = parser.add_argument_group(
        "engines mode (SQLite and PostgreSQL over HTTP in one run; --queries, --data as above)"
    )
    both.add_argument(
        "--engines", action="store_true", help="p50 per mode on both engines and their ratio"
    )
    both.add_argument(
        "--engine-docs", type=int, default=1398, help="abstracts on each engine (all 1,398)"
    )
    args = parser.parse_args(argv)
    if args.e2e:
        return run_e2e(parser, args)
    if args.engines:
        return run_engines(parser, args)
    if args.auth_repeat < 1:
        parser.error("--auth-repeat must be at least 1")
    import bench_auth

    engines = [None, args.database_url] if args.database_url else [None]
    if args.auth_only:
        asyncio.run(bench_auth.run(engines, RandomModel(), args.auth_repeat))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < CHUNKS_PER_DOC * 10 or args.repeat < 1:
        parser.error("sizes must be at least 40 chunks and --repeat at least 1")
    asyncio.run(
        bench(
            sizes,
            args.repeat,
            real_model=not args.no_model,
            plain=args.plain_words,
            database_url=args.database_url,
            keep=args.keep,
            sqlite=not args.no_sqlite,
        )
    )
    asyncio.run(bench_auth.run(engines, RandomModel(), args.auth_repeat))
    return 0


def run_e2e(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--e2e: imported here so the default mode needs neither httpx nor the Cranfield data."""
    import bench_e2e
    import eval_cranfield

    counts = [
        ("--docs", args.docs),
        ("--ingest-docs", args.ingest_docs),
        ("--clients", args.clients),
        ("--single-docs", args.single_docs),
        ("--small-docs", args.small_docs),
        ("--queries", args.queries),
        ("--idle-searches", args.idle_searches),
    ]
    if bad := bench_e2e.positive(counts):
        parser.error(f"{', '.join(bad)} must be at least 1")
    data_dir: Path = args.data or eval_cranfield.DEFAULT_DATA_DIR
    if not (data_dir / "cran.all.1400").is_file():
        parser.error(f"no cran.all.1400 in {data_dir} (--data)")
    options = bench_e2e.Options(
        docs=args.docs,
        ingest_docs=args.ingest_docs,
        clients=args.clients,
        single_docs=args.single_docs,
        small_docs=args.small_docs,
        queries=args.queries,
        idle_searches=args.idle_searches,
        data_dir=data_dir,
        database_url=args.database_url,
        chroma=not args.no_chroma,
        check=args.check,
    )
    try:
        return bench_e2e.run(options)
    except bench_e2e.SizeError as exc:
        parser.error(str(exc))


def run_engines(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--engines: scripts/bench_engines.py."""
    import bench_engines
    import eval_cranfield

    if not args.database_url:
        parser.error("--engines needs --database-url (an empty PostgreSQL database)")
    if args.engine_docs < 1 or (args.queries is not None and args.queries < 1):
        parser.error("--engine-docs and --queries must be at least 1")
    data_dir: Path = args.data or eval_cranfield.DEFAULT_DATA_DIR
    if not (data_dir / "cran.all.1400").is_file():
        parser.error(f"no cran.all.1400 in {data_dir} (--data)")
    return bench_engines.run(
        bench_engines.Options(
            docs=args.engine_docs,
            queries=args.queries,
            data_dir=data_dir,
            database_url=args.database_url,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
