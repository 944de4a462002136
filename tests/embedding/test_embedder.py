"""The embedder's two lanes, with the real model: a query never waits behind documents, a small
upload is not held behind a large one for its whole duration, concurrent small uploads share a
model call, and the vectors are the model's whatever the batching."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.embedding import embedder as embedding
from app.embedding.embedder import PADDING_FLOOR, Embedder, LocalModel, Model, _batches
from app.errors import Unavailable
from app.models.knowledge import Vectors

pytestmark = pytest.mark.anyio

TEXTS = [
    f"Document {i} about the boundary layer of a swept wing at Mach {i % 7}." for i in range(96)
]


@dataclass
class Recorder:
    """The real model, with a log of each call: its texts and the thread it ran on, and an
    event per call begun (so a test can act while the model is busy)."""

    model: Model
    dims: int = 384
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    concurrency: list[int] = field(default_factory=list)
    urgency: list[bool] = field(default_factory=list)
    niceness: list[int] = field(default_factory=list)
    begun: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False) -> Vectors:
        with self.lock:
            self.calls.append((threading.current_thread().name, list(texts)))
            self.concurrency.append(concurrent)
            self.urgency.append(urgent)
            self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        self.begun.release()
        return self.model.encode(texts, concurrent=concurrent, urgent=urgent)

    def call_of(self, text: str) -> int:
        return next(i for i, (_, texts) in enumerate(self.calls) if text in texts)


@pytest.fixture
async def lanes(model: Model) -> AsyncIterator[tuple[Embedder, Recorder]]:
    """One bulk worker: the order in which micro-batches are taken shows call by call."""
    async with _embedder(model, bulk_workers=1) as lanes:
        yield lanes


@pytest.fixture
async def two_workers(model: Model) -> AsyncIterator[tuple[Embedder, Recorder]]:
    async with _embedder(model, bulk_workers=2) as lanes:
        yield lanes


@contextlib.asynccontextmanager
async def _embedder(model: Model, *, bulk_workers: int) -> AsyncIterator[tuple[Embedder, Recorder]]:
    recorder = Recorder(model)
    embedder = Embedder(model=recorder, max_batch=8, bulk_workers=bulk_workers)
    await embedder.start()
    try:
        yield embedder, recorder
    finally:
        await embedder.stop()


async def _first_call_begun(recorder: Recorder) -> None:
    await asyncio.to_thread(recorder.begun.acquire)


async def test_a_query_is_encoded_beside_a_large_upload(lanes: tuple[Embedder, Recorder]) -> None:
    embedder, recorder = lanes
    upload = asyncio.create_task(embedder.embed(TEXTS))
    await _first_call_begun(recorder)
    query = await embedder.embed(["swept wing boundary layer"], lane="query")
    assert not upload.done()  # answered while the upload still had micro-batches to go
    await upload
    threads = {name for name, texts in recorder.calls if "swept wing boundary layer" in texts}
    assert len(threads) == 1 and "query" in threads.pop()
    assert all("bulk" in name for name, texts in recorder.calls if TEXTS[0] in texts)
    # Documents are embedded at a lower CPU priority than queries (and the event loop).
    by_lane = {
        "query" if "query" in name else "bulk": nice
        for (name, _), nice in zip(recorder.calls, recorder.niceness, strict=True)
    }
    assert by_lane["bulk"] > by_lane["query"] == os.getpriority(os.PRIO_PROCESS, 0)
    direct = np.asarray(recorder.model.encode(["swept wing boundary layer"]))
    assert float(query[0] @ direct[0]) > 0.9999


async def test_a_small_upload_takes_its_turn_beside_a_large_one(
    lanes: tuple[Embedder, Recorder],
) -> None:
    embedder, recorder = lanes
    large = asyncio.create_task(embedder.embed(TEXTS))  # 12 micro-batches of 8
    await _first_call_begun(recorder)
    small = await embedder.embed(["A single short document about kites."])
    assert not large.done()
    vectors = await large
    # The small upload went in the next call after the one running when it arrived.
    assert recorder.call_of("A single short document about kites.") <= 1
    assert len(recorder.calls) >= len(TEXTS) // 8
    # Micro-batching changes nothing in the vectors: row i is TEXTS[i]'s, in order.
    direct = recorder.model.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert np.allclose(vectors, direct, atol=1e-5)
    assert small.shape == (1, 384)


async def test_concurrent_small_uploads_share_a_model_call(
    lanes: tuple[Embedder, Recorder],
) -> None:
    embedder, recorder = lanes
    blocker = asyncio.create_task(embedder.embed(TEXTS[:8]))
    await _first_call_begun(recorder)
    # While the model is busy, six single-text uploads arrive: they go in one call, not six.
    singles = await asyncio.gather(*(embedder.embed([t]) for t in TEXTS[8:14]))
    await blocker
    assert len({recorder.call_of(t) for t in TEXTS[8:14]}) == 1
    direct = recorder.model.encode(TEXTS[8:14])
    assert np.allclose(np.concatenate(singles), direct, atol=1e-5)


async def test_a_cancelled_upload_leaves_the_lane_working(
    lanes: tuple[Embedder, Recorder],
) -> None:
    embedder, recorder = lanes
    doomed = asyncio.create_task(embedder.embed(TEXTS))
    await _first_call_begun(recorder)
    doomed.cancel()
    after = await embedder.embed(["Still served after a cancelled upload."])
    assert after.shape == (1, 384)
    # The cancelled upload's remaining micro-batches were dropped, not encoded: at most the
    # one running when it was cancelled (and one begun before the cancellation was seen).
    encoded = sum(t in TEXTS for _, texts in recorder.calls for t in texts)
    assert encoded <= 2 * 8


async def test_two_workers_encode_one_upload_side_by_side_in_order(
    two_workers: tuple[Embedder, Recorder],
) -> None:
    embedder, recorder = two_workers
    lone = await embedder.embed(["A lone document has the cores to itself."])
    assert recorder.concurrency == [1]  # alone: all of the model's threads
    assert recorder.urgency == [False]  # a document: throughput work
    query = await embedder.embed(["a search's query"], lane="query")
    assert recorder.urgency[-1] is True  # someone waits for it
    assert recorder.calls[-1][0].startswith("embedder-query")
    assert np.allclose(query, recorder.model.encode(["a search's query"]), atol=1e-5)
    recorder.calls.clear()
    recorder.concurrency.clear()
    recorder.urgency.clear()
    vectors = await embedder.embed(TEXTS)  # 12 micro-batches of 8
    threads = {name for name, texts in recorder.calls[1:]}
    assert len(threads) == 2 and all("bulk" in name for name in threads)
    assert 2 in recorder.concurrency[1:]  # side by side, each told to take its share
    assert not any(recorder.urgency)
    # Micro-batches finish in any order; row i is still TEXTS[i]'s vector.
    assert np.allclose(vectors, recorder.model.encode(TEXTS), atol=1e-5)
    assert np.allclose(
        lone, recorder.model.encode(["A lone document has the cores to itself."]), atol=1e-5
    )


class Gate:
    """The real model behind a gate, for two bulk workers: a call holding `marker` (one text)
    waits until `others` other calls have begun (or finished, `after_finished`), then
    encodes, or raises when `fail` is set; every other call encodes at once. So a test can put
    one upload's micro-batches on both workers and choose which finishes, or fails, first."""

    dims = 384

    def __init__(
        self, model: Model, marker: str, *, others: int, after_finished: bool, fail: bool
    ) -> None:
        self.model = model
        self.marker = marker
        self.others = others
        self.after_finished = after_finished
        self.fail = fail
        self.state = threading.Condition()
        self.begun = 0
        self.finished: list[bool] = []  # per call finished: whether it held the marker

    def encode(self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False) -> Vectors:
        held = self.marker in texts
        with self.state:
            self.begun += 1
            self.state.notify_all()
            if held:
                counted = (
                    (lambda: len(self.finished))
                    if self.after_finished
                    else (lambda: self.begun - 1)
                )
                assert self.state.wait_for(lambda: counted() >= self.others, timeout=60)
        try:
            if held and self.fail:
                raise RuntimeError("the model failed on this micro-batch")
            return self.model.encode(texts, concurrent=concurrent, urgent=urgent)
        finally:
            with self.state:
                self.finished.append(held)
                self.state.notify_all()


