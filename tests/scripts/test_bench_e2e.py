"""scripts/bench.py --e2e on a tiny size: a real server started, every figure measured.

The collection is a small synthetic one in Cranfield's format, so the test needs no data beyond
the repository. It runs on SQLite only: the mode's PostgreSQL path is the server's
`--database-url`, which the app's own tests cover on both engines. No timing is asserted (the
numbers are the benchmark's business); that each is measured, and that `--check` exits non-zero
exactly when a target is missed, is.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"

#: Every figure of the JSON line that must be a number (beside the run's sizes).
FIGURES = (
    "raw_texts",
    "raw_seconds",
    "raw_docs_per_s",
    "raw_query_p50_ms",
    "server_ingest_s",
    "server_ingest_docs_per_s",
    "server_replay_s",
    "server_search_p50_ms",
    "server_search_p95_ms",
    "server_search_raw_query_p50_ms",
    "server_search_took_p50_ms",
    "server_single_one_docs_per_s",
    "server_single_many_docs_per_s",
    "server_rss_idle_mb",
    "server_rss_after_mb",
    "server_rss_peak_mb",
    "server_idle_search_p50_ms",
    "server_idle_search_p95_ms",
    "server_idle_get_p99_ms",
    "server_load_search_p50_ms",
    "server_load_search_p95_ms",
    "server_load_search_max_ms",
    "server_load_get_p99_ms",
    "server_load_get_max_ms",
    "server_load_searches",
    "server_load_gets",
    "server_load_s",
    "server_throttled",
    "ingest_vs_raw",
    "first_ingest_vs_replay",
    "search_overhead_ms",
    "concurrent_vs_one_client",
    "search_under_load_vs_idle",
    "get_p99_under_load_ms",
)
TARGETS = {
    "ingest_vs_raw",
    "first_ingest_vs_replay",
    "search_overhead_ms",
    "concurrent_vs_one_client",
    "search_under_load_vs_idle",
    "get_p99_under_load_ms",
}
CHROMA = ("chroma_ingest_s", "chroma_ingest_docs_per_s", "chroma_replay_s", "chroma_query_p50_ms")

_WORDS = (
    "boundary layer flow wing supersonic pressure distribution heat transfer shock wave "
    "laminar turbulent nozzle airfoil cylinder drag lift slender body hypersonic mach number "
    "viscous stagnation point plate cone jet buckling shell panel flutter velocity profile"
)
WORDS = _WORDS.split()


def write_collection(folder: Path, docs: int, queries: int) -> None:
    """A small collection in Cranfield's three files: `docs` abstracts, `queries` queries."""
    rng = random.Random(10)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    folder.mkdir()
    records = [
        f".I {i}\n.T\n{words(6)}\n.A\nauthor,a.\n.B\nj. ae. sc. {i}.\n.W\n{words(80)} .\n"
        for i in range(1, docs + 1)
    ]
    (folder / "cran.all.1400").write_text("".join(records))
    asked = [f".I {i:03d}\n.W\n{words(8)} .\n" for i in range(1, queries + 1)]
    (folder / "cran.qry").write_text("".join(asked))
    (folder / "cranqrel").write_text("".join(f"{i} {i} 1\n" for i in range(1, queries + 1)))


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_e2e_measures_every_figure(tmp_path: Path) -> None:
    data = tmp_path / "cranfield"
    write_collection(data, docs=40, queries=5)
    sizes = ["--docs", "12", "--ingest-docs", "30", "--clients", "4", "--single-docs", "6"]
    sizes += ["--small-docs", "8", "--queries", "5", "--idle-searches", "20"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--e2e", "--data", str(data), *sizes, "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]

    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    missing = [name for name in FIGURES if not is_number(result.get(name))]
    assert not missing, result
    assert (result["engine"], result["docs"], result["load_docs"]) == ("sqlite", 12, 30)
    # The raw figures come from the encoder the server ran: the default one.
    assert result["encoder"] == "onnx"
    assert (result["clients"], result["single_docs"], result["queries"]) == (4, 6, 5)
    # Every request succeeded without a throttle, and user A was measured during the import.
    assert result["server_throttled"] == 0
    assert result["server_load_searches"] >= 1 and result["server_load_gets"] >= 1
    assert result["server_rss_peak_mb"] >= result["server_rss_after_mb"] > 0

    assert set(result["passed"]) == TARGETS
    assert done.returncode == (0 if all(result["passed"].values()) else 1)

    if result.get("chroma_skipped") is None:
        assert all(is_number(result[name]) for name in CHROMA), result
    else:
        assert "Chroma peer skipped" in done.stdout
        assert not any(name in result for name in CHROMA)

    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| figure | measured | peer / limit | ratio | target | result |")
    assert len(table) >= 2 + 7  # header, rule, the seven figures
