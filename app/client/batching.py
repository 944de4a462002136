"""Splitting documents into upsert batches that the server answers in seconds, not minutes.

A batch is cut by count (the plan's `batch_items`) and by size (`max_chars` characters): the
server chunks and embeds a batch inside one request, and its time grows with the characters, not
the count (100 long documents held 6,813 chunks and took 465 s in one report). A document larger
than the budget goes alone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from app.client.models import BatchResult, DocInput, UpsertResult, UpsertSummary

#: About 150-200 chunks: some seconds of embedding on a small CPU.
DEFAULT_BATCH_CHARS = 100_000


def plan_batches(
    items: Iterable[DocInput], *, max_items: int, max_chars: int
) -> Iterator[list[DocInput]]:
    """Consecutive batches of `items`, in order, each within both limits (one oversized item
    makes a batch of its own)."""
    if max_items < 1 or max_chars < 1:
        raise ValueError("max_items and max_chars must be at least 1")
    batch: list[DocInput] = []
    chars = 0
    for item in items:
        size = item.size
        if batch and (len(batch) >= max_items or chars + size > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(item)
        chars += size
    if batch:
        yield batch


@dataclass(frozen=True, slots=True)
class BatchDone:
    """Told to `on_batch` after each batch is committed."""

    index: int
    items: list[DocInput]
    result: BatchResult
    seconds: float


def merge(results: Iterable[BatchResult]) -> BatchResult:
    merged: list[UpsertResult] = []
    created = updated = no_op = 0
    for result in results:
        merged.extend(result.results)
        created += result.summary.created
        updated += result.summary.updated
        no_op += result.summary.no_op
    return BatchResult(
        results=merged, summary=UpsertSummary(created=created, updated=updated, no_op=no_op)
    )