@contextlib.asynccontextmanager
async def _gated(gate: Gate) -> AsyncIterator[Embedder]:
    embedder = Embedder(model=gate, max_batch=8, bulk_workers=2)
    await embedder.start()
    try:
        yield embedder
    finally:
        await embedder.stop()


#: The texts of TEXTS' first micro-batch: the longest first (two-digit numbers), 10 to 17.
FIRST = TEXTS[10]


async def test_micro_batches_finishing_out_of_order_keep_every_row_in_place(
    model: Model,
) -> None:
    """The upload's first micro-batch finishes last, after the other worker has encoded the
    eleven others: row i is still TEXTS[i]'s vector."""
    gate = Gate(model, FIRST, others=11, after_finished=True, fail=False)
    async with _gated(gate) as embedder:
        vectors = await embedder.embed(TEXTS)
    assert gate.finished[-1] and not any(gate.finished[:-1])  # out of order indeed
    assert np.allclose(vectors, model.encode(TEXTS), atol=1e-5)


async def test_a_failed_micro_batch_fails_its_upload_only(model: Model) -> None:
    """One worker's micro-batch raises while the other worker encodes the same upload's other
    half: the upload gets the model's error (once), an upload queued behind it gets its
    vectors, and the lane works on."""
    gate = Gate(model, FIRST, others=1, after_finished=False, fail=True)
    async with _gated(gate) as embedder:
        doomed = asyncio.create_task(embedder.embed(TEXTS[:16]))  # two micro-batches
        behind = asyncio.create_task(embedder.embed(TEXTS[40:44]))
        with pytest.raises(RuntimeError, match="failed on this micro-batch"):
            await doomed
        assert np.allclose(await behind, model.encode(TEXTS[40:44]), atol=1e-5)
        after = await embedder.embed(TEXTS[50:60])
        assert np.allclose(after, model.encode(TEXTS[50:60]), atol=1e-5)
        assert not embedder._bulk and embedder.queue_depth == 0


