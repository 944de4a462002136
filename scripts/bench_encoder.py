"""Raw encoder speed: torch (sentence-transformers) against onnx (ONNX Runtime), in one run.

What `PERSONAIZER_ENCODER` chooses between, measured on the model alone (no server, no HTTP):

- bulk: the first 600 Cranfield abstracts embedded as documents are (title + text), in calls of
  32 texts, seconds for all of them;
- single: `encode([query])` for each of the first 100 Cranfield queries, p50 and p95 in ms;

for torch at 1 and 2 threads (`torch.set_num_threads`) and for onnx at 1 and 2 intra-op threads,
basic and all graph optimisations, with and without its memory arena and spin-waiting. The
variants of one thread count take turns call by call (each call of 32, each query, run by every
variant, a different one first each time), so a burst of other work on a shared machine slows
them alike; with `--rounds N` a variant's bulk figure is its median over the rounds. `--memory`
also loads each encoder alone in a fresh process: load time (onnx from a warm cache) and RSS
around one call of 32 x 256 tokens.

    .venv/bin/python scripts/bench_encoder.py [--data DIR] [--rounds 1] [--docs 600]
                                              [--queries 100] [--cache DIR] [--memory]
                                              [--threads 1,2]

The onnx graph is exported into `--cache` (default: a folder under the system temp dir) on the
first run and reused after.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.embedding.chunking import embedding_text
from app.embedding.embedder import LocalModel, Model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "personaizer-onnx-cache"
CALL_SIZE = 32


def _load_eval() -> Any:
    """scripts/eval_cranfield.py: its Cranfield parser and default data folder (a script, not a
    package: loaded by path)."""
    spec = importlib.util.spec_from_file_location(
        "eval_cranfield", REPO_ROOT / "scripts" / "eval_cranfield.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_cranfield"] = module
    spec.loader.exec_module(module)
    return module


def cranfield_texts(data_dir: Path, n_docs: int, n_queries: int) -> tuple[list[str], list[str]]:
    ev = _load_eval()
    collection = ev.load_collection(data_dir)
    docs = ev.uploadable_documents(collection.documents)[:n_docs]
    texts = [embedding_text(d.title or None, d.text) for d in docs]
    return texts, [q.text for q in collection.queries[:n_queries]]


@dataclass
class Variant:
    name: str
    model: Model
    threads: int
    before: Callable[[], None] = lambda: None
    bulk_s: list[float] = field(default_factory=list)
    single_ms: list[float] = field(default_factory=list)


def torch_variant(torch_model: LocalModel, threads: int) -> Variant:
    import torch

    def before() -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    return Variant(f"torch threads={threads}", torch_model, threads, before)


def onnx_variants(cache: Path, thread_counts: Sequence[int]) -> list[Variant]:
    """ONNX Runtime's session options around the encoder's defaults (1 thread, all graph
    optimisations, no memory arena, no spin-waiting)."""
    from app.embedding.onnx_encoder import OnnxModel

    # EXTENDED makes the same graph as ALL here (the fusions; ALL adds only layout passes).
    options: list[tuple[str, dict[str, Any]]] = [
        ("threads=1 all (default)", {"threads": 1}),
        ("threads=1 basic", {"threads": 1, "optimization": "ORT_ENABLE_BASIC"}),
        ("threads=1 all arena", {"threads": 1, "arena": True}),
        ("threads=2 all", {"threads": 2}),
        ("threads=2 all arena", {"threads": 2, "arena": True}),
        ("threads=2 all arena spin (ORT's own)", {"threads": 2, "arena": True, "spin": True}),
    ]
    return [
        Variant(f"onnx {name}", OnnxModel(cache, **kwargs), kwargs["threads"])
        for name, kwargs in options
        if kwargs["threads"] in thread_counts
    ]


def _timed(v: Variant, texts: list[str]) -> float:
    v.before()
    started = time.perf_counter()
    v.model.encode(texts)
    return time.perf_counter() - started


def _turns(variants: Sequence[Variant], n: int) -> list[Variant]:
    """Every variant once, starting with a different one each call: none always goes first."""
    k = n % len(variants)
    return [*variants[k:], *variants[:k]]


def run_round(variants: Sequence[Variant], docs: list[str], queries: list[str]) -> None:
    """Each call of 32 documents, then each query, is run by every variant in turn: a burst of
    other work on the machine lands on all of them, not on whichever ran at that moment. The
    variants of one thread count take turns together, the 1-thread ones first: a 2-thread
    variant's pool spin-waits after its call and would slow a 1-thread one run right after."""
    for threads in (1, 2):
        group = [v for v in variants if f"threads={threads}" in v.name]
        if group:
            _run_group(group, docs, queries)


