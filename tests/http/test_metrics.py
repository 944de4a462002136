"""`/metrics` (Prometheus text) and JSON log lines: what an operator watches."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from starlette.applications import Starlette

from app.http.logs import JsonFormatter, RequestIdFilter
from app.http.metrics import STORED_COUNTS_TTL_S
from tests.conftest import AppFactory, client_for

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Clock:
    """Monotonic seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stopped_clock(app: Starlette) -> Clock:
    clock = Clock()
    app.state.metrics.clock = clock
    return clock


async def test_requests_embedding_and_storage_are_counted(
    app: Starlette, api: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    clock = stopped_clock(app)
    before = await scrape(anon)
    assert value(before, "personaizer_stored_documents") == 0
    assert value(before, "personaizer_embedding_model_ready") == 1

    items = [
        {"external_id": f"doc-{i}", "content": f"Paragraph {i} about lamps. " * 60}
        for i in range(3)
    ]
    r = await api.put("/api/knowledge/docs", json={"items": items})
    assert r.status_code == 200
    await api.post("/api/knowledge/search", json={"query": "lamps"})
    await api.get("/api/knowledge/docs/by-external-id/missing")
    chunks = 0
    for i in range(3):
        doc = await api.get(f"/api/knowledge/docs/by-external-id/doc-{i}")
        chunks += doc.json()["chunk_count"]

    clock.now += STORED_COUNTS_TTL_S  # the stored counts are read again
    after = await scrape(anon)
    assert (
        value(
            after,
            "personaizer_http_requests_total",
            operation="upsertKnowledgeDocs",
            method="PUT",
            status="200",
        )
        == 1
    )
    assert (
        value(
            after,
            "personaizer_http_requests_total",
            operation="searchKnowledge",
            method="POST",
            status="200",
        )
        == 1
    )
    assert (
        value(
            after,
            "personaizer_http_requests_total",
            operation="getKnowledgeDoc",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        value(after, "personaizer_http_request_duration_seconds_count", operation="searchKnowledge")
        == 1
    )
    assert value(after, "personaizer_stored_documents") == 3
    assert value(after, "personaizer_stored_chunks") == chunks > 3
    # Every chunk and the query were embedded, in at least one batch.
    embedded = value(after, "personaizer_embedded_texts_total") - value(
        before, "personaizer_embedded_texts_total"
    )
    assert embedded == chunks + 1
    assert (
        value(after, "personaizer_embedding_batch_size_sum")
        - value(before, "personaizer_embedding_batch_size_sum")
        == chunks + 1
    )
    assert value(after, "personaizer_embedding_batch_size_count") >= 2
    assert value(after, "personaizer_embedding_queue_depth") == 0


async def test_scrapes_count_what_is_stored_at_most_once_per_window(
    app: Starlette, api: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    clock = stopped_clock(app)
    counts: list[str] = []

    def count(
        conn: object, cursor: object, statement: str, *args: object, **kwargs: object
    ) -> None:
        if "count(" in statement.lower():
            counts.append(statement)

    engine = app.state.runtime.db.reader.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert value(await scrape(anon), "personaizer_stored_documents") == 0
        assert len(counts) == 3  # documents, chunks, personas
        r = await api.put(
            "/api/knowledge/docs", json={"items": [{"external_id": "a", "content": "x"}]}
        )
        assert r.status_code == 200
        # Within the window: no count runs, and the counts are the last ones read.
        clock.now += STORED_COUNTS_TTL_S - 0.1
        before = len(counts)
        for _ in range(5):
            assert value(await scrape(anon), "personaizer_stored_documents") == 0
        assert len(counts) == before
        # Past it, the next scrape reads them again, once.
        clock.now += 0.1
        assert value(await scrape(anon), "personaizer_stored_documents") == 1
        assert value(await scrape(anon), "personaizer_stored_documents") == 1
        assert len(counts) == before + 3
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def test_unmatched_routes_and_other_doors_have_their_own_operation(
    api: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    await anon.get("/nowhere")
    await api.post("/graphql", json={"query": "{ viewer { email } }"})
    samples = await scrape(anon)
    assert (
        value(
            samples,
            "personaizer_http_requests_total",
            operation="unmatched",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        value(
            samples,
            "personaizer_http_requests_total",
            operation="graphql",
            method="POST",
            status="200",
        )
        == 1
    )
    # No label names a user, a key or a path with an id in it.
    labels = {v for (_, pairs) in samples for (_, v) in pairs}
    assert not any("@" in v or "pa_live_" in v or "/" in v for v in labels)


async def test_metrics_can_be_turned_off(make_app: AppFactory) -> None:
    app = await make_app(metrics=False)
    async with client_for(app) as client:
        r = await client.get("/metrics")
    assert r.status_code == 404 and r.json()["code"] == "request.not_found"


async def test_json_log_lines_carry_the_request_id(app: Starlette, api: httpx.AsyncClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("personaizer.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        r = await api.get("/api/personas", headers={"X-Request-Id": "trace-42"})
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert r.headers["x-request-id"] == "trace-42"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "trace-42"
    assert line["level"] == "INFO" and line["logger"] == "personaizer.access"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/personas", 200)
    assert line["message"].startswith("GET /api/personas 200")
    assert line["time"].endswith("+00:00")
