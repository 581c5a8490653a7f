"""PNG encoding time and size by zlib level, for the output of a 512x512 -> 2048x2048 upscale.

What a client waits for after the model: the replica encodes the upscaled image before it is
sent. Ratios are against Pillow's default level 6 in the same run (the machines are shared and
noisy); the pixels are the same at every level.

    python bench/png_encode.py --image ../shared/datasets/sr/val/bsd200/65010.png
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from PIL import Image

from pixelfleet.models.images import encode_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="a photo; resized (bicubic) to --size x --size")
    parser.add_argument("--size", type=int, default=2048, help="side of the encoded image, pixels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pixels = np.asarray(Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC))
    rows = {}
    for level in (0, 1, 3, 6, 9):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            data = encode_image(pixels, "png", png_level=level)
            times.append(time.perf_counter() - started)
        rows[level] = (float(np.median(times)), len(data))
    base_s, base_bytes = rows[6]
    print(f"# {args.size}x{args.size} PNG from {args.image}; {platform.processor() or platform.machine()}; median of {args.repeats}")
    print("| zlib level | seconds | x faster than 6 | MiB | size vs 6 |")
    print("| --- | --- | --- | --- | --- |")
    for level, (seconds, size) in rows.items():
        print(f"| {level} | {seconds:.3f} | {base_s / seconds:.2f} | {size / 2**20:.2f} | {size / base_bytes:.2f} |")


if __name__ == "__main__":
    main()
