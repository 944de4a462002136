"""`scripts/bench.py --e2e`: a real server, measured over HTTP against the raw encoder.

Everything the app adds to the model's own work shows here: HTTP, JSON, validation, chunking,
the embedding queue, the database writes, the index. So each figure is a ratio to what could
not be done faster on this machine in the same run (the model called directly in this process,
before the server starts or, for queries, between two searches; never at the same time: two
cores), or to a fixed limit:

1. Batch ingest: the first `--docs` (600) Cranfield abstracts through `PUT /api/knowledge/docs`
   in batches of 100, one client, in docs/s; divided by the raw encoder's docs/s: the encoder
   the server runs (`PERSONAIZER_ENCODER`, onnx by default; see `raw_encoder`) given every
   core this process may use, its `encode` on the very texts the server embeds (each chunk
   with its title folded in, `app.embedding.chunking`; a text repeated within a batch once, as the server
   dedupes), in one call that it cuts into batches of 32. The app's ceiling is the model, so
   >= 0.9x means the rest of the ingest path costs at most a tenth.
2. Replay: the same items again; every one must answer `no_op` (content hashes match, nothing
   is embedded). First ingest time / replay time >= 100x: a sync tool re-sending unchanged
   documents must cost next to nothing.
3. Search: the Cranfield queries one after another through `POST /api/knowledge/search`
   (default mode, k = 10) over those documents, p50 of the client-measured latency, minus the
   p50 of encoding one query in-process (the raw encoder's `encode([q])`, same queries), each
   timed right after its search while the server waits (the same machine state: see
   `measure_search`; the encoding measured before the server starts is reported too, as
   "cold"). What is left is HTTP, the index and ranking: <= +10 ms.
4. Concurrent writes: single-document PUTs (`/api/knowledge/docs/by-external-id/{id}`), fresh
   documents (nothing is a `no_op`), first by one client, then by `--clients` (16) clients at
   once, each with its own keep-alive connection; docs/s of 16 / docs/s of 1 >= 1.5x (the
   embedding queue gathers concurrent requests' texts into one model call).
5. Server RSS (`VmRSS` of the server process, /proc/<pid>/status): once the model is loaded
   and before any request, and after all the ingests; the peak (`VmHWM`) too. Reported only.
6. Isolation: user A (a small corpus of `--small-docs` abstracts) searches and reads back
   documents, each on its own connection, one request every 50 ms or so on each (a busy
   interactive user; back to back, on two cores, A would itself be the load and slow B's
   import); first with the server otherwise idle (`--idle-searches`, 100), then while user B ingests
   `--ingest-docs` (all 1,398 non-empty) abstracts in batches of 100. Search p50 under load /
   idle <= 2x, and the p99 of `GET /api/knowledge/docs/by-external-id/{id}` under load
   <= 50 ms: one user's bulk import must not stall everybody else. A search whose query
   waits behind a batch being embedded shows in the p95 and the maximum, reported beside.

Peers, reported beside the figures: the raw encoder (above) and, when `chromadb` is importable
(`pip install '.[bench]'`), Chroma in-process with the same model (an embedding function
wrapping the raw encoder, nothing downloaded) on a persistent client in a temporary directory, the
same texts (one record per chunk): ingest docs/s (upserts of 100 documents), replay time (Chroma
re-embeds on upsert) and query p50 (`query_texts`, n_results = 10, embedding included). Mind
that chromadb requires uvicorn[standard], whose uvloop uvicorn then picks for `personaizer serve`
too (its loop is "auto"): the server measured in that environment is not a plain install's.

Users are on the `unlimited` plan, so no 429 is expected; one is honoured (`Retry-After`) and
counted all the same. Every phase is warmed up first (the first calls of a model or a connection
are slow). Output: a markdown table (figure, measured, peer/limit, ratio, target, result) and one
`BENCH_JSON {...}` line with every number; exit 0 whatever the results unless `--check` (then 1
when a target is missed); 2 when the server or a request failed.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from eval_cranfield import (
    CranDoc,
    external_id_for,
    load_collection,
    percentile,
    uploadable_documents,
)
from local_server import OwnServer, SetupError, log, own_server

from app.embedding.chunking import chunk_text, embedding_text
from app.embedding.embedder import LocalModel, Model
from app.settings import Settings, usable_cores

BATCH = 100
K = 10
#: User A's pause between two requests on each of its connections (figure 6).
READER_PAUSE_S = 0.05
MAX_ATTEMPTS = 30
MB = 1024 * 1024

DOCS_PATH = "/api/knowledge/docs"
SEARCH_PATH = "/api/knowledge/search"
USERS = ("bench@example.com", "reader-a@example.com", "loader-b@example.com")


class BenchError(Exception):
    """A request failed or answered something unexpected: the figures would be wrong."""


class SizeError(ValueError):
    """The sizes asked for do not fit the collection."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Options:
    data_dir: Path
    docs: int = 600
    ingest_docs: int | None = None  # None: every non-empty abstract
    clients: int = 16
    single_docs: int = 160
    small_docs: int = 100
    queries: int | None = None  # None: all 225
    idle_searches: int = 100
    database_url: str | None = None
    chroma: bool = True
    check: bool = False


