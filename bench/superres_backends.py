"""Benchmark: super-resolution backends on the same tiles, in one run.

PyTorch fp32 in NCHW layout (the baseline), PyTorch fp32 in channels_last (NHWC, as the
replicas run it), PyTorch with bf16 autocast (only on CPUs with native bf16: elsewhere it is
emulated and many times slower), ONNX Runtime fp32 and ONNX Runtime int8 (dynamic
quantization), each upscaling the same LR image through the serving path's tiles.
Prints seconds, output megapixels per second, the ratio to the baseline, and the PSNR of each
output against the baseline's (how far it drifts from fp32 PyTorch). Usage:

    python bench/superres_backends.py [--model DIR] [--size 384] [--tile 64] [--overlap 16]
                                      [--batch 2] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

from pixelfleet.models.runtime import cpu_has_native_bf16
from pixelfleet.models.sr_onnx import OnnxSR, export_onnx
from pixelfleet.models.srnet import load_model, to_uint8
from pixelfleet.deployments.superres.tiling import split_tiles, stitch_tiles
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS

Forward = Callable[[np.ndarray], np.ndarray]  # (N, 3, t, t) float32 -> (N, 3, t*s, t*s) float


def torch_forward(model: torch.nn.Module, bf16: bool, channels_last: bool) -> Forward:
    """PyTorch inference, optionally under bf16 autocast, in NCHW or channels_last layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=layout)

    @torch.inference_mode()
    def forward(tiles: np.ndarray) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return model(torch.from_numpy(tiles).contiguous(memory_format=layout)).float().numpy()

    return forward


def upscale(forward: Forward, image: np.ndarray, tile: int, overlap: int, batch: int, scale: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H*scale, W*scale, 3)`` uint8 through tiles, ``batch`` at a time."""
    tiles, plan = split_tiles(image, tile, overlap)
    floats = tiles.astype(np.float32) / 255.0
    outputs = [to_uint8(torch.from_numpy(forward(floats[i : i + batch]))).transpose(0, 3, 1, 2) for i in range(0, len(tiles), batch)]
    return stitch_tiles(np.concatenate(outputs), plan, scale)


def main() -> None:
    """Export the model once, then time every backend and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUILTIN_WEIGHTS / "srresnet-x4")
    parser.add_argument("--size", type=int, default=384, help="LR image side, pixels")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_model(args.model)
    image = np.asarray(np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 3)), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        files = export_onnx(args.model, Path(folder), int8=True)
        backends = {
            "torch fp32 NCHW": torch_forward(model, bf16=False, channels_last=False),
            "torch fp32 NHWC": torch_forward(model, bf16=False, channels_last=True),
        }
        if cpu_has_native_bf16():
            backends["torch bf16 NHWC"] = torch_forward(model, bf16=True, channels_last=True)
        else:
            print("no native bf16 on this CPU: bf16 autocast not timed (emulated, many times slower)")
        backends["onnxruntime fp32"] = OnnxSR(files["none"], num_threads=args.threads)
        backends["onnxruntime int8"] = OnnxSR(files["int8"], num_threads=args.threads)
        megapixels = (args.size * card.scale) ** 2 / 1e6
        print(f"model {card.name} x{card.scale}, LR {args.size}x{args.size}, tile {args.tile}/{args.overlap}, batch {args.batch}, threads {args.threads}, best of {args.repeats}")
        baseline_seconds, baseline_output = None, None
        for name, forward in backends.items():
            upscale(forward, image[: args.tile, : args.tile], args.tile, args.overlap, args.batch, card.scale)  # warm-up
            best, output = float("inf"), None
            for _ in range(args.repeats):
                started = time.perf_counter()
                output = upscale(forward, image, args.tile, args.overlap, args.batch, card.scale)
                best = min(best, time.perf_counter() - started)
            baseline_seconds = baseline_seconds or best
            baseline_output = output if baseline_output is None else baseline_output
            drift = peak_signal_noise_ratio(baseline_output, output, data_range=255) if output is not baseline_output else float("inf")
            print(f"{name:18s} {best:6.2f} s  {megapixels / best:5.2f} MP/s  speed x{baseline_seconds / best:4.2f}  PSNR vs torch fp32 {drift:6.2f} dB", flush=True)


if __name__ == "__main__":
    main()
