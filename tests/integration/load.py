"""A bounded stream of requests in background threads, for "under load, no request fails" tests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    """What the stream saw: failed responses (status and body) and the variants that answered."""

    failures: list[str] = field(default_factory=list)
    served: Counter = field(default_factory=Counter)


@contextmanager
def background_load(base_url: str, send: Callable[[httpx.Client, int], httpx.Response], threads: int = 3, max_requests: int = 20_000) -> Iterator[LoadResult]:
    """Send ``send(client, i)`` from ``threads`` threads until the block ends (at most
    ``max_requests`` each); every non-200 answer is a failure, every 200 counts its
    ``X-Pixelfleet-Variant``."""
    result, stop = LoadResult(), threading.Event()

    def run() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            for i in range(max_requests):
                if stop.is_set():
                    return
                response = send(client, i)
                if response.status_code != 200:
                    result.failures.append(f"{response.status_code} {response.text[:300]}")
                else:
                    result.served[response.headers["x-pixelfleet-variant"]] += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield result
    finally:
        stop.set()
        for worker in workers:
            worker.join()
