"""Benchmark: one 512x512 -> 2048x2048 x4 upscale through the serving path, by tile size and precision.

Uses :class:`deployments.superres.Upscaler` (the replica's model runner) and the deployment's
tiling (``upscale_tiled``), one tile per forward pass as a lone request gets, without Ray.
Prints seconds per upscale (best of ``--repeats``) and the speed-up over the first setting,
all in the same run. Usage:

    python bench/superres_latency.py [--model DIR] [--size 512] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from deployments.superres import Upscaler
from serve.config import BUILTIN_WEIGHTS

SETTINGS = [(64, 16, "float32"), (128, 32, "float32"), (192, 32, "float32"), (256, 32, "float32"), (128, 32, "bfloat16"), (192, 32, "bfloat16")]


def main() -> None:
    """Time every (tile, overlap, precision) setting and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUILTIN_WEIGHTS / "srresnet-x4")
    parser.add_argument("--size", type=int, default=512, help="LR image side, pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)
    baseline = None
    for tile, overlap, precision in SETTINGS:
        upscaler = Upscaler(args.model, precision=precision, num_threads=args.threads)
        upscaler.upscale(image[:tile, :tile], tile, overlap)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            upscaler.upscale(image, tile, overlap)
            best = min(best, time.perf_counter() - started)
        baseline = baseline or best
        side = args.size * upscaler.scale
        print(f"{upscaler.card.name} {args.size}->{side} tile {tile:3d} overlap {overlap:2d} {precision:8s}: {best:5.2f} s, x{baseline / best:.2f} vs baseline", flush=True)


if __name__ == "__main__":
    main()
