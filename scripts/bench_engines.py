"""Both engines over HTTP in one run (`scripts/bench.py --engines`): search p50 per mode on
SQLite and on PostgreSQL, their ratio, and whether the engines' keyword answers are the same.

Two `personaizer serve` processes (scripts/local_server.py): one on a temporary SQLite file, one
on the empty PostgreSQL database `--database-url`. The same Cranfield abstracts go to both, then
each query runs in each mode on both, the engines taking turns request by request, so that both
see the same load on the machine (a busy machine slows both alike; the ratio is what is kept).
A first pass over the queries warms both (their kept matrices, PostgreSQL's plans) and is not
counted. The latency is the client's, request to response.

Per mode it prints p50 on each engine and PostgreSQL's p50 / SQLite's (target: at most 1.3x,
issue 22), and for keyword how many queries got the same answer from both: the same documents
in the same order with keyword scores equal to 1e-9.

    .venv/bin/python scripts/bench.py --engines --database-url postgresql://... \
        [--docs 1398] [--queries 225] [--data DIR]

Exit 0 whatever the figures; 2 when a server could not be started or a request failed.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import eval_cranfield as cran
from local_server import SetupError, own_server

MODES = ("semantic", "keyword", "hybrid")
K = 10
#: PostgreSQL's p50 over SQLite's, per mode, at most (issue 22).
TARGET_RATIO = 1.3


@dataclass(frozen=True)
class Options:
    docs: int
    queries: int | None
    data_dir: Path
    database_url: str


def _answer(payload: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["external_id"], float(h.get("keyword_score") or 0.0)) for h in payload["results"]]


def _same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    return [x for x, _ in a] == [y for y, _ in b] and all(
        math.isclose(s, t, rel_tol=1e-9, abs_tol=1e-12) for (_, s), (_, t) in zip(a, b, strict=True)
    )


def run(options: Options) -> int:
    collection = cran.load_collection(options.data_dir)
    documents = cran.uploadable_documents(collection.documents)[: options.docs]
    queries = collection.queries[: options.queries] if options.queries else collection.queries
    try:
        with contextlib.ExitStack() as stack:
            clients: dict[str, cran.ApiClient] = {}
            for engine, url in (("sqlite", None), ("postgresql", options.database_url)):
                server = stack.enter_context(own_server(url))
                client = cran.ApiClient(server.base_url, server.api_key)
                stack.callback(client.close)
                cran._log(f"{engine}: uploading {len(documents)} documents")
                cran.upload_documents(client, documents)
                clients[engine] = client
            times: dict[tuple[str, str], list[float]] = {}
            equal = 0
            for counted in (False, True):
                for mode in MODES:
                    for query in queries:
                        body = {"query": query.text, "k": K, "mode": mode}
                        answers = {}
                        for engine, client in clients.items():
                            payload, ms = client.request_json("POST", "/api/knowledge/search", body)
                            answers[engine] = _answer(payload)
                            if counted:
                                times.setdefault((engine, mode), []).append(ms)
                        if counted and mode == "keyword":
                            equal += _same(answers["sqlite"], answers["postgresql"])
    except (cran.RequestFailedError, SetupError) as exc:
        cran._log(f"error: {exc}")
        return 2
    figures: dict[str, Any] = {"docs": len(documents), "queries": len(queries), "k": K}
    lines = [
        f"{len(documents)} Cranfield abstracts, {len(queries)} queries per mode, k = {K},"
        " client-measured p50 over HTTP:",
        "",
        "| mode | SQLite p50 ms | PostgreSQL p50 ms | PostgreSQL / SQLite |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        lite = cran.percentile(times[("sqlite", mode)], 50)
        post = cran.percentile(times[("postgresql", mode)], 50)
        ratio = post / lite
        mark = "ok" if ratio <= TARGET_RATIO else f"over {TARGET_RATIO}x"
        lines.append(f"| {mode} | {lite:.1f} | {post:.1f} | {ratio:.2f}x ({mark}) |")
        figures[mode] = {"sqlite_p50_ms": lite, "postgresql_p50_ms": post, "ratio": ratio}
    lines.append("")
    lines.append(f"keyword answers equal on both engines: {equal} of {len(queries)} queries")
    figures["keyword_equal"] = equal
    print("\n".join(lines))
    print("BENCH_ENGINES_JSON " + json.dumps(figures))
    return 0