@dataclass(frozen=True)
class Corpus:
    """The run's slices of the Cranfield collection (disjoint where a figure needs fresh text)."""

    batch: list[CranDoc]  # figures 1-3: the main user's documents
    single_one: list[CranDoc]  # figure 4, one client
    single_many: list[CranDoc]  # figure 4, many clients
    small: list[CranDoc]  # figure 6: user A
    load: list[CranDoc]  # figure 6: user B's import
    queries: list[str]


def make_corpus(options: Options) -> Corpus:
    collection = load_collection(options.data_dir)
    docs = uploadable_documents(collection.documents)
    need = options.docs + 2 * options.single_docs
    if need > len(docs):
        raise SizeError(
            f"--docs + 2 x --single-docs is {need}; Cranfield has {len(docs)} usable abstracts"
        )
    load = options.ingest_docs if options.ingest_docs is not None else len(docs)
    if not 1 <= load <= len(docs) or not 1 <= options.small_docs <= len(docs):
        raise SizeError(f"--ingest-docs and --small-docs must be within 1..{len(docs)}")
    queries = [q.text for q in collection.queries if q.text]
    queries = queries[: options.queries] if options.queries else queries
    single = docs[options.docs : need]
    return Corpus(
        batch=docs[: options.docs],
        single_one=single[: options.single_docs],
        single_many=single[options.single_docs :],
        small=docs[: options.small_docs],
        load=docs[:load],
        queries=queries,
    )


def item_for(doc: CranDoc) -> dict[str, Any]:
    """The upsert item of a document, as scripts/eval_cranfield.py uploads it."""
    item: dict[str, Any] = {"external_id": external_id_for(doc.doc_id), "content": doc.text}
    if doc.title:
        item["title"] = doc.title
    return item


def batches(docs: Sequence[CranDoc], size: int = BATCH) -> list[Sequence[CranDoc]]:
    return [docs[i : i + size] for i in range(0, len(docs), size)]


def server_texts(docs: Sequence[CranDoc]) -> list[str]:
    """What the server embeds for `docs` uploaded in batches: each chunk with the title folded
    in (app.embedding.chunking, as app/services/knowledge.py plans it), once per distinct text of a batch."""
    out: list[str] = []
    for batch in batches(docs):
        texts = (embedding_text(d.title or None, c.text) for d in batch for c in chunk_text(d.text))
        out.extend(dict.fromkeys(texts))
    return out


# --------------------------------------------------------------------------- results


@dataclass
class RawFigures:
    texts: int
    seconds: float
    docs_per_s: float
    query_p50_ms: float


@dataclass
class ChromaFigures:
    version: str
    ingest_s: float
    ingest_docs_per_s: float
    replay_s: float
    query_p50_ms: float


