"""Evaluate the search quality of a PersonAIzer server on the Cranfield collection.

The script uploads the 1398 non-empty Cranfield abstracts through the public API
(``PUT /api/knowledge/docs``, batches of 100, external_id ``cran-<id>``), runs the 225
Cranfield queries through ``POST /api/knowledge/search`` (``k`` = 50, the contract's maximum)
in each requested mode, and reports per mode:

- nDCG@10 with graded gains (gain = 5 - grade for grades 1..4, else 0), a log2 discount and
  the ideal ranking built from every judged relevant document of the query;
- recall@50: the fraction of the query's relevant documents (gain > 0) found in the top 50
  (the README's reference recall is @100, which the contract's k <= 50 cannot reach);
- p50 / p95 of the client-measured request latency (the server's ``took_ms`` is recorded too),

next to the README's reference figures and the targets (semantic >= 0.37, hybrid >= 0.43).

The upload is idempotent: rerunning against the same server answers ``no_op`` for every
document and the evaluation runs as before. A 429 (or 503) is retried after ``Retry-After``.

Run it against a running server::

    python scripts/eval_cranfield.py --url http://127.0.0.1:8000 --api-key pa_live_...

or let it start its own server (a temporary data dir, a user on the ``unlimited`` plan, a fresh
API key, ``personaizer serve`` on a free port; stopped and removed at the end)::

    .venv/bin/python scripts/eval_cranfield.py [--modes semantic,hybrid] [--limit-queries 20]

Options: ``--data DIR`` (default ``<repo root>/../shared/data/cranfield``), ``--json`` (also
print the results as JSON on stdout; the table then goes to stderr), ``--check`` (exit 1 when a
target is missed), ``--encoder torch|onnx`` (the own server's ``PERSONAIZER_ENCODER``; default:
the environment's, else the server's own default, onnx).

Exit codes: 0 done (targets are only reported), 1 a target was missed and ``--check`` was given,
2 a request failed or the server could not be started.

The pure functions (``parse_documents``, ``parse_queries``, ``parse_qrels``, ``load_collection``,
``gain_for_grade``, ``ndcg_at_k``, ``recall_at_k``, ``percentile``) have no side effects, so a
test can load this file with importlib (scripts/ on sys.path, for its sibling local_server.py)
and call them.
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from local_server import SetupError, own_server

MODES = ("semantic", "keyword", "hybrid")
SEARCH_K = 50  # the contract's maximum k
NDCG_K = 10
RECALL_K = SEARCH_K
BATCH_SIZE = 100
EXTERNAL_ID_PREFIX = "cran-"
MAX_RETRIES = 30

# README reference nDCG@10 (all-MiniLM-L6-v2, 225 queries) and what each mode is compared to.
REFERENCES: dict[str, tuple[str, float]] = {
    "semantic": ("exact dense", 0.3817),
    "keyword": ("FTS5 BM25", 0.3618),
    "hybrid": ("RRF k=60", 0.4202),
}
TARGETS: dict[str, float] = {"semantic": 0.37, "hybrid": 0.43}
REFERENCE_DENSE_RECALL_AT_100 = 0.7723

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "cranfield").resolve()

_FIELD_MARKERS = {".T": "title", ".A": "authors", ".B": "source", ".W": "text"}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class CranDoc:
    """One Cranfield document; text fields are whitespace-normalised."""

    doc_id: int
    title: str
    authors: str
    source: str
    text: str


@dataclass(frozen=True)
class CranQuery:
    """One Cranfield query. ``number`` is its 1-based position in cran.qry (what cranqrel uses);
    ``file_id`` is the ``.I`` id written in the file (which skips numbers)."""

    number: int
    file_id: int
    text: str


@dataclass(frozen=True)
class Collection:
    documents: dict[int, CranDoc]
    queries: list[CranQuery]
    qrels: dict[int, dict[int, int]]  # query number -> doc id -> gain (0 for non-relevant)


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip both ends."""
    return " ".join(text.split())