@dataclass
class Held:
    """The real model, each call held until `release` is set."""

    model: Model
    dims: int = 384
    release: threading.Event = field(default_factory=threading.Event)

    def encode(self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False) -> Vectors:
        assert self.release.wait(timeout=60)
        return self.model.encode(texts, concurrent=concurrent, urgent=urgent)


async def test_an_upload_cancelled_on_two_workers_leaves_the_lane_working(
    model: Model,
) -> None:
    """Cancelled while its micro-batches run on both workers: both calls end, nothing more of
    it is encoded, and the next upload is served."""
    held = Held(model)
    recorder = Recorder(held)
    embedder = Embedder(model=recorder, max_batch=8, bulk_workers=2)
    await embedder.start()
    try:
        doomed = asyncio.create_task(embedder.embed(TEXTS))
        await _first_call_begun(recorder)
        await _first_call_begun(recorder)  # both workers hold a micro-batch of it
        doomed.cancel()
        held.release.set()
        after = await embedder.embed(["Served after an upload cancelled on two workers."])
        assert after.shape == (1, 384)
        encoded = [t for _, texts in recorder.calls for t in texts if t in TEXTS]
        assert len(encoded) == 2 * 8  # the two micro-batches running, no more
        assert not embedder._bulk
    finally:
        await embedder.stop()


async def test_stop_answers_the_requests_still_waiting_with_a_503(model: Model) -> None:
    """Stopped while both bulk workers and the query lane encode, with more micro-batches
    waiting: every request still waiting gets 503 `server.unavailable` rather than waiting
    for ever (the lanes that would answer them are gone), and so does a request after."""
    held = Held(model)
    recorder = Recorder(held)
    embedder = Embedder(model=recorder, max_batch=8, bulk_workers=2)
    await embedder.start()
    upload = asyncio.create_task(embedder.embed(TEXTS))
    query = asyncio.create_task(embedder.embed(["a query"], lane="query"))
    for _ in range(3):  # both bulk workers and the query lane are in the model
        await _first_call_begun(recorder)
    await embedder.stop()
    held.release.set()
    for task in (upload, query):
        with pytest.raises(Unavailable) as info:
            await asyncio.wait_for(task, timeout=60)  # a guard against hanging, not a timing
        assert info.value.code == "server.unavailable"
    with pytest.raises(Unavailable):
        await embedder.embed(["after the stop"])