@dataclass
class ServerFigures:
    ingest_s: float = math.nan
    ingest_docs_per_s: float = math.nan
    replay_s: float = math.nan
    search_p50_ms: float = math.nan
    search_p95_ms: float = math.nan
    #: The raw encoding of each query, timed right after its search (the server then idle).
    search_raw_query_p50_ms: float = math.nan
    #: The server's own `took_ms` for those searches (from the query's arrival in the search
    #: service to its answer): the rest of the latency is HTTP, the client and authentication.
    search_took_p50_ms: float = math.nan
    single_one_docs_per_s: float = math.nan
    single_many_docs_per_s: float = math.nan
    rss_idle_mb: float = math.nan
    rss_after_mb: float = math.nan
    rss_peak_mb: float = math.nan
    idle_search_p50_ms: float = math.nan
    idle_search_p95_ms: float = math.nan
    idle_get_p99_ms: float = math.nan
    load_search_p50_ms: float = math.nan
    load_search_p95_ms: float = math.nan
    load_search_max_ms: float = math.nan
    load_get_p99_ms: float = math.nan
    load_get_max_ms: float = math.nan
    load_searches: int = 0
    load_gets: int = 0
    load_s: float = math.nan
    throttled: int = 0


@dataclass
class Results:
    engine: str
    #: The encoder the server and the raw figures ran (`PERSONAIZER_ENCODER`).
    encoder: str
    docs: int
    load_docs: int
    clients: int
    single_docs: int
    queries: int
    raw: RawFigures
    server: ServerFigures
    chroma: ChromaFigures | None
    chroma_skipped: str | None = None

    # The figures the targets are about (see the module docstring).
    @property
    def ingest_ratio(self) -> float:
        return self.server.ingest_docs_per_s / self.raw.docs_per_s

    @property
    def replay_ratio(self) -> float:
        return self.server.ingest_s / self.server.replay_s

    @property
    def search_overhead_ms(self) -> float:
        return self.server.search_p50_ms - self.server.search_raw_query_p50_ms

    @property
    def concurrency_ratio(self) -> float:
        return self.server.single_many_docs_per_s / self.server.single_one_docs_per_s

    @property
    def load_search_ratio(self) -> float:
        return self.server.load_search_p50_ms / self.server.idle_search_p50_ms


@dataclass(frozen=True)
class Target:
    name: str
    value: Callable[[Results], float]
    limit: float
    at_least: bool  # True: value >= limit passes; False: value <= limit passes

    def passed(self, results: Results) -> bool:
        value = self.value(results)
        return value >= self.limit if self.at_least else value <= self.limit


TARGETS = (
    Target("ingest_vs_raw", lambda r: r.ingest_ratio, 0.9, True),
    Target("first_ingest_vs_replay", lambda r: r.replay_ratio, 100.0, True),
    Target("search_overhead_ms", lambda r: r.search_overhead_ms, 10.0, False),
    Target("concurrent_vs_one_client", lambda r: r.concurrency_ratio, 1.5, True),
    Target("search_under_load_vs_idle", lambda r: r.load_search_ratio, 2.0, False),
    Target("get_p99_under_load_ms", lambda r: r.server.load_get_p99_ms, 50.0, False),
)


# --------------------------------------------------------------------------- in-process peers


def raw_encoder() -> Model:
    """The encoder the server will run (`PERSONAIZER_ENCODER`, as its settings read it), on
    every core this process may use: the model's best on this machine, the limit the server's
    figures are divided by. (The server's onnx encoder runs one thread a call, its bulk
    workers side by side.)"""
    settings = Settings()
    if settings.encoder == "onnx":
        from app.embedding.onnx_encoder import OnnxModel

        return OnnxModel(settings.encoder_cache_path, threads=usable_cores())
    return LocalModel()


def measure_raw_encoder(model: Model, corpus: Corpus) -> RawFigures:
    """The model alone: the batch ingest's texts in one call, and one query at a time."""
    texts = server_texts(corpus.batch)
    model.encode(texts[:64])  # warm up: the first calls are slow
    for query in corpus.queries[:5]:
        model.encode([query])
    started = time.perf_counter()
    model.encode(texts)
    seconds = time.perf_counter() - started
    query_ms = []
    for query in corpus.queries:
        started = time.perf_counter()
        model.encode([query])
        query_ms.append((time.perf_counter() - started) * 1000)
    log(f"raw encoder: {len(texts)} texts of {len(corpus.batch)} documents in {seconds:.1f} s")
    return RawFigures(len(texts), seconds, len(corpus.batch) / seconds, percentile(query_ms, 50))


def measure_chroma(model: Model, corpus: Corpus) -> ChromaFigures | str:
    """Chroma in-process with the same model and texts; the reason instead when unavailable."""
    try:
        import chromadb
        from chromadb import Documents, EmbeddingFunction, Embeddings
        from chromadb.config import Settings
    except ImportError as exc:
        return f"chromadb is not importable ({exc})"

    class Local(EmbeddingFunction[Documents]):  # type: ignore[misc,unused-ignore]
        """The bench's loaded all-MiniLM-L6-v2 (no download), as Chroma's embedding function."""

        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            return list(model.encode(list(input)))

        @staticmethod
        def name() -> str:
            return "personaizer-bench-local"

        def get_config(self) -> dict[str, Any]:
            return {}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> Local:
            return Local()

    def upsert_all(collection: Any, docs: Sequence[CranDoc]) -> float:
        started = time.perf_counter()
        for batch in batches(docs):
            ids, texts = [], []
            for doc in batch:
                for c in chunk_text(doc.text):
                    ids.append(f"{external_id_for(doc.doc_id)}#{c.index}")
                    texts.append(embedding_text(doc.title or None, c.text))
            collection.upsert(ids=ids, documents=texts)
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="bench-chroma-", ignore_cleanup_errors=True) as tmp:
        client = chromadb.PersistentClient(path=tmp, settings=Settings(anonymized_telemetry=False))
        space = {"hnsw:space": "cosine"}
        # Chroma types its embedding functions over texts *and* images; this one takes texts.
        local: Any = Local()
        warm = client.create_collection("warmup", embedding_function=local, metadata=space)
        upsert_all(warm, corpus.single_one[:8])
        warm.query(query_texts=corpus.queries[:1], n_results=K)
        collection = client.create_collection("bench", embedding_function=local, metadata=space)
        ingest_s = upsert_all(collection, corpus.batch)
        replay_s = upsert_all(collection, corpus.batch)
        query_ms = []
        for query in corpus.queries:
            started = time.perf_counter()
            collection.query(query_texts=[query], n_results=K)
            query_ms.append((time.perf_counter() - started) * 1000)
        del collection, warm, client, local
    log(f"chroma: ingest {ingest_s:.1f} s, replay {replay_s:.1f} s")
    return ChromaFigures(
        version=str(chromadb.__version__),
        ingest_s=ingest_s,
        ingest_docs_per_s=len(corpus.batch) / ingest_s,
        replay_s=replay_s,
        query_p50_ms=percentile(query_ms, 50),
    )


# --------------------------------------------------------------------------- HTTP


