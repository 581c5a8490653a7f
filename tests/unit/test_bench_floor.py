"""The compute-floor arithmetic of ``bench/superres_latency.py``: its MAC count must match the network."""

import importlib.util
from pathlib import Path

from pixelfleet.models.srnet import SRResNet

BENCH = Path(__file__).resolve().parents[2] / "bench" / "superres_latency.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("superres_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conv_macs_counts_every_convolution_of_srresnet():
    bench = load_bench()
    height, width, channels, blocks, scale = 10, 14, 8, 3, 4
    model = SRResNet(scale, channels, blocks, upsampler="single").eval()
    per_pixel = 9 * (3 * channels + (2 * blocks + 1) * channels * channels + channels * 3 * scale * scale)
    assert bench.conv_macs(model, height, width) == height * width * per_pixel


def test_conv_macs_counts_progressive_upsampling_at_its_own_resolution():
    bench = load_bench()
    channels, blocks = 4, 1
    model = SRResNet(2, channels, blocks, upsampler="progressive").eval()
    lr_pixels, hr_pixels = 6 * 6, 12 * 12
    at_lr = 9 * (3 * channels + 3 * channels * channels + channels * 4 * channels)
    at_hr = 9 * channels * 3  # the tail conv to RGB after the pixel shuffle
    assert bench.conv_macs(model, 6, 6) == lr_pixels * at_lr + hr_pixels * at_hr

