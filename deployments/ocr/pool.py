"""A pool of OCR engines in one replica: one engine per thread, so concurrent requests use every core.

A Tesseract engine (a ``PyTessBaseAPI``) reads one image at a time, but tesserocr releases the
GIL in ``Recognize`` (most of a line's time), so N engines on N threads of one process read N
images at once without N processes' memory. Each thread of the pool's executor takes an idle
engine from a queue, runs the call and puts it back; with as many threads as engines an idle
engine is always there when a thread starts a call.

Measured on the 2-core VM (``bench/ocr_concurrency.py``, BENCHMARKS.md): lines per second at 8
concurrent with 1 and 2 engines, in-process and through the replica class.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

E = TypeVar("E")
R = TypeVar("R")


class EnginePool(Generic[E]):
    """``size`` engines built by ``build()``, each used by one thread at a time.

    Args:
        build: makes one engine (called ``size`` times, here, so a failure fails the replica's
            start rather than a request).
        size: engines and threads, >= 1.
        name: thread name prefix (shows in stack dumps and ``py-spy``).

    Raises:
        ValueError: ``size`` < 1. Whatever ``build`` raises.
    """

    def __init__(self, build: Callable[[], E], size: int, name: str = "ocr-engine") -> None:
        if size < 1:
            raise ValueError(f"an engine pool needs >= 1 engine, got {size}")
        self.size = size
        self.engines: list[E] = [build() for _ in range(size)]
        self._idle: queue.SimpleQueue[E] = queue.SimpleQueue()
        for engine in self.engines:
            self._idle.put(engine)
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    def call(self, fn: Callable[[E], R]) -> R:
        """``fn(engine)`` with an idle engine, in the calling thread (blocks until one is idle)."""
        engine = self._idle.get()
        try:
            return fn(engine)
        finally:
            self._idle.put(engine)

    async def run(self, fn: Callable[[E], R]) -> R:
        """``fn(engine)`` on one of the pool's threads, in the caller's context (its logs and
        trace spans), awaited; at most ``size`` run at once, the rest wait in the executor's queue."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, self.call, fn)

    def shutdown(self) -> None:
        """Stop the threads once the calls queued so far have run."""
        self._executor.shutdown(wait=True)