def _run_group(variants: Sequence[Variant], docs: list[str], queries: list[str]) -> None:
    for v in variants:
        _timed(v, docs[:CALL_SIZE])  # warm: first-call allocations are not the steady state
    bulk = {id(v): 0.0 for v in variants}
    for n, start in enumerate(range(0, len(docs), CALL_SIZE)):
        for v in _turns(variants, n):
            bulk[id(v)] += _timed(v, docs[start : start + CALL_SIZE])
    for v in variants:
        v.bulk_s.append(bulk[id(v)])
    for n, q in enumerate(queries):
        for v in _turns(variants, n):
            v.single_ms.append(_timed(v, [q]) * 1000)


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(variants: Sequence[Variant], n_docs: int, rounds: int) -> str:
    base = {v.threads: v for v in variants if v.name.startswith("torch")}
    lines = [
        f"bulk: {n_docs} abstracts in calls of {CALL_SIZE}, median of {rounds} rounds; "
        "single: encode([q]), all rounds' calls",
        "",
        f"{'variant':36} {'bulk s':>7} {'docs/s':>7} {'p50 ms':>7} {'p95 ms':>7}"
        f" {'bulk x':>7} {'p50 x':>6}",
    ]
    for v in variants:
        bulk = statistics.median(v.bulk_s)
        p50 = pct(v.single_ms, 50)
        ref = base[v.threads]
        bulk_x = statistics.median(ref.bulk_s) / bulk
        p50_x = pct(ref.single_ms, 50) / p50
        lines.append(
            f"{v.name:36} {bulk:7.2f} {n_docs / bulk:7.1f} {p50:7.2f} {pct(v.single_ms, 95):7.2f}"
            f" {bulk_x:7.2f} {p50_x:6.2f}"
        )
    lines.append("")
    lines.append("x: torch's time at the same thread count / this variant's (above 1: faster)")
    return "\n".join(lines)


_MEMORY_PROBE = """
import json, re, sys, time
started = time.perf_counter()
if sys.argv[1] == "torch":
    from app.embedding.embedder import LocalModel
    model = LocalModel()
else:
    from pathlib import Path
    from app.embedding.onnx_encoder import OnnxModel
    model = OnnxModel(Path(sys.argv[2]))
loaded = time.perf_counter() - started
model.encode(["a long text about the boundary layer " * 60] * 32)  # the largest call: 32 x 256
status = open("/proc/self/status").read()
print(json.dumps({
    "load_s": loaded,
    "rss_mb": int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) / 1024,
    # VmHWM, not ru_maxrss: that one keeps the parent's peak across exec.
    "peak_rss_mb": int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024,
    "torch_imported": "torch" in sys.modules,
}))
"""


def memory(cache: Path) -> str:
    lines = ["", "alone in a fresh process: load time; RSS around one call of 32 x 256 tokens"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    for encoder in ("torch", "onnx"):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, encoder, str(cache)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        lines.append(
            f"  {encoder:5}: load {result['load_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f}"
            f" MB, RSS after {result['rss_mb']:.0f} MB, torch imported: {result['torch_imported']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=_load_eval().DEFAULT_DATA_DIR,
        help="Cranfield folder (default: eval_cranfield.py's)",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="onnx export cache")
    parser.add_argument("--memory", action="store_true", help="also peak RSS per encoder")
    parser.add_argument(
        "--threads", default="1,2", help="thread counts to measure, comma-separated (1,2)"
    )
    args = parser.parse_args(argv)
    if not (args.data / "cran.all.1400").is_file():
        parser.error(f"no cran.all.1400 in {args.data}")

    docs, queries = cranfield_texts(args.data, args.docs, args.queries)
    torch_model = LocalModel()
    counts = sorted({int(t) for t in args.threads.split(",")} & {1, 2})
    if not counts:
        parser.error("--threads: 1, 2 or 1,2")
    torch_variants = [torch_variant(torch_model, n) for n in counts]
    variants = [*torch_variants, *onnx_variants(args.cache, counts)]
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        run_round(variants, docs, queries)
    print(report(variants, len(docs), args.rounds))
    if args.memory:
        print(memory(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