def _parse_records(text: str) -> list[tuple[int, dict[str, str]]]:
    """Split a Cranfield file into ``(id, {field: normalised text})`` records, in file order."""
    records: list[tuple[int, dict[str, list[str]]]] = []
    current: str | None = None
    for raw_line in text.splitlines():
        line = raw_line.rstrip()
        if line.startswith(".I ") or line == ".I":
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"malformed record header: {raw_line!r}")
            records.append((int(parts[1]), {}))
            current = None
        elif line in _FIELD_MARKERS:
            if not records:
                raise ValueError(f"field marker {line} before the first .I record")
            current = _FIELD_MARKERS[line]
            records[-1][1].setdefault(current, [])
        elif current is not None:
            records[-1][1][current].append(raw_line)
        elif line.strip():
            raise ValueError(f"text outside a field: {raw_line!r}")
    return [
        (rid, {name: normalise_whitespace(" ".join(lines)) for name, lines in fields.items()})
        for rid, fields in records
    ]


def parse_documents(text: str) -> dict[int, CranDoc]:
    """Parse cran.all.1400 (``.I/.T/.A/.B/.W`` records) into documents keyed by ``.I`` id.

    Every record is returned, including those with blank text (471 and 995); callers leave those
    out (see :func:`uploadable_documents`).
    """
    documents: dict[int, CranDoc] = {}
    for doc_id, fields in _parse_records(text):
        if doc_id in documents:
            raise ValueError(f"duplicate document id {doc_id}")
        documents[doc_id] = CranDoc(
            doc_id=doc_id,
            title=fields.get("title", ""),
            authors=fields.get("authors", ""),
            source=fields.get("source", ""),
            text=fields.get("text", ""),
        )
    return documents


def parse_queries(text: str) -> list[CranQuery]:
    """Parse cran.qry (``.I/.W`` records). Queries are numbered 1..N by their order in the file,
    which is how cranqrel refers to them (the ``.I`` ids skip numbers)."""
    return [
        CranQuery(number=position, file_id=file_id, text=fields.get("text", ""))
        for position, (file_id, fields) in enumerate(_parse_records(text), start=1)
    ]


def gain_for_grade(grade: int) -> int:
    """cranqrel grade -> nDCG gain: 1 (most relevant) .. 4 give 4 .. 1; anything else gives 0."""
    return 5 - grade if 1 <= grade <= 4 else 0


