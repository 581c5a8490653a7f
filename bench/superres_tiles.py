"""Benchmark: super-resolution throughput by tile size and batch size, on the shipped model.

Runs the serving path without Ray (split into tiles -> batched forward passes -> stitch) on
one image, and prints output megapixels per second for each setting with its ratio to the
baseline (the first setting), all measured in the same run. Usage:

    python bench/superres_tiles.py [--model DIR] [--size 512] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pixelfleet.models.srnet import load_model, to_uint8
from pixelfleet.deployments.superres.tiling import split_tiles, stitch_tiles
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS

SETTINGS = [(128, 32, 1), (128, 32, 8), (64, 16, 1), (64, 16, 2), (64, 16, 4), (64, 16, 8), (96, 24, 4), (256, 32, 2)]  # tile, overlap, batch


def tiled_upscale(model: torch.nn.Module, image: np.ndarray, tile: int, overlap: int, batch: int, scale: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H*scale, W*scale, 3)`` uint8 through tiles, ``batch`` tiles a pass."""
    tiles, plan = split_tiles(image, tile, overlap)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(tiles), batch):
            chunk = torch.from_numpy(tiles[start : start + batch]).float() / 255.0
            outputs.append(to_uint8(model(chunk)).transpose(0, 3, 1, 2))
    return stitch_tiles(np.concatenate(outputs), plan, scale)


def main() -> None:
    """Run every setting and print its throughput and ratio to the first."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUILTIN_WEIGHTS / "srresnet-x4")
    parser.add_argument("--size", type=int, default=512, help="LR image side, pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_model(args.model)
    image = np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)
    megapixels = (args.size * card.scale) ** 2 / 1e6
    print(f"model {card.name} x{card.scale}, LR {args.size}x{args.size}, torch threads {args.threads}, best of {args.repeats}")
    baseline = None
    for tile, overlap, batch in SETTINGS:
        tiled_upscale(model, image[:tile, :tile], tile, overlap, batch, card.scale)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            tiled_upscale(model, image, tile, overlap, batch, card.scale)
            best = min(best, time.perf_counter() - started)
        throughput = megapixels / best
        baseline = baseline or throughput
        print(f"tile {tile:4d} overlap {overlap:3d} batch {batch:2d}: {best:6.2f} s, {throughput:6.2f} MP/s, x{throughput / baseline:.2f} vs baseline")


if __name__ == "__main__":
    main()
