"""Prometheus metrics for operators: `GET /metrics` in the text exposition format.

One registry per app (tests start many apps in one process; the library's global registry would
refuse a second set of the same names). What is counted:

- HTTP requests by operation (the route's name: a REST operationId, `graphql`, `mcp`, `docs`,
  ...; `unmatched` for no route), method and status, and their latency per operation.
- The embedder: jobs waiting in its queue, the size of each batch it encodes, texts embedded, and
  whether the model is loaded.
- Whether rate limits are degraded: Redis configured but unreachable, so each process counts in
  its own memory (or refuses, under `PERSONAIZER_RATE_LIMIT_ON_REDIS_FAILURE=closed`).
- What is stored: documents, chunks and personas: three `count(*)`, each over a whole table,
  run by a scrape at most once per `STORED_COUNTS_TTL_S` per process. The endpoint is open to
  anyone on the network, so scraping it in a loop must not turn into a load on the database;
  a Prometheus scraping every 15 s still sees counts at most one scrape old.

No label names a user, a key or a document: the endpoint is unauthenticated, so it says how the
server is doing, never whose data it holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.services.runtime import Runtime
from app.services.stats import stored_counts

#: Seconds the stored counts are kept before a scrape reads them again: Prometheus's default
#: scrape interval, so one scraper pays for each count about once.
STORED_COUNTS_TTL_S = 15.0
#: Texts per `encode` call: 1 for a lone search, up to the embedder's max batch when busy.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Seconds; searches take milliseconds, a large upsert embeds for seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EmbedderCounts(Protocol):
    """The embedder's running totals."""

    @property
    def texts(self) -> int: ...


class EmbedderGauges(Protocol):
    """What the metrics read of `Runtime.embedder` (and the one hook they set on it): this
    door watches the embedder, it never drives it."""

    @property
    def queue_depth(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def stats(self) -> EmbedderCounts: ...

    #: Called with the size of each batch the model encodes.
    on_batch: Callable[[int], None] | None


class LimitGauges(Protocol):
    """What the metrics read of the rate limiter."""

    @property
    def degraded(self) -> bool: ...


class _LiveCollector(Collector):
    """Values read when scraped rather than kept up to date: the embedder's own counters and
    queue, the rate limiter's state, and the stored counts the last `Metrics.refresh` read."""

    def __init__(self, embedder: EmbedderGauges, limiter: LimitGauges | None) -> None:
        self.embedder = embedder
        self.limiter = limiter
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
        if self.limiter is not None:
            yield GaugeMetricFamily(
                "personaizer_rate_limit_degraded",
                "1 while the shared rate-limit storage (Redis) is unreachable: limits are "
                "counted per process in memory, or API requests refused (policy closed).",
                value=1 if self.limiter.degraded else 0,
            )
        for name, value in self.stored.items():
            yield GaugeMetricFamily(
                f"personaizer_stored_{name}", f"{name.capitalize()} stored, all users.", value=value
            )


class Metrics:
    """The registry of one app. `clock` (monotonic seconds) decides when the stored counts are
    read again; tests turn it."""

    def __init__(
        self,
        embedder: EmbedderGauges,
        *,
        limiter: LimitGauges | None = None,
        clock: Callable[[], float] = time.monotonic,
        stored_counts_ttl_s: float = STORED_COUNTS_TTL_S,
    ) -> None:
        self.clock = clock
        self.stored_counts_ttl_s = stored_counts_ttl_s
        self._counted_at: float | None = None
        # Scrapes that arrive together wait for one count instead of each running their own.
        self._counting = asyncio.Lock()
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
        self._live = _LiveCollector(embedder, limiter)
        self.registry.register(self._live)
        embedder.on_batch = self.batch_size.observe

    def observe_request(self, operation: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(operation, method, str(status)).inc()
        self.latency.labels(operation).observe(seconds)

    async def refresh(self, runtime: Runtime) -> None:
        """Read the stored counts for the next exposition, unless they were read less than
        `stored_counts_ttl_s` ago. A failed count is tried again by the next scrape."""
        async with self._counting:
            if (
                self._counted_at is not None
                and self.clock() - self._counted_at < self.stored_counts_ttl_s
            ):
                return
            self._live.stored = await stored_counts(runtime=runtime)
            self._counted_at = self.clock()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