async def test_the_last_worker_to_go_idle_trims_once(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """malloc_trim runs once each time the bulk lane goes idle, by the last worker to finish,
    never while another worker encodes (it would stall its allocations)."""
    trims: list[int] = []
    trimmed = threading.Semaphore(0)
    embedder = Embedder(model=model, max_batch=8, bulk_workers=2)

    def counting() -> None:
        trims.append(embedder._bulk_running)
        trimmed.release()

    monkeypatch.setattr(embedding, "release_free_memory", counting)
    await embedder.start()
    try:
        await embedder.embed(TEXTS[:40])  # five micro-batches over both workers
        assert await asyncio.to_thread(trimmed.acquire, timeout=60)
        await embedder.embed(["One more document."])
        assert await asyncio.to_thread(trimmed.acquire, timeout=60)
        await embedder.embed(["And another."])
        assert await asyncio.to_thread(trimmed.acquire, timeout=60)
        assert trims == [0, 0, 0]
    finally:
        await embedder.stop()


def test_an_encode_keeps_its_share_of_threads_whatever_another_thread_set(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told it runs beside another encode, a thread's first encode keeps its share of the
    threads even when another thread (the query lane, alone) sets torch's count meanwhile:
    torch gives a thread's first parallel operation the count last set by any thread."""
    import torch

    assert isinstance(model, LocalModel)
    share = max(1, model._threads // 2)
    tokenize = model._tokenize

    def set_elsewhere(n: int) -> None:
        thread = threading.Thread(target=torch.set_num_threads, args=(n,))
        thread.start()
        thread.join()

    def tokenize_while_another_thread_sets(texts: list[str]) -> Any:
        set_elsewhere(share + 2)  # between this thread's set_num_threads and its forward pass
        return tokenize(texts)

    monkeypatch.setattr(model, "_tokenize", tokenize_while_another_thread_sets)
    seen: list[int] = []

    def first_encode_on_a_new_thread() -> None:
        model.encode(["A document encoded beside another."], concurrent=2)
        seen.append(torch.get_num_threads())

    try:
        thread = threading.Thread(target=first_encode_on_a_new_thread)
        thread.start()
        thread.join()
    finally:
        set_elsewhere(model._threads)  # torch's process-wide count as it was
    assert seen == [share]


def test_the_model_gives_sentence_transformers_vectors(model: Model) -> None:
    """LocalModel.encode is sentence-transformers' pipeline written out (batched by length,
    two threads at once): its vectors are the library's own, whatever the mix of lengths."""
    assert isinstance(model, LocalModel)
    texts = [*TEXTS[:20], "x", "", "Ünïcödé and emoji 🛩️ text.", " ".join(TEXTS) * 3]
    library = model._model.encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )
    ours = model.encode(texts)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert np.allclose(ours, library, atol=1e-5)


@given(
    st.lists(st.integers(min_value=0, max_value=5000), max_size=200),
    st.integers(1, 64),
    st.none() | st.integers(1, 20_000),
)
def test_batches_cover_every_text_once_with_little_padding(
    lengths: list[int], size: int, max_padded: int | None
) -> None:
    batches = _batches(lengths, size, max_padded=max_padded)
    rows = sorted(int(i) for batch in batches for i in batch)
    assert rows == list(range(len(lengths)))
    for batch in batches:
        longest, shortest = lengths[batch[0]], min(lengths[i] for i in batch)
        assert 1 <= len(batch) <= size
        assert shortest >= PADDING_FLOOR * longest
        assert all(lengths[i] <= longest for i in batch)
        # Padded to its longest, a batch stays within the bound, unless it is one text.
        assert max_padded is None or len(batch) == 1 or len(batch) * longest <= max_padded
    if max_padded is None:
        # Only the size and the padding floor cut: each batch could not have taken the next.
        for batch, after in itertools.pairwise(batches):
            assert len(batch) == size or lengths[after[0]] < PADDING_FLOOR * lengths[batch[0]]


def test_the_padded_bound_keeps_long_texts_apart_and_short_ones_together() -> None:
    lengths = [1000, 900, 800, 100, 90, 80, 70]
    batches = [sorted(b.tolist()) for b in _batches(lengths, 32, max_padded=1500)]
    assert batches == [[0], [1], [2], [3, 4, 5], [6]]
