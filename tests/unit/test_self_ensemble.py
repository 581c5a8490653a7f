"""The x8 geometric self-ensemble (EDSR+): exact arithmetic, equivariance, both backends, quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pixelfleet.models.sr_onnx as sr_onnx
from pixelfleet.models.srnet import self_ensemble
from pixelfleet.deployments.superres.upscaler import Upscaler
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS
from pixelfleet.deployments.superres.config import SuperResVariant
from tests.conftest import dataset, synthetic_photo
from pixelfleet.models.metrics import psnr_y
from pixelfleet.train.sr_data import crop_to_multiple, load_rgb, make_lr

WEIGHTS = BUILTIN_WEIGHTS / "srresnet-x4"
TILE = np.ascontiguousarray(synthetic_photo(40, 56, seed=3).transpose(2, 0, 1))[None].astype(np.float32) / 255.0  # not square


def test_mean_of_the_eight_transforms_turned_back():
    """A map that is not equivariant (it marks the top-left corner): the ensemble averages the
    corner mark of each of the eight views, turned back onto the four corners."""

    def mark_corner(batch: torch.Tensor) -> torch.Tensor:
        out = batch.clone()
        out[..., 0, 0] = 1.0
        return out

    batch = torch.zeros(1, 3, 4, 4)
    result = self_ensemble(mark_corner, batch)
    corners = result[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners, torch.full((4,), 2 / 8))  # each corner is the top-left of 2 views
    assert result[0, 0, 1:-1, 1:-1].abs().max() == 0


@pytest.mark.parametrize("turns,flip", [(1, False), (2, True), (3, False)])
def test_ensembled_model_is_equivariant_to_flips_and_rotations(turns, flip):
    upscaler = Upscaler(WEIGHTS, num_threads=2, ensemble=True)

    def transform(array: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
        """Turn by ``turns`` quarter turns in the (height, width) ``axes``, then flip the width."""
        array = np.rot90(array, turns, axes)
        return np.ascontiguousarray(np.flip(array, axes[1]) if flip else array)

    transformed_input = upscaler.forward(transform(TILE, (2, 3)))
    assert upscaler.forward(TILE).shape == (1, 160, 224, 3)
    output_transformed = transform(upscaler.forward(TILE), (1, 2))  # outputs are (N, H, W, 3)
    assert np.abs(transformed_input.astype(int) - output_transformed.astype(int)).max() <= 1


def test_onnx_backend_ensemble_matches_torch(monkeypatch, tmp_path):
    monkeypatch.setattr(sr_onnx, "CACHE_DIR", tmp_path / "cache")
    torch_output = Upscaler(WEIGHTS, num_threads=2, ensemble=True).forward(TILE)
    onnx_output = Upscaler(WEIGHTS, backend="onnx", num_threads=2, ensemble=True).forward(TILE)
    assert np.abs(torch_output.astype(int) - onnx_output.astype(int)).max() <= 1


def test_variant_config_and_card_carry_the_option():
    assert SuperResVariant(weights="builtin:srresnet-x4").ensemble is False
    assert SuperResVariant(weights="builtin:srresnet-x4", ensemble=True).ensemble is True
    assert Upscaler(WEIGHTS, ensemble=True).info()["ensemble"] is True


def test_ensemble_raises_psnr_on_real_photos():
    """On held-out BSDS photos the ensemble beats the single pass of the same model (it gains
    0.07 dB on the mean of all 20; here the first 3, through the serving path's tiles)."""
    paths = sorted(dataset("sr", "val", "bsd200").glob("*.png"))[:3]
    plain, ensembled = Upscaler(WEIGHTS, num_threads=2), Upscaler(WEIGHTS, num_threads=2, ensemble=True)
    gains = []
    for path in paths:
        hr = crop_to_multiple(load_rgb(path), 4)
        lr = make_lr(hr, 4)
        single = psnr_y(plain.upscale(lr, 96, 24), hr, 4)
        gains.append(psnr_y(ensembled.upscale(lr, 96, 24), hr, 4) - single)
    assert np.mean(gains) > 0.02, gains
