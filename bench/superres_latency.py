"""Benchmark: one 512x512 -> 2048x2048 x4 upscale through the serving path, by tile size and precision.

Uses :class:`deployments.superres.Upscaler` (the replica's model runner) and the deployment's
tiling (``upscale_tiled``), one tile per forward pass as a lone request gets, without Ray.
Prints seconds per upscale (best of ``--repeats``), the speed-up over the first setting (all in
the same run), and how far each output is from whole-image fp32 inference (largest difference
in 8-bit levels, and PSNR): tile seams would show there. The input is a real photo when
``--image`` is given (cropped to the size), else noise. Usage:

    python bench/superres_latency.py [--model DIR] [--image FILE] [--size 512] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from deployments.runtime import cpu_has_native_bf16
from deployments.srnet import load_model, upscale_whole
from deployments.superres import Upscaler
from serve.config import BUILTIN_WEIGHTS

SETTINGS = [(64, 16, "float32"), (128, 32, "float32"), (192, 32, "float32"), (256, 32, "float32"), (128, 32, "bfloat16"), (192, 32, "bfloat16")]


def main() -> None:
    """Time every (tile, overlap, precision) setting and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUILTIN_WEIGHTS / "srresnet-x4")
    parser.add_argument("--image", type=Path, default=None, help="an image to crop the LR input from (default: noise)")
    parser.add_argument("--size", type=int, default=512, help="LR image side, pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.image is not None:
        with Image.open(args.image) as photo:
            image = np.ascontiguousarray(np.asarray(photo.convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC)))
    else:
        image = np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)
    torch.set_num_threads(args.threads)
    whole = upscale_whole(load_model(args.model)[0], image).astype(int)
    baseline = None
    settings = SETTINGS if cpu_has_native_bf16() else [row for row in SETTINGS if row[2] != "bfloat16"]
    if len(settings) < len(SETTINGS):
        print("no native bf16 on this CPU: bfloat16 rows skipped (emulated, many times slower)")
    for tile, overlap, precision in settings:
        upscaler = Upscaler(args.model, precision=precision, num_threads=args.threads)
        upscaler.upscale(image[:tile, :tile], tile, overlap)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            upscaler.upscale(image, tile, overlap)
            best = min(best, time.perf_counter() - started)
        baseline = baseline or best
        output = upscaler.upscale(image, tile, overlap)
        largest = np.abs(output.astype(int) - whole).max()
        psnr = peak_signal_noise_ratio(whole.astype(np.uint8), output, data_range=255)
        side = args.size * upscaler.scale
        print(
            f"{upscaler.card.name} {args.size}->{side} tile {tile:3d} overlap {overlap:2d} {precision:8s}: {best:5.2f} s, "
            f"x{baseline / best:.2f} vs baseline; vs whole-image fp32: max {largest} levels, {psnr:.1f} dB",
            flush=True,
        )


if __name__ == "__main__":
    main()
