"""Prometheus metrics for operators: `GET /metrics` in the text exposition format.

One registry per app (tests start many apps in one process; the library's global registry would
refuse a second set of the same names). What is counted:

- HTTP requests by operation (the route's name: a REST operationId, `graphql`, `mcp`, `docs`,
  ...; `unmatched` for no route), method and status, and their latency per operation.
- The embedder: jobs waiting in its queue, the size of each batch it encodes, texts embedded, and
  whether the model is loaded.
- What is stored: documents, chunks and personas, counted when scraped (three `count(*)` on
  indexed tables; a scrape every 15 s costs nothing next to the searches).

No label names a user, a key or a document: the endpoint is unauthenticated, so it says how the
server is doing, never whose data it holds.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import select

from app.embedding import Embedder
from app.models import Chunk, KnowledgeDoc, Persona
from app.services.core import Core

#: Texts per `encode` call: 1 for a lone search, up to the embedder's max batch when busy.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Seconds; searches take milliseconds, a large upsert embeds for seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _LiveCollector(Collector):
    """Values read when scraped rather than kept up to date: the embedder's own counters and
    queue, and the stored counts the last `Metrics.refresh` read."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.stored: dict[str, int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        embedder = self.embedder
        yield GaugeMetricFamily(
            "personaizer_embedding_queue_depth",
            "Embedding jobs (one per request) waiting for the model.",
            value=embedder.queue_depth,
        )
        yield GaugeMetricFamily(
            "personaizer_embedding_model_ready",
            "1 once the embedding model is loaded.",
            value=1 if embedder.ready else 0,
        )
        yield CounterMetricFamily(
            "personaizer_embedded_texts",
            "Texts (chunks and queries) embedded since the process started.",
            value=embedder.stats.texts,
        )
        for name, value in self.stored.items():
            yield GaugeMetricFamily(
                f"personaizer_stored_{name}", f"{name.capitalize()} stored, all users.", value=value
            )


class Metrics:
    def __init__(self, embedder: Embedder) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "personaizer_http_requests",
            "HTTP requests answered, by operation, method and status.",
            ["operation", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "personaizer_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "personaizer_embedding_batch_size",
            "Texts per batch the embedding model encoded.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._live = _LiveCollector(embedder)
        self.registry.register(self._live)
        embedder.on_batch = self.batch_size.observe

    def observe_request(self, operation: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(operation, method, str(status)).inc()
        self.latency.labels(operation).observe(seconds)

    async def refresh(self, core: Core) -> None:
        """Read the stored counts for the next exposition."""
        async with core.db.read() as session:
            for name, table in (
                ("documents", KnowledgeDoc),
                ("chunks", Chunk),
                ("personas", Persona),
            ):
                count = (
                    await session.execute(select(func.count()).select_from(table))
                ).scalar_one()
                self._live.stored[name] = int(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
