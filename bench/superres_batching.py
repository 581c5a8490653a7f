"""Tile batches of the super-resolution replica by batch wait policy, without Ray's proxy.

Builds the replica's class (``SuperResolution``, with its ``@serve.batch`` tile method) in this
process and sends it 128x128 crops of real photos as PNG (``upscale``: decode, one tile, encode
PNG 512x512, as a request takes in the replica) at 1, 2 and 8 concurrent requests. Every policy of
``--policies`` runs in the same run, interleaved per concurrency level, on the same replica (Ray
2.60's ``@serve.batch`` queue binds to the event loop of its first call, so one replica and one
loop; the policy is switched live with ``set_batch_wait_timeout_s``). A policy is a
``batch_wait_timeout_s`` (``0.01``: every batch waits up to 10 ms to fill) or ``adaptive:T``
(``adaptive_batch_wait``: wait up to T only while another request is in the replica), each run
``--rounds`` times interleaved with the others. Printed per policy and level: the batch-size
distribution (every call of the batched method), mean tiles per batch, requests per second and
p50, with ratios against the first policy at that level. The replica's Prometheus histogram of
the same sizes is ``ray_pixelfleet_batch_size`` (``GET /metrics``), and Ray's own
``ray_serve_batch_wait_time_ms`` has the wait.

    python bench/superres_batching.py --images ../shared/datasets/sr/val/bsd200 --policies 0,0.01,adaptive:0.05
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import statistics
import time
from pathlib import Path

from PIL import Image

from pixelfleet.deployments.spec import VariantAddress
from pixelfleet.deployments.superres import deployment as sr_deployment
from pixelfleet.ray_private import allow_batching_outside_serve


def crops(folder: Path, count: int, size: int) -> list[bytes]:
    """``count`` centre crops ``size`` x ``size`` of the PNG photos in ``folder`` (cycled), as PNG bytes."""
    images = []
    for path in sorted(folder.glob("*.png"))[:count]:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
        buffer = io.BytesIO()
        rgb.crop((left, top, left + size, top + size)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return [images[i % len(images)] for i in range(count)]


def set_policy(replica, policy: str) -> None:
    """Switch the replica's batch wait live: ``T`` seconds, or ``adaptive:T``."""
    adaptive, _, timeout = policy.rpartition(":")
    replica.batch_wait_timeout_s, replica.adaptive_batch_wait = float(timeout), adaptive == "adaptive"
    replica._infer_tiles.set_batch_wait_timeout_s(float(timeout))


async def run(replica, images: list[bytes], concurrency: int, route: list) -> tuple[float, list[float]]:
    """Seconds for all images at ``concurrency`` in flight, and each request's latency."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(image: bytes) -> None:
        async with gate:
            started = time.perf_counter()
            await replica.upscale(image, {}, route)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(image) for image in images))
    return time.perf_counter() - started, latencies


async def levels(replica, images: list[bytes], policies: list[str], concurrencies: list[int], rounds: int, sizes: collections.Counter) -> list:
    """Warm-up, then every concurrency level: ``rounds`` times each policy in turn (interleaved,
    so drift of a shared machine's load falls on all alike), in one event loop. Returns
    ``(concurrency, policy, batch sizes, seconds, latencies)`` each, summed over the rounds."""
    route = [VariantAddress("superres", replica.variant, "bench", f"superres-{replica.variant}")]
    for concurrency in (1, 8):
        await run(replica, images[: min(8, len(images))], concurrency, route)
    totals: dict[tuple[int, str], tuple[collections.Counter, float, list[float]]] = {}
    for concurrency in concurrencies:
        for _ in range(rounds):
            for policy in policies:
                set_policy(replica, policy)
                sizes.clear()
                seconds, latencies = await run(replica, images, concurrency, route)
                seen, spent, all_latencies = totals.setdefault((concurrency, policy), (collections.Counter(), 0.0, []))
                seen.update(sizes)
                all_latencies.extend(latencies)
                totals[concurrency, policy] = (seen, spent + seconds, all_latencies)
    return [(concurrency, policy, *totals[concurrency, policy]) for concurrency in concurrencies for policy in policies]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of PNG photos")
    parser.add_argument("--policies", default="0,0.01,adaptive:0.01", help="comma-separated: T or adaptive:T (local.yaml's first)")
    parser.add_argument("--concurrency", default="1,2,8", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=32, help="requests per policy, level and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all policies per level")
    parser.add_argument("--max-batch-size", type=int, default=2, help="tiles per forward pass (local.yaml: 2)")
    parser.add_argument("--num-threads", type=int, default=2, help="torch threads of the replica")
    parser.add_argument("--concurrent-batches", type=int, default=1, help="forward passes at once (concurrent_batches)")
    parser.add_argument("--size", type=int, default=128, help="side of the LR crops, pixels (512: 9 tiles of 192 each)")
    args = parser.parse_args(argv)

    allow_batching_outside_serve()
    sizes: collections.Counter = collections.Counter()
    record = sr_deployment.telemetry.record_batch

    def counting(variant: str, size: int) -> None:
        sizes[size] += 1
        record(variant, size)

    sr_deployment.telemetry.record_batch = counting
    images = crops(args.images, args.requests, args.size)
    policies = args.policies.split(",")
    replica = sr_deployment.SuperResolution.func_or_class(
        variant="srresnet-x4", weights="builtin:srresnet-x4", tile_size=192, overlap=32,
        max_batch_size=args.max_batch_size, num_threads=args.num_threads, concurrent_batches=args.concurrent_batches,
        precision="auto",
    )  # fmt: skip
    rows = asyncio.run(levels(replica, images, policies, [int(c) for c in args.concurrency.split(",")], args.rounds, sizes))
    print("| policy | concurrent | batches by size | tiles per batch | req/s | vs first policy | p50 ms | vs first policy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    first: dict[int, tuple[float, float]] = {}
    for concurrency, policy, sizes_seen, seconds, latencies in rows:
        rate, p50 = len(latencies) / seconds, statistics.median(latencies) * 1000
        base = first.setdefault(concurrency, (rate, p50))
        histogram = ", ".join(f"{size}: {count}" for size, count in sorted(sizes_seen.items()))
        mean = sum(size * count for size, count in sizes_seen.items()) / max(1, sum(sizes_seen.values()))
        print(f"| {policy} | {concurrency} | {histogram} | {mean:.2f} | {rate:.2f} | {rate / base[0]:.2f} | {p50:.0f} | {p50 / base[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
