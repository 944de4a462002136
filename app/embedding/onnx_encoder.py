"""all-MiniLM-L6-v2 on ONNX Runtime: the default encoder (`PERSONAIZER_ENCODER=onnx`).

Why: once the graph is exported and cached the server never imports torch: it loads in about
a second instead of five or more, holds about half the memory between batches, and embeds a
single query about twice as fast (batches of documents at about torch's speed; figures in
scripts/bench_encoder.py's output, quoted in the README). The vectors are the torch encoder's
to within float rounding (cosine >= 0.9999), so a deployment can switch either way without
re-embedding its documents.

The graph is exported from the bundled weights, never downloaded (app/embedding/onnx_export.py). The rest
of the pipeline is sentence-transformers' for this model, step by step: the model's own fast
tokenizer (`tokenizer.json`) truncating at 256 tokens (`sentence_bert_config.json`) and padding
to the longest text of a batch; texts sorted by length into batches of at most 32 (and of at
most `BATCH_CHARS` characters padded: smaller batches of long texts measured faster); the transformer,
mean pooling over the attention mask and L2 normalisation (those three inside the graph).
fp32 only: int8 quantisation costs retrieval quality.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from app.embedding.chunking import tokenizer_file
from app.embedding.embedder import DIMS, _batches
from app.embedding.onnx_export import (
    EXPORT_MODULES,
    INPUTS,
    MAX_SEQ_LENGTH,
    OUTPUT,
    TOKENIZER,
    LoadedGraph,
    Source,
    load_graph,
    remove_cached,
    resolve_model_dir,
)
from app.models.knowledge import Vectors

log = logging.getLogger(__name__)

#: The pip extra that installs what this encoder needs.
EXTRA = "onnx"
#: Imported to run an exported graph: all a torch-free runtime has (the binary, the image).
RUN_MODULES = ("onnxruntime",)
#: Imported to run (onnxruntime) and to export the graph once (torch, transformers, onnx,
#: onnxscript: only when there is neither a model directory nor a cached export).
REQUIRED_MODULES = (*RUN_MODULES, *EXPORT_MODULES)
#: sentence-transformers' `encode` batch size, which `LocalModel` passes too: the most texts
#: of a call.
BATCH_SIZE = 32
#: A call's texts padded to its longest, in characters, at most (so about one full 200-token
#: chunk a call, up to `BATCH_SIZE` short texts). Measured here, 600 Cranfield abstracts through
#: the server (2 bulk workers, one thread each): batches of 32 encoded 18.1-18.3 docs/s with a
#: peak RSS of ~1.24 GB, of 16 20.6-21.4 and ~0.95 GB, of 4 25.5 and 0.65 GB, bounded to 1,500
#: characters 27.4 docs/s and 0.54 GB: a batch of long texts spends its time moving activations
#: (a [32, 12, 256, 256] attention tensor is 100 MB) rather than computing.
BATCH_CHARS = 1_500
#: ONNX Runtime's intra-op threads when none are given (a server passes its settings'). On the
#: shared 2-core machine one thread answered single queries fastest in every run; two embedded
#: documents 1.5x faster in one run and 1.2x slower in another, as other work took the second
#: core (scripts/bench_encoder.py). A server's event loop wants a core too.
DEFAULT_THREADS = 1


class EncoderUnavailable(RuntimeError):
    """The onnx encoder was selected but its packages are not installed."""


def missing_modules(*, export: bool = True) -> list[str]:
    """The packages missing to run the graph, and (`export`) to export it first."""
    names = REQUIRED_MODULES if export else RUN_MODULES
    return [name for name in names if importlib.util.find_spec(name) is None]


def check_available(*, export: bool = True) -> None:
    """Raise `EncoderUnavailable` with one line naming what is missing: to run the graph, and
    (`export`) to export it when no exported model is at hand."""
    missing = missing_modules(export=export)
    if missing:
        hint = (
            "there is no exported model (PERSONAIZER_ENCODER_MODEL_DIR) to run without them"
            if export and not missing_modules(export=False)
            else f"pip install 'personaizer[{EXTRA}]'"
        )
        raise EncoderUnavailable(
            f"PERSONAIZER_ENCODER=onnx needs {', '.join(missing)}: {hint} "
            "(or set PERSONAIZER_ENCODER=torch)"
        )


class OnnxModel:
    """all-MiniLM-L6-v2 on ONNX Runtime (CPU, fp32): unit vectors, as `LocalModel` gives.

    `encode` is blocking and thread-safe, and batches as `LocalModel` does (`_batches`: longest
    first, at most 32, no batch padding its shortest text past a quarter). As there, only
    tokenising is serialised: a session runs calls from several threads side by side, so the
    embedder's query lane never waits for a bulk batch to finish."""

    dims = DIMS

    def __init__(
        self,
        cache_dir: Path,
        *,
        model_dir: Path | None = None,
        threads: int = DEFAULT_THREADS,
        urgent_threads: int | None = None,
        optimization: str = "ORT_ENABLE_ALL",
        spin: bool = False,
        arena: bool = False,
    ) -> None:
        """Load the graph of `model_dir` (made ahead of time; a one-file build's own when not
        given), else (or export once) the graph cached in `cache_dir`, with ONNX Runtime's session
        options: `threads` (intra-op), `optimization` (a `GraphOptimizationLevel` name), `spin`
        (worker threads busy-wait for work) and `arena` (the CPU memory arena). `spin` and `arena`:
        both off by default. Spinning threads burn a core between calls that the event loop
        and other processes need, and were no faster. The arena keeps the largest batch's
        buffers for good: RSS grew to 1.1 GB after three calls of 32 x 256 tokens, against
        0.3 GB without it (torch: 0.56-0.67 GB); batches ran up to 10% faster with it.

        `urgent_threads` (default: `threads`): the intra-op threads of urgent calls (a search's
        query, which someone waits for), in a second session over the same graph when they
        differ (about 90 MB more). A session's threads are fixed when it is made, so the two
        kinds of call each get their own: documents one thread a call, side by side in the
        embedder's bulk workers (throughput; a lone upload never holds every core), queries
        every core (latency: on 2 cores a query encoded in 6 ms on two threads against 8 on
        one, the keyword ranking running beside it all the same)."""
        model_dir = resolve_model_dir(model_dir)
        # Nothing of torch is imported unless this load has to export.
        check_available(export=False)
        import onnxruntime as ort

        def options(intra_op: int) -> Any:
            made = ort.SessionOptions()
            made.intra_op_num_threads = intra_op
            made.inter_op_num_threads = 1
            made.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
            made.enable_cpu_mem_arena = arena
            made.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            return made

        def session(graph: LoadedGraph, intra_op: int) -> Any:
            # The file just checked by its digest, by path when there is one: a session made
            # from bytes keeps them for as long as it lives (onnxruntime's Python wrapper holds
            # them to re-create itself), 87 MB of RSS for nothing. The file is written once
            # under a temporary name and renamed into place (the cache) or shipped read-only
            # (a model directory), so what the runtime reads is what was checked.
            source = str(graph.path) if graph.path is not None else graph.data
            return ort.InferenceSession(
                source, options(intra_op), providers=["CPUExecutionProvider"]
            )

        graph = load_graph(cache_dir, model_dir)
        try:
            main = session(graph, threads)
        except Exception:
            if graph.source != "cache":
                raise
            # The digest matched but the runtime refuses the graph (written by a broken build
            # with the same export version): export again rather than fail every start.
            log.warning("the cached ONNX model does not load; exporting it again", exc_info=True)
            remove_cached(cache_dir)
            graph = load_graph(cache_dir, None)
            main = session(graph, threads)
        urgent_threads = threads if urgent_threads is None else urgent_threads
        #: Where the graph came from (`personaizer --version` and the start's log say it).
        self.source: Source = graph.source
        self.path = graph.path
        #: True when this load exported the graph (there was no valid cached file).
        self.exported = graph.source == "exported now"
        self._session = main
        self._urgent = main if urgent_threads == threads else session(graph, urgent_threads)
        self._tokenizer = load_tokenizer(model_dir / TOKENIZER if model_dir else None)
        log.info("embedding model: onnx, %s (%s)", graph.source, graph.path or "in memory")
        self._tokenizer_lock = threading.Lock()

    @property
    def session_options(self) -> Any:
        """The options the runtime's session runs with (`ort.SessionOptions`)."""
        return self._session.get_session_options()

    @property
    def urgent_session_options(self) -> Any:
        """The options urgent calls' session runs with (the same session unless their threads
        differ)."""
        return self._urgent.get_session_options()

    def encode(self, texts: Sequence[str], *, concurrent: int = 1, urgent: bool = False) -> Vectors:
        """`concurrent` is not used: a session's threads are fixed when it is made; `urgent`
        calls run on the urgent session."""
        session = self._urgent if urgent else self._session
        out = np.empty((len(texts), DIMS), dtype=np.float32)
        for rows in _batches([len(t) for t in texts], BATCH_SIZE, max_padded=BATCH_CHARS):
            out[rows] = self._run(session, [texts[i] for i in rows])
        return out

    def _run(self, session: Any, texts: list[str]) -> Vectors:
        with self._tokenizer_lock:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
        feed = dict(zip(INPUTS, (ids, mask, types), strict=True))
        (vectors,) = session.run([OUTPUT], feed)
        return np.asarray(vectors, dtype=np.float32)


def load_tokenizer(path: Path | None = None) -> Tokenizer:
    """The model's fast tokenizer (`path`, else the model's own tokenizer.json) set as
    sentence-transformers sets it: truncation at 256 tokens and padding to the longest text of
    the batch (tokenizer.json itself says 128 and fixed padding, which sentence-transformers
    overrides)."""
    tokenizer = Tokenizer.from_file(str(path or tokenizer_file()))
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer
