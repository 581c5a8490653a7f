"""Benchmark: peak memory of a super-resolution replica upscaling one large image (4000x3000 x4).

Runs the replica's code without Ray: the same model runner (:class:`Upscaler`), tiling
(``upscale_tiled``) and in-flight window (4 x ``max_batch_size`` tiles) as a replica; each tile
is one forward pass here, where ``@serve.batch`` would group up to ``--batch`` of the tiles in
flight. Reads the process's peak resident set size (``getrusage``) after the model is loaded
and warmed up, then after the upscale. The difference is what the request cost; the output canvas alone is
``16000 x 12000 x 3`` bytes = 549 MiB. Usage:

    python bench/superres_memory.py [--model DIR] [--width 4000] [--height 3000] [--tile 192]
                                    [--overlap 32] [--batch 2] [--precision float32]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from pathlib import Path

import numpy as np

from pixelfleet.deployments.superres.upscaler import Upscaler, upscale_tiled
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS

MIB = 1024 * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    """Load, warm up, upscale once, and print peak memory before and after."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUILTIN_WEIGHTS / "srresnet-x4")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    upscaler = Upscaler(args.model, precision=args.precision, num_threads=args.threads)
    upscaler.forward(np.zeros((1, 3, args.tile, args.tile), dtype=np.float32))  # warm-up, as a replica does

    async def infer_tile(tile: np.ndarray) -> np.ndarray:
        return upscaler.forward(tile[None].astype(np.float32) / 255.0)[0].transpose(2, 0, 1)

    async def run() -> tuple[np.ndarray, int, float]:
        loaded = peak_rss_bytes()
        started = time.perf_counter()
        output = await upscale_tiled(image, upscaler.scale, args.tile, args.overlap, infer_tile, window=4 * args.batch)
        return output, loaded, time.perf_counter() - started

    output, loaded, seconds = asyncio.run(run())
    peak = peak_rss_bytes()
    print(f"{upscaler.card.name}, {upscaler.precision}, tiles {args.tile}/{args.overlap}, window {4 * args.batch} tiles")
    print(f"input {args.width}x{args.height} -> output {output.shape[1]}x{output.shape[0]} ({output.nbytes / MIB:.0f} MiB) in {seconds:.1f} s")
    print(f"peak RSS after load + warm-up {loaded / MIB:.0f} MiB (input image included), after the upscale {peak / MIB:.0f} MiB: +{(peak - loaded) / MIB:.0f} MiB for the request")


if __name__ == "__main__":
    main()