def parse_qrels(text: str) -> dict[int, dict[int, int]]:
    """Parse cranqrel lines ``query doc grade`` into ``{query number: {doc id: gain}}``.

    Every judgement is kept, the non-relevant ones (grade -1) with gain 0. Should a pair be
    judged twice, the higher gain wins.
    """
    qrels: dict[int, dict[int, int]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ValueError(f"cranqrel line {line_no}: expected 'query doc grade': {line!r}")
        query, doc, grade = (int(p) for p in parts)
        judged = qrels.setdefault(query, {})
        judged[doc] = max(judged.get(doc, 0), gain_for_grade(grade))
    return qrels


def load_collection(data_dir: Path) -> Collection:
    """Read and parse cran.all.1400, cran.qry and cranqrel from ``data_dir``."""

    def read(name: str) -> str:
        return (data_dir / name).read_text(encoding="utf-8", errors="replace")

    return Collection(
        documents=parse_documents(read("cran.all.1400")),
        queries=parse_queries(read("cran.qry")),
        qrels=parse_qrels(read("cranqrel")),
    )


def uploadable_documents(documents: Mapping[int, CranDoc]) -> list[CranDoc]:
    """Documents with non-blank text, by id (blank content is rejected by the API)."""
    return [documents[i] for i in sorted(documents) if documents[i].text]


def external_id_for(doc_id: int) -> str:
    return f"{EXTERNAL_ID_PREFIX}{doc_id}"


def doc_id_from_external_id(external_id: str) -> int | None:
    """``cran-123`` -> 123; anything else (a document that is not ours) -> None."""
    if not external_id.startswith(EXTERNAL_ID_PREFIX):
        return None
    rest = external_id[len(EXTERNAL_ID_PREFIX) :]
    return int(rest) if rest.isdigit() else None


# --------------------------------------------------------------------------- scoring


def _first_occurrences(ranked: Sequence[int | None]) -> list[int | None]:
    """Drop repeated doc ids (a document counts once, at its best rank). ``None`` stands for a
    hit that is not a Cranfield document: it takes a rank and is never relevant."""
    seen: set[int] = set()
    out: list[int | None] = []
    for doc in ranked:
        if doc is not None:
            if doc in seen:
                continue
            seen.add(doc)
        out.append(doc)
    return out


def ndcg_at_k(ranked: Sequence[int | None], gains: Mapping[int, int], k: int = NDCG_K) -> float:
    """nDCG@k with graded (linear) gains and a log2(rank + 1) discount.

    ``ranked`` is the result list, best first; ``gains`` maps doc id -> gain for the query's
    judged documents. The ideal DCG uses every judged document with gain > 0 (also those the
    system could never return). A query without relevant documents scores 0.0.
    """
    if k <= 0:
        raise ValueError("k must be positive")
    dcg = sum(
        gains.get(doc, 0) / math.log2(rank + 1)
        for rank, doc in enumerate(_first_occurrences(ranked)[:k], start=1)
        if doc is not None
    )
    ideal_gains = sorted((g for g in gains.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal_gains, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[int | None], gains: Mapping[int, int], k: int = RECALL_K) -> float:
    """Fraction of the query's relevant documents (gain > 0) found in the top ``k`` of ``ranked``.
    A query without relevant documents scores 0.0."""
    if k <= 0:
        raise ValueError("k must be positive")
    relevant = {doc for doc, g in gains.items() if g > 0}
    if not relevant:
        return 0.0
    found = {doc for doc in ranked[:k] if doc is not None} & relevant
    return len(found) / len(relevant)


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    if not 0 <= pct <= 100:
        raise ValueError("pct must be within 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * pct / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# --------------------------------------------------------------------------- HTTP


class RequestFailedError(Exception):
    """A request failed (transport error or an unexpected status); the run cannot go on."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _retry_after_seconds(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(1.0, float(value))
    except ValueError:
        return 1.0


def _describe_failure(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(body, dict):
        code = body.get("code", "?")
        detail = body.get("detail", body.get("title", ""))
        request_id = body.get("request_id", response.headers.get("X-Request-Id", "?"))
        return f"HTTP {response.status_code} {code}: {detail} (request id {request_id})"
    return f"HTTP {response.status_code}: {response.text[:300]}"


class ApiClient:
    """A thin wrapper around ``httpx.Client`` that retries 429/503 after ``Retry-After``."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 300.0) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"X-Api-Key": api_key, "Accept": "application/json"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def request_json(
        self, method: str, path: str, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], float]:
        """Send a JSON request; return the JSON object answered and the client-measured latency
        (ms) of the attempt that succeeded. Raise :class:`RequestFailedError` otherwise."""
        for _attempt in range(MAX_RETRIES):
            started = time.perf_counter()
            try:
                response = self._client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise RequestFailedError(f"{method} {path}: {exc!r}") from exc
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if response.status_code in (429, 503):
                delay = _retry_after_seconds(response)
                _log(f"  {method} {path}: HTTP {response.status_code}, retrying in {delay:g} s")
                time.sleep(delay)
                continue
            if not response.is_success:
                raise RequestFailedError(f"{method} {path}: {_describe_failure(response)}")
            try:
                payload = response.json()
            except ValueError as exc:
                raise RequestFailedError(f"{method} {path}: response is not JSON") from exc
            if not isinstance(payload, dict):
                raise RequestFailedError(f"{method} {path}: response is not a JSON object")
            return payload, elapsed_ms
        raise RequestFailedError(f"{method} {path}: still throttled after {MAX_RETRIES} attempts")


def upload_documents(client: ApiClient, documents: Sequence[CranDoc]) -> dict[str, int]:
    """Upsert the documents in batches; return the summed ``summary`` counts."""
    totals = {"created": 0, "updated": 0, "no_op": 0}
    for start in range(0, len(documents), BATCH_SIZE):
        batch = documents[start : start + BATCH_SIZE]
        items: list[dict[str, Any]] = []
        for doc in batch:
            item: dict[str, Any] = {"external_id": external_id_for(doc.doc_id), "content": doc.text}
            if doc.title:
                item["title"] = doc.title
            items.append(item)
        payload, _ = client.request_json("PUT", "/api/knowledge/docs", {"items": items})
        results = payload.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise RequestFailedError("PUT /api/knowledge/docs: unexpected 'results' in response")
        for result in results:
            status = result.get("status") if isinstance(result, dict) else None
            if isinstance(status, str):
                totals[status] = totals.get(status, 0) + 1
        done = start + len(batch)
        if done == len(documents) or (done // BATCH_SIZE) % 5 == 0:
            _log(f"  uploaded {done}/{len(documents)}")
    return totals


@dataclass
class QueryResult:
    number: int
    ndcg_at_10: float
    recall_at_50: float
    took_ms: float | None
    client_ms: float
    foreign_hits: int


@dataclass
class ModeResult:
    mode: str
    queries: list[QueryResult] = field(default_factory=list)

    @property
    def ndcg_at_10(self) -> float:
        return mean([q.ndcg_at_10 for q in self.queries])

    @property
    def recall_at_50(self) -> float:
        return mean([q.recall_at_50 for q in self.queries])

    def client_ms(self, pct: float) -> float:
        return percentile([q.client_ms for q in self.queries], pct)

    def took_ms(self, pct: float) -> float:
        return percentile([q.took_ms for q in self.queries if q.took_ms is not None], pct)

    def summary(self) -> dict[str, Any]:
        reference = REFERENCES.get(self.mode)
        target = TARGETS.get(self.mode)
        return {
            "mode": self.mode,
            "queries": len(self.queries),
            "ndcg_at_10": self.ndcg_at_10,
            "recall_at_50": self.recall_at_50,
            "client_ms_p50": self.client_ms(50),
            "client_ms_p95": self.client_ms(95),
            "took_ms_p50": self.took_ms(50),
            "took_ms_p95": self.took_ms(95),
            "reference_ndcg_at_10": reference[1] if reference else None,
            "target_ndcg_at_10": target,
            "target_met": None if target is None else self.ndcg_at_10 >= target,
        }


def run_mode(
    client: ApiClient,
    mode: str,
    queries: Sequence[CranQuery],
    qrels: Mapping[int, Mapping[int, int]],
) -> ModeResult:
    """Run every query in one mode and score it."""
    result = ModeResult(mode=mode)
    started = time.perf_counter()
    for query in queries:
        body = {"query": query.text, "k": SEARCH_K, "mode": mode}
        payload, client_ms = client.request_json("POST", "/api/knowledge/search", body)
        hits = payload.get("results")
        if not isinstance(hits, list):
            raise RequestFailedError("POST /api/knowledge/search: no 'results' list in response")
        ranked: list[int | None] = []
        for hit in hits:
            external_id = hit.get("external_id") if isinstance(hit, dict) else None
            ranked.append(
                doc_id_from_external_id(external_id) if isinstance(external_id, str) else None
            )
        took = payload.get("took_ms")
        gains = qrels.get(query.number, {})
        result.queries.append(
            QueryResult(
                number=query.number,
                ndcg_at_10=ndcg_at_k(ranked, gains, NDCG_K),
                recall_at_50=recall_at_k(ranked, gains, RECALL_K),
                took_ms=float(took) if isinstance(took, int | float) else None,
                client_ms=client_ms,
                foreign_hits=sum(1 for doc in ranked if doc is None),
            )
        )
    _log(f"  {mode}: {len(queries)} queries in {time.perf_counter() - started:.1f} s")
    return result


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def format_table(results: Sequence[ModeResult]) -> str:
    header = (
        "mode",
        "nDCG@10",
        "recall@50",
        "p50 ms",
        "p95 ms",
        "reference nDCG@10",
        "target",
        "",
    )
    rows: list[tuple[str, ...]] = [header]
    for res in results:
        reference = REFERENCES.get(res.mode)
        target = TARGETS.get(res.mode)
        verdict = "" if target is None else ("ok" if res.ndcg_at_10 >= target else "MISSED")
        rows.append(
            (
                res.mode,
                _fmt(res.ndcg_at_10, 4),
                _fmt(res.recall_at_50, 4),
                _fmt(res.client_ms(50), 1),
                _fmt(res.client_ms(95), 1),
                f"{reference[1]:.4f} ({reference[0]})" if reference else "-",
                f">= {target:.2f}" if target is not None else "-",
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i in (0, 5, 7) else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def report(
    results: Sequence[ModeResult], collection: Collection, n_queries: int, n_docs: int
) -> str:
    lines = [
        "",
        f"Cranfield: {n_docs} documents, {n_queries} of {len(collection.queries)} queries, "
        f"k = {SEARCH_K}",
        "",
        format_table(results),
        "",
        "Latency is measured by this client (request to response, retries excluded); the "
        "server's took_ms is in the --json output.",
        f"Note: recall is @{RECALL_K} because the contract caps k at {SEARCH_K}; the README's "
        f"reference recall is @100 (exact dense: {REFERENCE_DENSE_RECALL_AT_100}), so it is not "
        "directly comparable.",
        "References are the README's figures for all-MiniLM-L6-v2, one vector per document "
        "(title + text), over all 225 queries.",
    ]
    if n_queries < len(collection.queries):
        lines.append(
            f"Note: only the first {n_queries} queries were run (--limit-queries); the figures "
            "are not comparable with the references and targets."
        )
    foreign = sum(q.foreign_hits for res in results for q in res.queries)
    if foreign:
        lines.append(
            f"Note: {foreign} hits were not Cranfield documents (other documents of this user); "
            "they were scored as non-relevant."
        )
    return "\n".join(lines)


def results_json(
    results: Sequence[ModeResult], base_url: str, n_queries: int, n_docs: int
) -> dict[str, Any]:
    return {
        "url": base_url,
        "documents": n_docs,
        "queries": n_queries,
        "k": SEARCH_K,
        "metrics": {"ndcg": f"ndcg@{NDCG_K}", "recall": f"recall@{RECALL_K}"},
        "modes": [res.summary() for res in results],
        "per_query": {
            res.mode: [
                {
                    "query": q.number,
                    "ndcg_at_10": q.ndcg_at_10,
                    "recall_at_50": q.recall_at_50,
                    "took_ms": q.took_ms,
                    "client_ms": q.client_ms,
                }
                for q in res.queries
            ]
            for res in results
        },
    }


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


# --------------------------------------------------------------------------- main


def parse_modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(
            f"modes must be a comma-separated subset of {','.join(MODES)}"
        )
    return list(dict.fromkeys(modes))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a PersonAIzer server's search on the Cranfield collection "
        "(nDCG@10, recall@50, latency). Without --url/--api-key it starts its own server.",
    )
    parser.add_argument("--url", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", help="API key for --url")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"Cranfield folder (default: {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=list(MODES),
        help="comma-separated search modes (default: semantic,keyword,hybrid)",
    )
    parser.add_argument(
        "--limit-queries", type=int, metavar="N", help="run only the first N queries"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="also print the results as JSON on stdout (the table then goes to stderr)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target (semantic, hybrid) is missed"
    )
    parser.add_argument(
        "--encoder",
        choices=("torch", "onnx"),
        help="the own server's embedding runtime (PERSONAIZER_ENCODER; default: the "
        "environment's, else the server's default, onnx)",
    )
    parser.add_argument(
        "--database-url",
        help="run the own server on this empty database (e.g. postgresql://...) instead of a "
        "temporary SQLite file",
    )
    return parser


def evaluate(
    base_url: str, api_key: str, collection: Collection, modes: Sequence[str], limit: int | None
) -> tuple[list[ModeResult], int, int]:
    documents = uploadable_documents(collection.documents)
    queries = collection.queries[:limit] if limit is not None else collection.queries
    client = ApiClient(base_url, api_key)
    try:
        _log(f"uploading {len(documents)} documents to {base_url} in batches of {BATCH_SIZE}")
        totals = upload_documents(client, documents)
        _log("  " + ", ".join(f"{k}: {v}" for k, v in totals.items()))
        results = []
        for mode in modes:
            _log(f"searching {len(queries)} queries, mode {mode}")
            results.append(run_mode(client, mode, queries, collection.qrels))
    finally:
        client.close()
    return results, len(queries), len(documents)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.url is None) != (args.api_key is None):
        parser.error("--url and --api-key go together (give neither to start an own server)")
    if args.url is not None and args.encoder is not None:
        parser.error("--encoder chooses the own server's encoder; it cannot change --url's")
    if args.limit_queries is not None and args.limit_queries < 1:
        parser.error("--limit-queries must be at least 1")
    data_dir: Path = args.data
    if not (data_dir / "cran.all.1400").is_file():
        parser.error(f"no cran.all.1400 in {data_dir}")
    collection = load_collection(data_dir)
    modes: list[str] = args.modes

    try:
        if args.url is not None:
            base_url: str = args.url
            results, n_queries, n_docs = evaluate(
                base_url, args.api_key, collection, modes, args.limit_queries
            )
        else:
            with own_server(args.database_url, encoder=args.encoder) as server:
                base_url = server.base_url
                results, n_queries, n_docs = evaluate(
                    base_url, server.api_key, collection, modes, args.limit_queries
                )
    except (RequestFailedError, SetupError) as exc:
        _log(f"error: {exc}")
        return 2

    text = report(results, collection, n_queries, n_docs)
    if args.json:
        _log(text)
        print(
            json.dumps(_nan_to_none(results_json(results, base_url, n_queries, n_docs)), indent=2)
        )
    else:
        print(text)

    missed = [
        res.mode
        for res in results
        if res.mode in TARGETS and not res.ndcg_at_10 >= TARGETS[res.mode]
    ]
    if args.check and missed:
        _log(f"target missed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