class Api:
    """One user's keep-alive client; retries 429 and 503 after `Retry-After`, counting them."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, headers={"X-Api-Key": api_key}, timeout=600.0
        )
        self.throttled = 0

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[Any, float]:
        """The JSON answer and the latency (ms) of the attempt that succeeded."""
        for _ in range(MAX_ATTEMPTS):
            started = time.perf_counter()
            try:
                response = await self.client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise BenchError(f"{method} {path}: {exc!r}") from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status_code in (429, 503):
                self.throttled += 1
                await asyncio.sleep(_retry_after(response))
                continue
            if not response.is_success:
                raise BenchError(f"{method} {path}: HTTP {response.status_code} {response.text}")
            return response.json(), elapsed_ms
        raise BenchError(f"{method} {path}: still refused after {MAX_ATTEMPTS} attempts")


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.1, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def by_id(doc: CranDoc) -> str:
    return f"{DOCS_PATH}/by-external-id/{external_id_for(doc.doc_id)}"


async def upload(api: Api, docs: Sequence[CranDoc], expect: str) -> float:
    """Batch-upsert `docs` in batches of 100; every result must be `expect`. Seconds taken."""
    started = time.perf_counter()
    for batch in batches(docs):
        payload, _ = await api.call("PUT", DOCS_PATH, {"items": [item_for(d) for d in batch]})
        statuses = {r["status"] for r in payload["results"]}
        if statuses != {expect}:
            raise BenchError(f"batch upsert answered {sorted(statuses)}, expected {expect}")
    return time.perf_counter() - started


async def search(api: Api, query: str) -> float:
    _, ms = await api.call("POST", SEARCH_PATH, {"query": query, "k": K})
    return ms


async def warm_up(server: OwnServer, corpus: Corpus) -> None:
    """First calls are slow (model, connections, statement caches): exercise every path once,
    as user B, whose documents are not measured (its import later finds these five no_op)."""
    loader = server.api_keys[USERS[2]]
    async with Api(server.base_url, loader) as api:
        await upload(api, corpus.load[:4], "created")
        doc = corpus.load[4 % len(corpus.load)]
        await api.call("PUT", by_id(doc), item_for(doc))
        for query in corpus.queries[:5]:
            await search(api, query)
        await api.call("GET", by_id(doc))


# --------------------------------------------------------------------------- server figures


async def measure_ingest(api: Api, docs: Sequence[CranDoc], figures: ServerFigures) -> None:
    """Figures 1 and 2: the first batch ingest, then the same items again (all `no_op`)."""
    figures.ingest_s = await upload(api, docs, "created")
    figures.ingest_docs_per_s = len(docs) / figures.ingest_s
    figures.replay_s = await upload(api, docs, "no_op")
    log(f"server: ingest {figures.ingest_s:.1f} s, replay {figures.replay_s:.3f} s")


async def measure_search(
    api: Api, queries: Sequence[str], model: Model, figures: ServerFigures
) -> None:
    """Figure 3: the queries one after another, default mode, k = 10; after each, the same
    query encoded in this process while the server waits for the next request. Interleaved,
    both are timed in the same state of the machine: encoding a query measured 11-12 ms on a
    cold machine and 14-15 ms in the same process after a minute of bulk encoding (its cores'
    clocks, whatever the app does), so a limit measured before the server's ingests is not the
    limit its searches ran against."""
    await search(api, queries[0])
    model.encode([queries[0]])
    latencies, raw, took = [], [], []
    for query in queries:
        answer, ms = await api.call("POST", SEARCH_PATH, {"query": query, "k": K})
        latencies.append(ms)
        took.append(float(answer["took_ms"]))
        started = time.perf_counter()
        model.encode([query])
        raw.append((time.perf_counter() - started) * 1000)
    figures.search_p50_ms = percentile(latencies, 50)
    figures.search_p95_ms = percentile(latencies, 95)
    figures.search_raw_query_p50_ms = percentile(raw, 50)
    figures.search_took_p50_ms = percentile(took, 50)


async def single_puts(base_url: str, key: str, docs: Sequence[CranDoc], clients: int) -> float:
    """Docs/s of `clients` clients each PUTting single fresh documents, one at a time."""
    pending = iter(docs)
    apis = [Api(base_url, key) for _ in range(clients)]

    async def worker(api: Api) -> None:
        for doc in pending:  # one iterator shared: each document goes to one worker
            payload, _ = await api.call("PUT", by_id(doc), item_for(doc))
            if payload["status"] != "created":
                raise BenchError(f"single upsert answered {payload['status']}, expected created")

    try:
        # Open every connection before the clock starts.
        await asyncio.gather(*(api.call("GET", "/healthz") for api in apis))
        started = time.perf_counter()
        await asyncio.gather(*(worker(api) for api in apis))
        return len(docs) / (time.perf_counter() - started)
    finally:
        await asyncio.gather(*(api.client.aclose() for api in apis))


async def measure_concurrency(
    server: OwnServer, corpus: Corpus, clients: int, figures: ServerFigures
) -> None:
    """Figure 4: single-document PUTs by one client, then by `clients` at once."""
    key = server.api_keys[USERS[0]]
    figures.single_one_docs_per_s = await single_puts(server.base_url, key, corpus.single_one, 1)
    figures.single_many_docs_per_s = await single_puts(
        server.base_url, key, corpus.single_many, clients
    )
    log(
        f"server: single PUTs {figures.single_one_docs_per_s:.1f} docs/s (1 client), "
        f"{figures.single_many_docs_per_s:.1f} docs/s ({clients} clients)"
    )


async def reader_loops(
    searcher: Api, getter: Api, corpus: Corpus, done: Callable[[int], bool]
) -> tuple[list[float], list[float]]:
    """User A searching on one connection and reading documents back on another, a request
    every `READER_PAUSE_S` or so on each, each at least once, until `done(searches so far)`."""
    search_ms: list[float] = []
    get_ms: list[float] = []
    queries = itertools.cycle(corpus.queries)
    docs = itertools.cycle(corpus.small)

    async def searching() -> None:
        while True:
            search_ms.append(await search(searcher, next(queries)))
            if done(len(search_ms)):
                return
            await asyncio.sleep(READER_PAUSE_S)

    async def getting() -> None:
        while True:
            _, ms = await getter.call("GET", by_id(next(docs)))
            get_ms.append(ms)
            if done(len(search_ms)):
                return
            await asyncio.sleep(READER_PAUSE_S)

    await asyncio.gather(searching(), getting())
    return search_ms, get_ms


async def measure_isolation(
    server: OwnServer, corpus: Corpus, idle_searches: int, figures: ServerFigures
) -> None:
    """Figure 6: user A's searches and reads, idle and while user B imports a corpus."""
    reader, loader = server.api_keys[USERS[1]], server.api_keys[USERS[2]]
    async with (
        Api(server.base_url, reader) as searcher,
        Api(server.base_url, reader) as getter,
        Api(server.base_url, loader) as importer,
    ):
        await upload(searcher, corpus.small, "created")
        search_ms, get_ms = await reader_loops(
            searcher, getter, corpus, lambda n: n >= idle_searches
        )
        figures.idle_search_p50_ms = percentile(search_ms, 50)
        figures.idle_search_p95_ms = percentile(search_ms, 95)
        figures.idle_get_p99_ms = percentile(get_ms, 99)

        finished = asyncio.Event()

        async def importing() -> float:
            try:
                # Its first five documents are the warm-up's: no_op, the rest are created.
                started = time.perf_counter()
                for batch in batches(corpus.load):
                    items = [item_for(d) for d in batch]
                    await importer.call("PUT", DOCS_PATH, {"items": items})
                return time.perf_counter() - started
            finally:
                finished.set()

        load_s, (search_ms, get_ms) = await asyncio.gather(
            importing(), reader_loops(searcher, getter, corpus, lambda _: finished.is_set())
        )
        figures.load_s = load_s
        figures.load_search_p50_ms = percentile(search_ms, 50)
        figures.load_search_p95_ms = percentile(search_ms, 95)
        figures.load_search_max_ms = max(search_ms)
        figures.load_get_p99_ms = percentile(get_ms, 99)
        figures.load_get_max_ms = max(get_ms)
        figures.load_searches, figures.load_gets = len(search_ms), len(get_ms)
        for api in (searcher, getter, importer):
            figures.throttled += api.throttled
    log(
        f"server: user B imported {len(corpus.load)} documents in {load_s:.1f} s; user A made "
        f"{len(search_ms)} searches and {len(get_ms)} reads meanwhile"
    )


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB (Linux /proc)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024 / MB
    return out


