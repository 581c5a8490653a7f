"""Tile batches of the super-resolution replica by ``batch_wait_timeout_s``, without Ray's proxy.

Builds the replica's class (``SuperResolution``, with its ``@serve.batch`` tile method) in this
process, sends 128x128 crops of real photos (one tile each) at 1 and at 8 concurrent requests,
and prints, for one batch wait timeout: the batch-size distribution (every call of the batched
method), requests per second and the median latency at each concurrency, with ratios against 1
concurrent request. A timeout of 0 takes what is queued when the model is free: batches fill
under load (requests queue while a batch runs) and a lone request never waits.

One timeout per run: Ray 2.60's ``@serve.batch`` queue binds to the event loop of its first call,
and a second replica object in a new loop hung (seen with 0 after 0.01 in one process).

    python bench/superres_batching.py --images ../shared/datasets/sr/val/bsd200 --timeout 0
    python bench/superres_batching.py --images ../shared/datasets/sr/val/bsd200 --timeout 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pixelfleet.deployments.superres import deployment as sr_deployment
from pixelfleet.ray_private import allow_batching_outside_serve


def crops(folder: Path, count: int, size: int) -> list[np.ndarray]:
    """``count`` centre crops ``(size, size, 3)`` uint8 of the images in ``folder``, cycled."""
    images = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
        images.append(np.ascontiguousarray(rgb[top : top + size, left : left + size]))
    return [images[i % len(images)] for i in range(count)]


async def run(replica, images: list[np.ndarray], concurrency: int) -> tuple[float, list[float]]:
    """Seconds for all images at ``concurrency`` in flight, and each request's latency."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(image: np.ndarray) -> None:
        async with gate:
            started = time.perf_counter()
            await replica.upscale_pixels(image)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(image) for image in images))
    return time.perf_counter() - started, latencies


async def levels(replica, images: list[np.ndarray], sizes: collections.Counter) -> list:
    """Warm-up, then 1 and 8 concurrent, in one event loop (``@serve.batch`` binds its queue to
    the loop of its first call): ``(concurrency, batch sizes, seconds, latencies)`` each."""
    await run(replica, images[:2], 1)
    rows = []
    for concurrency in (1, 8):
        sizes.clear()
        seconds, latencies = await run(replica, images, concurrency)
        rows.append((concurrency, collections.Counter(sizes), seconds, latencies))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of PNG photos")
    parser.add_argument("--timeout", type=float, default=0.01, help="batch_wait_timeout_s (local.yaml: 0.01)")
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=2, help="tiles per forward pass (local.yaml: 2)")
    args = parser.parse_args(argv)

    allow_batching_outside_serve()
    sizes: collections.Counter = collections.Counter()
    record = sr_deployment.telemetry.record_batch

    def counting(variant: str, size: int) -> None:
        sizes[size] += 1
        record(variant, size)

    sr_deployment.telemetry.record_batch = counting
    images = crops(args.images, args.requests, 128)
    baseline: dict[int, tuple[float, float]] = {}  # the 1-concurrent row
    print("| batch_wait_timeout_s | concurrent | batches by size | req/s | vs 1 concurrent | p50 ms | vs 1 concurrent |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for timeout in [args.timeout]:
        replica = sr_deployment.SuperResolution.func_or_class(
            variant="srresnet-x4", weights="builtin:srresnet-x4", tile_size=192, overlap=32,
            max_batch_size=args.max_batch_size, batch_wait_timeout_s=timeout, num_threads=2, precision="auto",
        )
        for concurrency, sizes_seen, seconds, latencies in asyncio.run(levels(replica, images, sizes)):
            rate, p50 = len(images) / seconds, statistics.median(latencies) * 1000
            base = baseline.setdefault(0, (rate, p50))
            histogram = ", ".join(f"{size}: {count}" for size, count in sorted(sizes_seen.items()))
            print(f"| {timeout:g} | {concurrency} | {histogram} | {rate:.2f} | {rate / base[0]:.2f} | {p50:.0f} | {p50 / base[1]:.2f} |", flush=True)

if __name__ == "__main__":
    main()
