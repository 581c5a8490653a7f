"""SR data pipeline and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import synthetic_photo
from train.metrics import character_error_rate, levenshtein, psnr_y, rgb_to_y, ssim_y
from train.sr_data import PairedImage, PatchSampler, crop_to_multiple, list_images, make_lr


def test_crop_and_lr_sizes():
    hr = crop_to_multiple(synthetic_photo(101, 66), 4)
    assert hr.shape == (100, 64, 3)
    assert make_lr(hr, 4).shape == (25, 16, 3)


def test_patches_are_aligned_lr_hr_pairs():
    """Each LR patch is the bicubic downscale of its HR patch's region (up to resampling at the edges)."""
    hr = crop_to_multiple(synthetic_photo(200, 240), 4)
    sampler = PatchSampler([PairedImage(hr, make_lr(hr, 4))], scale=4, hr_patch=48, seed=1)
    lr, hr_patches = sampler.sample(8)
    assert lr.shape == (8, 3, 12, 12) and hr_patches.shape == (8, 3, 48, 48)
    assert lr.dtype == np.float32 and 0 <= lr.min() and lr.max() <= 1
    for small, big in zip(lr, hr_patches):
        down = np.asarray(Image.fromarray((big.transpose(1, 2, 0) * 255).round().astype(np.uint8)).resize((12, 12), Image.Resampling.BICUBIC))
        inner = np.abs(down[2:-2, 2:-2].astype(float) - small.transpose(1, 2, 0)[2:-2, 2:-2] * 255)
        assert inner.mean() < 4


def test_sampler_refuses_patch_not_multiple_of_scale():
    hr = synthetic_photo(64, 64)
    with pytest.raises(ValueError):
        PatchSampler([PairedImage(hr, make_lr(hr, 4))], scale=4, hr_patch=30, seed=0)


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError):
        list_images([tmp_path])


def test_rgb_to_y_range():
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16)
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235)


def test_psnr_and_ssim():
    image = synthetic_photo(64, 64)
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    assert psnr_y(image, image, 4) == float("inf")
    assert 25 < psnr_y(noisy, image, 4) < 45
    assert ssim_y(image, image, 4) == pytest.approx(1.0)
    assert ssim_y(noisy, image, 4) < 0.99
    with pytest.raises(ValueError):
        psnr_y(image, image[:-1], 4)


def test_border_crop_ignores_edges():
    image = synthetic_photo(32, 32)
    damaged = image.copy()
    damaged[:2] = 0
    assert psnr_y(damaged, image, 2) == float("inf")
    assert psnr_y(damaged, image, 1) < 40


def test_cer():
    assert levenshtein("kitten", "sitting") == 3
    assert character_error_rate("hello  world\n", "hello world") == 0
    assert character_error_rate("helo world", "hello world") == pytest.approx(1 / 11)
    assert character_error_rate("", "") == 0 and character_error_rate("x", "") == 1
