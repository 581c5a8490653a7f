"""Tiling: plans cover the image, and tiled super-resolution equals whole-image super-resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelfleet.models.srnet import SRResNet, to_tensor, to_uint8, upscale_whole
from pixelfleet.deployments.superres.tiling import axis_cuts, axis_starts, split_tiles, stitch_tiles
from tests.conftest import synthetic_photo


@pytest.mark.parametrize("length,tile,overlap", [(64, 64, 16), (65, 64, 16), (300, 64, 16), (1000, 128, 32), (129, 32, 0)])
def test_axis_cuts_partition_the_axis(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    cuts = axis_cuts(starts, tile, length)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert cuts[0][0] == 0 and cuts[-1][1] == length
    for (b0, e0), (b1, _) in zip(cuts, cuts[1:]):
        assert e0 == b1  # contiguous, no gap, no double cover
    for start, (begin, end) in zip(starts, cuts):
        assert start <= begin < end <= start + tile


def test_axis_starts_rejects_bad_overlap():
    with pytest.raises(ValueError):
        axis_starts(100, 32, 32)


@pytest.mark.parametrize(
    "shape,tile_shape", [((50, 70), (32, 32)), ((7, 5), (8, 8)), ((64, 64), (32, 32)), ((130, 97), (32, 32)), ((20, 45), (20, 32))]
)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_identity_roundtrip(shape, tile_shape, channels):
    """With scale 1 and unchanged tiles, stitching gives back the image exactly. A side shorter
    than the tile makes the tile as short (no padding), but never below 8 px."""
    image = np.random.default_rng(0).integers(0, 256, size=(*shape, channels), dtype=np.uint8)
    tiles, plan = split_tiles(image, tile_size=32, overlap=8)
    assert tiles.shape[1:] == (channels, *tile_shape)
    np.testing.assert_array_equal(stitch_tiles(tiles, plan, scale=1), image)


def test_image_smaller_than_a_tile_is_one_unpadded_tile():
    image = synthetic_photo(30, 50)
    tiles, plan = split_tiles(image, tile_size=192, overlap=32)
    assert len(plan) == 1 and plan.padded_height == 30 and plan.padded_width == 50
    np.testing.assert_array_equal(tiles[0].transpose(1, 2, 0), image)


def test_stitch_checks_tile_count():
    tiles, plan = split_tiles(np.zeros((40, 40, 3), np.uint8), 32, 8)
    with pytest.raises(ValueError):
        stitch_tiles(tiles[:-1], plan, scale=1)


def test_upscale_of_an_image_smaller_than_a_tile_equals_whole_image():
    """No padding: the served upscale of a small image is exactly the whole-image upscale."""
    from pixelfleet.deployments.superres.upscaler import Upscaler
    from pixelfleet.models.modelcard import BUILTIN_WEIGHTS

    upscaler = Upscaler(BUILTIN_WEIGHTS / "srresnet-x4", num_threads=2)
    image = synthetic_photo(37, 61)
    tiled = upscaler.upscale(image, tile_size=192, overlap=32)
    whole = upscale_whole(upscaler.model, image)
    assert tiled.shape == (148, 244, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # NHWC vs NCHW rounding


def test_tiled_upscale_equals_whole_image():
    """Where the overlap covers twice the receptive radius, tiles change nothing (within 1/255)."""
    torch.manual_seed(0)
    model = SRResNet(scale=2, channels=8, blocks=2).eval()
    overlap = 2 * model.receptive_radius
    tile = overlap + 8
    image = synthetic_photo(45, 61)
    tiles, plan = split_tiles(image, tile, overlap)
    assert len(plan) > 4  # really tiled, in both directions
    with torch.inference_mode():
        upscaled = to_uint8(model(torch.from_numpy(tiles).float() / 255.0)).transpose(0, 3, 1, 2)
    tiled = stitch_tiles(upscaled, plan, scale=2)
    whole = upscale_whole(model, image)
    assert tiled.shape == whole.shape == (90, 122, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_tensor_conversions_roundtrip():
    image = synthetic_photo(9, 11)
    np.testing.assert_array_equal(to_uint8(to_tensor(image))[0], image)
