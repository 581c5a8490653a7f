"""SR data pipeline and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_photo
from pixelfleet.models.metrics import character_error_rate, levenshtein, psnr_y, rgb_to_y, ssim_y
from pixelfleet.train.sr_data import bicubic_resize, crop_to_multiple, list_images, make_lr, random_patch_pairs, random_rescale, to_nchw_float


def test_crop_and_lr_sizes():
    hr = crop_to_multiple(synthetic_photo(101, 66), 4)
    assert hr.shape == (100, 64, 3)
    assert make_lr(hr, 4).shape == (25, 16, 3)


def test_patches_are_aligned_lr_hr_pairs():
    """Each LR patch is the bicubic downscale of its HR patch, and the HR patch comes from the image
    (up to a flip and a quarter turn)."""
    image = synthetic_photo(200, 240)
    pairs = random_patch_pairs(image, scale=4, hr_patch=48, count=8, rng=np.random.default_rng(1))
    assert len(pairs) == 8
    for pair in pairs:
        assert pair["hr"].shape == (48, 48, 3) and pair["lr"].shape == (12, 12, 3)
        assert pair["hr"].dtype == np.uint8 and pair["lr"].dtype == np.uint8
        np.testing.assert_array_equal(pair["lr"], make_lr(pair["hr"], 4))
        views = [np.rot90(pair["hr"], -k) for k in range(4)]
        views += [v[:, ::-1] for v in views]
        assert any(_occurs_in(view, image) for view in views)


def _occurs_in(patch: np.ndarray, image: np.ndarray) -> bool:
    size = patch.shape[0]
    for y in range(image.shape[0] - size + 1):
        rows = np.nonzero((image[y, : image.shape[1] - size + 1] == patch[0, 0]).all(axis=1))[0]
        if any(np.array_equal(image[y : y + size, x : x + size], patch) for x in rows):
            return True
    return False


def test_patches_augment_and_skip_small_images():
    image = synthetic_photo(64, 64)
    pairs = random_patch_pairs(image, 2, 32, 40, np.random.default_rng(0))
    assert len({pair["hr"].tobytes() for pair in pairs}) > 30  # random positions and turns
    assert random_patch_pairs(synthetic_photo(20, 64), 2, 32, 4, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        random_patch_pairs(image, 4, 30, 1, np.random.default_rng(0))


def test_rescale_shrinks_by_factors_in_the_range():
    """Scale augmentation: sizes follow the drawn factors, cover the range, and the shrunk image is
    Pillow's bicubic downscale of the photo (same content, not a crop)."""
    image = synthetic_photo(200, 300)
    rng = np.random.default_rng(0)
    heights = [random_rescale(image, (0.5, 1.0), rng).shape[0] for _ in range(200)]
    assert 100 <= min(heights) < 110 and 190 < max(heights) <= 200
    shrunk = random_rescale(image, (0.5, 0.5), rng)
    assert shrunk.shape == (100, 150, 3) and shrunk.dtype == np.uint8
    np.testing.assert_array_equal(shrunk, bicubic_resize(image, (150, 100)))
    assert random_rescale(image, (1.0, 1.0), rng) is image


def test_patches_after_rescale_are_aligned_and_skip_what_became_too_small():
    image = synthetic_photo(100, 100)
    pairs = random_patch_pairs(image, 4, 48, 6, np.random.default_rng(2), rescale=(0.6, 0.9))
    assert len(pairs) == 6
    for pair in pairs:
        assert pair["hr"].shape == (48, 48, 3)
        np.testing.assert_array_equal(pair["lr"], make_lr(pair["hr"], 4))
    # scale 1 would find the 48 px patches; shrunk to 40 px the image gives none
    assert random_patch_pairs(image, 4, 48, 6, np.random.default_rng(2), rescale=(0.4, 0.4)) == []


def test_to_nchw_float():
    import torch

    batch = torch.from_numpy(np.stack([synthetic_photo(8, 6)] * 2))
    out = to_nchw_float(batch)
    assert out.shape == (2, 3, 8, 6) and out.dtype == torch.float32
    assert torch.allclose(out[0, :, 3, 2] * 255, batch[0, 3, 2].float())


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
