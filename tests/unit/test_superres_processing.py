"""Super-resolution pre/post-processing around the network, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from pixelfleet.deployments.superres.upscaler import merge_channels, split_channels
from pixelfleet.models.errors import InvalidInput
from tests.conftest import synthetic_photo


def test_rgb_passes_through():
    image = synthetic_photo(6, 7)
    rgb, alpha, is_gray = split_channels(image)
    np.testing.assert_array_equal(rgb, image)
    assert alpha is None and not is_gray


def test_gray_is_replicated_then_returns_as_luma():
    gray = synthetic_photo(6, 7)[..., :1]
    rgb, alpha, is_gray = split_channels(gray)
    assert rgb.shape == (6, 7, 3) and is_gray and alpha is None
    np.testing.assert_array_equal(rgb[..., 1], gray[..., 0])
    merged = merge_channels(rgb, alpha, is_gray)
    assert merged.shape == (6, 7, 1)
    np.testing.assert_allclose(merged[..., 0], gray[..., 0], atol=1)  # luma of a gray RGB is itself


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_is_split_off_and_upscaled_to_the_output(channels):
    image = np.concatenate([synthetic_photo(10, 12)[..., : channels - 1], np.full((10, 12, 1), 200, np.uint8)], axis=2)
    rgb, alpha, is_gray = split_channels(image)
    assert alpha.shape == (10, 12) and rgb.shape == (10, 12, 3)
    upscaled_rgb = np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)  # stands in for the network's x4 output
    merged = merge_channels(upscaled_rgb, alpha, is_gray)
    assert merged.shape == (40, 48, channels)
    assert (merged[..., -1] == 200).all()  # a flat alpha plane stays flat through bicubic


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), np.zeros((0, 4, 3), np.uint8), "pixels"],
    ids=["float", "2d", "5-channels", "empty", "not-array"],
)
def test_bad_arrays_are_invalid_input(bad):
    with pytest.raises(InvalidInput):
        split_channels(bad)
