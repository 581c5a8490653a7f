"""Super-resolution backends agree: PyTorch fp32 (reference), bf16 autocast, ONNX Runtime fp32
and int8, through the serving path's Upscaler and tiling (without Ray).

Stated tolerances, from measurements on the shipped model (bench/superres_backends.py):
ONNX Runtime fp32 is within 1/255 of PyTorch fp32 on every pixel; bf16 autocast stays above
45 dB PSNR against it (measured 54.9 dB), int8 dynamic quantization above 40 dB (measured 42.6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

import pixelfleet.models.sr_onnx as sr_onnx
from pixelfleet.deployments.superres.upscaler import Upscaler
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS
from tests.conftest import synthetic_photo

WEIGHTS = BUILTIN_WEIGHTS / "srresnet-x4"
IMAGE = synthetic_photo(70, 90)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    paths = sr_onnx.export_onnx(WEIGHTS, folder, int8=True)
    assert set(paths) == {"none", "int8"} and all(p.stat().st_size > 100_000 for p in paths.values())
    return folder


def run(upscaler: Upscaler) -> np.ndarray:
    """The deployment's path with a batch of one tile at a time in place of @serve.batch."""
    return upscaler.upscale(IMAGE, tile_size=64, overlap=16)


def upscale_with(**options) -> np.ndarray:
    return run(Upscaler(WEIGHTS, num_threads=2, **options))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return upscale_with()


def test_reference_shape(reference):
    assert reference.shape == (280, 360, 3) and reference.dtype == np.uint8


def test_channels_last_replica_matches_nchw_inference():
    """Replicas run the network in channels_last (NHWC); the result is NCHW's to within 1 level."""
    from pixelfleet.models.srnet import load_model, to_uint8

    upscaler = Upscaler(WEIGHTS, num_threads=2)
    tiles = np.ascontiguousarray(IMAGE[None, :64, :64].transpose(0, 3, 1, 2)).astype(np.float32) / 255.0
    nchw_model = load_model(WEIGHTS)[0]
    assert nchw_model.head.weight.is_contiguous() and not upscaler.model.head.weight.is_contiguous()
    with torch.inference_mode():
        nchw = to_uint8(nchw_model(torch.from_numpy(tiles)))
    assert np.abs(upscaler.forward(tiles).astype(int) - nchw.astype(int)).max() <= 1


def test_onnx_fp32_matches_torch(monkeypatch, onnx_dir, reference):
    monkeypatch.setattr(sr_onnx, "CACHE_DIR", onnx_dir.parent / "cache")
    # the model folder has no .onnx: the replica exports into the cache, then runs it
    output = upscale_with(backend="onnx")
    assert np.abs(output.astype(int) - reference.astype(int)).max() <= 1
    assert list((onnx_dir.parent / "cache" / "onnx").glob("*/model.onnx"))


def test_onnx_int8_stays_close(monkeypatch, onnx_dir, reference):
    monkeypatch.setattr(sr_onnx, "CACHE_DIR", onnx_dir.parent / "cache")
    output = upscale_with(backend="onnx", quantize="int8")
    assert peak_signal_noise_ratio(reference, output, data_range=255) > 40


def test_bf16_autocast_stays_close(reference):
    output = upscale_with(precision="bfloat16")
    assert peak_signal_noise_ratio(reference, output, data_range=255) > 45


def test_cuda_request_falls_back_to_cpu_without_a_gpu(reference):
    """The GPU path is chosen by config; where no GPU is present the replica runs on CPU."""
    upscaler = Upscaler(WEIGHTS, num_threads=2, device="cuda", precision="float16")
    if upscaler.device.type == "cuda":
        pytest.skip("a GPU is present: the fallback is not exercised")
    assert upscaler.precision == "float32"
    np.testing.assert_array_equal(run(upscaler), reference)


def test_export_onnx_command(tmp_path):
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    result = CliRunner().invoke(app, ["export", "onnx", "--model", str(WEIGHTS), "--output", str(tmp_path), "--int8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()
    assert "int8:" in result.output


def test_auto_precision_picks_bf16_only_where_the_cpu_has_it(reference):
    from pixelfleet.models.runtime import auto_precision, cpu_has_native_bf16

    upscaler = Upscaler(WEIGHTS, num_threads=2, precision="auto")
    assert upscaler.precision == ("bfloat16" if cpu_has_native_bf16() else "float32") == auto_precision("cpu")
    assert auto_precision("cuda") == "float16"
    assert peak_signal_noise_ratio(reference, run(upscaler), data_range=255) > 45
    assert Upscaler(WEIGHTS, backend="onnx", precision="auto").precision == "float32"  # ONNX runs the float32 export
