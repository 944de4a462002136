"""CPU work kept off the event loop: large bodies parsed, large batches chunked."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

T = TypeVar("T")

#: Bodies up to this size are parsed on the event loop (well under a millisecond); larger ones in
#: a worker thread.
INLINE_BYTES = 64 * 1024

_heavy: CapacityLimiter | None = None

# Intakes running with the collector paused, and whether it ran before the first of them.
_gc_lock = threading.Lock()

_gc_pauses = 0

_gc_was_enabled = True


async def off_loop(size: int, work: Callable[[], T]) -> T:
    """`work()`, inline when its input is `size` <= INLINE_BYTES, else in a worker thread with the
    cyclic garbage collector paused. At most two heavy intakes run at once (this is CPU work; more
    threads would only queue for it)."""
    global _heavy
    if size <= INLINE_BYTES:
        return work()
    if _heavy is None:
        _heavy = CapacityLimiter(2)
    return await anyio.to_thread.run_sync(_without_gc, work, limiter=_heavy)


def _without_gc(work: Callable[[], T]) -> T:
    """`work()` with the cyclic collector paused. Parsing 10 MB makes up to a million objects,
    which triggers full collections, and a full collection walks the whole heap (half a million
    objects once the model is loaded: 0.3-0.8 s measured) holding the interpreter, event loop
    included. What parsing makes holds no cycles (JSON cannot express one) and is freed by
    reference counting when the work is done, so there is nothing for the collector to find."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        return work()
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()
