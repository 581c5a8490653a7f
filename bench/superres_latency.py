"""Benchmark: one 512x512 -> 2048x2048 x4 upscale through the serving path, by tile size and precision.

Uses :class:`deployments.superres.Upscaler` (the replica's model runner) and the deployment's
tiling (``upscale_tiled``), one tile per forward pass as a lone request gets, without Ray.
Prints seconds per upscale (best of ``--repeats``), the speed-up over the first setting (all in
the same run), and how far each output is from whole-image fp32 inference (largest difference
in 8-bit levels, and PSNR): tile seams would show there. The input is a real photo when
``--image`` is given (cropped to the size), else noise.

Each row also gives the compute floor: the multiply-accumulates (MAC) of every convolution over
all tiles, divided by the rate this CPU sustains on one 3x3 convolution as wide as the model's
trunk (channels_last, same threads and precision): the fastest the upscale could run here if every
layer ran at that rate. A time near its floor can only drop with a faster CPU (AMX bf16, a GPU) or
a smaller network. Usage:

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

from pixelfleet.models.runtime import cpu_has_native_bf16
from pixelfleet.models.srnet import load_model, upscale_whole
from pixelfleet.deployments.superres.upscaler import Upscaler
from pixelfleet.deployments.superres.tiling import TilePlan
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS

SETTINGS = [(64, 16, "float32"), (128, 32, "float32"), (192, 32, "float32"), (256, 32, "float32"), (128, 32, "bfloat16"), (192, 32, "bfloat16")]


def conv_macs(model: torch.nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of every ``Conv2d`` in one forward pass of a ``(1, 3, height, width)`` input.

    Counted as output elements x (input channels / groups) x kernel area; bias, activations,
    pixel shuffle and the bicubic skip are left out (under 1% of the total for SRResNet).
    """
    total = 0

    def count(module: torch.nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel_area = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * kernel_area

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 3, height, width))
    for hook in hooks:
        hook.remove()
    return total


def sustained_conv_rate(precision: str, side: int = 192, channels: int = 48, repeats: int = 10) -> float:
    """MAC per second that this CPU sustains on one ``channels`` -> ``channels`` 3x3 convolution.

    Input ``(1, channels, side, side)`` float32, channels_last, under autocast for ``bfloat16``;
    best of ``repeats`` passes, with torch's current thread count.
    """
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval().to(memory_format=torch.channels_last)
    features = torch.rand(1, channels, side, side).to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    best = float("inf")
    with torch.inference_mode(), autocast:
        conv(features)  # warm-up: oneDNN picks and compiles its kernel
        for _ in range(repeats):
            started = time.perf_counter()
            conv(features)
            best = min(best, time.perf_counter() - started)
    return 9 * channels * channels * side * side / best


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
    model, card = load_model(args.model)
    channels = card.architecture.channels
    whole = upscale_whole(model, image).astype(int)
    baseline = None
    settings = SETTINGS if cpu_has_native_bf16() else [row for row in SETTINGS if row[2] != "bfloat16"]
    if len(settings) < len(SETTINGS):
        print("no native bf16 on this CPU: bfloat16 rows skipped (emulated, many times slower)")
    rates = {precision: sustained_conv_rate(precision, channels=channels) for precision in {row[2] for row in settings}}
    for precision, rate in rates.items():
        print(f"sustained 3x3 {channels}-channel conv, {precision}, {args.threads} threads: {rate / 1e9:.1f} GMAC/s")
    whole_macs = conv_macs(model, args.size, args.size)
    print(f"whole image in one pass: {whole_macs / 1e9:.0f} GMAC, compute floor {whole_macs / rates['float32']:.2f} s in float32")
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
        plan = TilePlan(args.size, args.size, tile, overlap)
        macs = len(plan) * conv_macs(model, plan.tile_height, plan.tile_width)
        floor = macs / rates[precision]
        print(
            f"{upscaler.card.name} {args.size}->{side} tile {tile:3d} overlap {overlap:2d} {precision:8s}: {best:5.2f} s, "
            f"x{baseline / best:.2f} vs baseline; vs whole-image fp32: max {largest} levels, {psnr:.1f} dB; "
            f"{macs / 1e9:.0f} GMAC in {len(plan)} tiles, compute floor {floor:.2f} s ({floor / best:.0%} of it reached)",
            flush=True,
        )


if __name__ == "__main__":
    main()