async def measure_server(
    server: OwnServer, corpus: Corpus, options: Options, model: Model
) -> ServerFigures:
    figures = ServerFigures()
    figures.rss_idle_mb = memory_mb(server.pid)["VmRSS"]
    await warm_up(server, corpus)
    async with Api(server.base_url, server.api_keys[USERS[0]]) as api:
        await measure_ingest(api, corpus.batch, figures)
        await measure_search(api, corpus.queries, model, figures)
        figures.throttled += api.throttled
    await measure_concurrency(server, corpus, options.clients, figures)
    await measure_isolation(server, corpus, options.idle_searches, figures)
    memory = memory_mb(server.pid)
    figures.rss_after_mb, figures.rss_peak_mb = memory["VmRSS"], memory["VmHWM"]
    return figures


# --------------------------------------------------------------------------- report


def _n(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _verdict(results: Results, name: str) -> str:
    target = next(t for t in TARGETS if t.name == name)
    return "pass" if target.passed(results) else "**FAIL**"


def table(results: Results) -> str:
    r, s, raw = results, results.server, results.raw
    rows = [
        ("figure", "measured", "peer / limit", "ratio", "target", "result"),
        (
            f"batch ingest, {r.docs} docs in batches of {BATCH}",
            f"{_n(s.ingest_docs_per_s)} docs/s",
            f"raw {r.encoder} encoder {_n(raw.docs_per_s)} docs/s",
            f"{_n(r.ingest_ratio, 2)}x",
            ">= 0.9x",
            _verdict(r, "ingest_vs_raw"),
        ),
        (
            "first ingest / identical replay (all no_op)",
            f"{_n(s.ingest_s, 2)} s / {_n(s.replay_s, 3)} s",
            "-",
            f"{_n(r.replay_ratio, 0)}x",
            ">= 100x",
            _verdict(r, "first_ingest_vs_replay"),
        ),
        (
            f"search p50 over HTTP, default mode, k={K} ({r.queries} queries)",
            f"{_n(s.search_p50_ms)} ms (p95 {_n(s.search_p95_ms)}; server took_ms p50"
            f" {_n(s.search_took_p50_ms)})",
            f"raw query encoding p50 {_n(s.search_raw_query_p50_ms)} ms, interleaved"
            f" (cold {_n(raw.query_p50_ms)})",
            f"+{_n(r.search_overhead_ms)} ms",
            "<= +10 ms",
            _verdict(r, "search_overhead_ms"),
        ),
        (
            f"single-doc PUTs, {r.clients} clients vs 1 ({r.single_docs} docs each)",
            f"{_n(s.single_many_docs_per_s)} docs/s",
            f"1 client {_n(s.single_one_docs_per_s)} docs/s",
            f"{_n(r.concurrency_ratio, 2)}x",
            ">= 1.5x",
            _verdict(r, "concurrent_vs_one_client"),
        ),
        (
            "server RSS: idle (model loaded) / after the ingests",
            f"{_n(s.rss_idle_mb, 0)} MiB / {_n(s.rss_after_mb, 0)} MiB",
            f"peak {_n(s.rss_peak_mb, 0)} MiB",
            "-",
            "reported",
            "-",
        ),
        (
            f"user A search p50 while user B ingests {r.load_docs} docs",
            f"{_n(s.load_search_p50_ms)} ms (p95 {_n(s.load_search_p95_ms)}, "
            f"max {_n(s.load_search_max_ms)})",
            f"idle {_n(s.idle_search_p50_ms)} ms (p95 {_n(s.idle_search_p95_ms)})",
            f"{_n(r.load_search_ratio, 2)}x",
            "<= 2x",
            _verdict(r, "search_under_load_vs_idle"),
        ),
        (
            "user A GET by external_id p99 during that ingest",
            f"{_n(s.load_get_p99_ms)} ms (max {_n(s.load_get_max_ms)})",
            f"limit 50 ms (idle p99 {_n(s.idle_get_p99_ms)} ms)",
            "-",
            "<= 50 ms",
            _verdict(r, "get_p99_under_load_ms"),
        ),
    ]
    c = r.chroma
    if c is not None:
        rows += [
            (
                f"ingest vs Chroma {c.version} (in-process, same model)",
                f"{_n(s.ingest_docs_per_s)} docs/s",
                f"Chroma {_n(c.ingest_docs_per_s)} docs/s",
                f"{_n(s.ingest_docs_per_s / c.ingest_docs_per_s, 2)}x",
                "reported",
                "-",
            ),
            (
                "replay time vs Chroma (Chroma re-embeds)",
                f"{_n(s.replay_s, 3)} s",
                f"Chroma {_n(c.replay_s, 2)} s",
                f"{_n(s.replay_s / c.replay_s, 3)}x",
                "reported",
                "-",
            ),
            (
                "search / query p50 vs Chroma (embedding included)",
                f"{_n(s.search_p50_ms)} ms",
                f"Chroma {_n(c.query_p50_ms)} ms",
                f"{_n(s.search_p50_ms / c.query_p50_ms, 2)}x",
                "reported",
                "-",
            ),
        ]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def as_json(results: Results) -> dict[str, Any]:
    """Every number of the run, flat, plus the ratios the targets are about and the verdicts."""
    out: dict[str, Any] = {
        "engine": results.engine,
        "encoder": results.encoder,
        "docs": results.docs,
        "load_docs": results.load_docs,
        "clients": results.clients,
        "single_docs": results.single_docs,
        "queries": results.queries,
    }
    out.update({f"raw_{k}": v for k, v in asdict(results.raw).items()})
    out.update({f"server_{k}": v for k, v in asdict(results.server).items()})
    out.update(
        {
            "ingest_vs_raw": results.ingest_ratio,
            "first_ingest_vs_replay": results.replay_ratio,
            "search_overhead_ms": results.search_overhead_ms,
            "concurrent_vs_one_client": results.concurrency_ratio,
            "search_under_load_vs_idle": results.load_search_ratio,
            "get_p99_under_load_ms": results.server.load_get_p99_ms,
        }
    )
    out["passed"] = {t.name: t.passed(results) for t in TARGETS}
    if results.chroma is not None:
        out.update({f"chroma_{k}": v for k, v in asdict(results.chroma).items()})
    else:
        out["chroma_skipped"] = results.chroma_skipped
    # JSON has no NaN: a figure that could not be measured is null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


# --------------------------------------------------------------------------- main


def run(options: Options) -> int:
    corpus = make_corpus(options)
    # The in-process measurements first, the server not yet started: they must not share the
    # two cores with it.
    model = raw_encoder()
    raw = measure_raw_encoder(model, corpus)
    chroma = measure_chroma(model, corpus) if options.chroma else "--no-chroma"
    if isinstance(chroma, str):
        log(f"Chroma peer skipped: {chroma}")
    gc.collect()
    try:
        with own_server(options.database_url, USERS) as server:
            # The model stays loaded here for figure 3's interleaved query encodings.
            figures = asyncio.run(measure_server(server, corpus, options, model))
    except (SetupError, BenchError) as exc:
        log(f"error: {exc}")
        return 2
    results = Results(
        engine="postgresql" if options.database_url else "sqlite",
        encoder=Settings().encoder,
        docs=len(corpus.batch),
        load_docs=len(corpus.load),
        clients=options.clients,
        single_docs=options.single_docs,
        queries=len(corpus.queries),
        raw=raw,
        server=figures,
        chroma=chroma if isinstance(chroma, ChromaFigures) else None,
        chroma_skipped=chroma if isinstance(chroma, str) else None,
    )
    print(table(results))
    if isinstance(chroma, str):
        print(f"\nChroma peer skipped: {chroma}")
    print("\nBENCH_JSON " + json.dumps(as_json(results)), flush=True)
    failed = [t.name for t in TARGETS if not t.passed(results)]
    if failed:
        log(f"targets missed: {', '.join(failed)}")
    return 1 if options.check and failed else 0


def positive(values: Iterable[tuple[str, int | None]]) -> list[str]:
    """The names of the options that are given and not positive."""
    return [name for name, value in values if value is not None and value < 1]


__all__ = ["Options", "Results", "SizeError", "positive", "run"]
