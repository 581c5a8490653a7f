"""The super-resolution replica's batching (adaptive wait, concurrent batches), on the real
replica class without Ray. Each replica object has its own ``serve.batch`` queue, bound to the
event loop of its first call: one ``asyncio.run`` per replica object."""

import asyncio
import threading

import numpy as np

from pixelfleet.deployments.superres import deployment as sr_deployment
from pixelfleet.deployments.superres.config import SuperResVariant
from pixelfleet.ray_private import allow_batching_outside_serve


def test_adaptive_wait_lone_request_goes_at_once_concurrent_ones_batch(monkeypatch):
    allow_batching_outside_serve()
    replica = sr_deployment.SuperResolution.func_or_class(
        variant="srresnet-x2", weights="builtin:srresnet-x2", tile_size=32, overlap=8, max_batch_size=2,
        batch_wait_timeout_s=30.0, adaptive_batch_wait=True, num_threads=1,
    )  # fmt: skip
    batched = replica._infer_tiles  # Ray's serve.batch wrapper of this replica
    wait = {"s": None}

    def set_wait(seconds: float) -> None:
        wait["s"] = seconds
        original(seconds)

    original = batched.set_batch_wait_timeout_s
    monkeypatch.setattr(batched, "set_batch_wait_timeout_s", set_wait)
    seen: list[tuple[int, float]] = []  # (tiles in the batch, the wait the replica set for it)
    monkeypatch.setattr(sr_deployment.telemetry, "record_batch", lambda variant, size: seen.append((size, wait["s"])))
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # one tile

    async def scenario():
        alone = await replica.upscale_pixels(image)
        lone = list(seen)
        seen.clear()
        pair = await asyncio.gather(replica.upscale_pixels(image), replica.upscale_pixels(image))
        return alone, lone, pair

    alone, lone, pair = asyncio.run(asyncio.wait_for(scenario(), 20))  # a 30 s wait would time out here
    assert lone == [(1, 0.0)]  # alone: no wait (the configured 30 s would have held it)
    assert seen == [(2, 30.0)]  # two in the replica: the wait applies and the batch fills
    assert alone.shape == (48, 48, 3) and all(np.array_equal(alone, other) for other in pair)


def test_adaptive_batch_wait_is_a_variant_option():
    assert SuperResVariant(weights="builtin:srresnet-x4").adaptive_batch_wait is False
    assert SuperResVariant(weights="builtin:srresnet-x4", adaptive_batch_wait=True, batch_wait_timeout_s=0.05).adaptive_batch_wait


def test_concurrent_batches_run_two_forward_passes_at_once():
    """``concurrent_batches: 2``: two batches are in the model at the same moment (each forward pass
    waits at a barrier for the other; one at a time would break the barrier), and each request
    gets its own image's output."""
    allow_batching_outside_serve()
    replica = sr_deployment.SuperResolution.func_or_class(
        variant="srresnet-x2", weights="builtin:srresnet-x2", tile_size=32, overlap=8, max_batch_size=1,
        batch_wait_timeout_s=0.0, concurrent_batches=2, num_threads=1,
    )  # fmt: skip
    both_in_model = threading.Barrier(2, timeout=10)
    forward = replica.upscaler.forward

    def forward_together(batch):
        both_in_model.wait()
        return forward(batch)

    replica.upscaler.forward = forward_together
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(2)]

    async def scenario():
        return await asyncio.gather(*(replica.upscale_pixels(image) for image in images))

    outputs = asyncio.run(asyncio.wait_for(scenario(), 30))
    replica.upscaler.forward = forward
    alone = [asyncio.run(replica_alone(image)) for image in images]
    assert all(np.array_equal(out, ref) for out, ref in zip(outputs, alone))
    assert not np.array_equal(outputs[0], outputs[1])


async def replica_alone(image):
    fresh = sr_deployment.SuperResolution.func_or_class(
        variant="srresnet-x2", weights="builtin:srresnet-x2", tile_size=32, overlap=8, max_batch_size=1,
        batch_wait_timeout_s=0.0, num_threads=1,
    )  # fmt: skip
    return await fresh.upscale_pixels(image)
