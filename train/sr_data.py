"""Super-resolution data: HR photos from folders, bicubic LR, random aligned patches.

LR images are made the way the SRGAN paper and ``../shared/datasets/README.md`` prescribe:
crop the HR image to a multiple of the scale factor, then downsample it by bicubic interpolation
(Pillow's, which antialiases like MATLAB's ``imresize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}


def list_images(folders: list[Path]) -> list[Path]:
    """Every image file below the given folders, sorted.

    Raises:
        FileNotFoundError: a folder is missing or holds no image.
    """
    paths: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"no such data folder: {folder}")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no images in {folder}")
        paths += found
    return paths


def load_rgb(path: Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def crop_to_multiple(hr: np.ndarray, scale: int) -> np.ndarray:
    """Crop ``(H, W, C)`` so that H and W are multiples of ``scale`` (bottom/right rows go)."""
    height, width = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    return hr[:height, :width]


def bicubic_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 to ``size`` = (width, height) pixels with Pillow's bicubic."""
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic LR of an HR image whose sides are multiples of ``scale``: ``(H/s, W/s, 3)`` uint8."""
    return bicubic_resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale))


@dataclass
class PairedImage:
    """One HR image (sides multiples of the scale) and its bicubic LR, both uint8 RGB."""

    hr: np.ndarray
    lr: np.ndarray


def load_pairs(paths: list[Path], scale: int) -> list[PairedImage]:
    """Load HR images and make their LR counterparts."""
    pairs = []
    for path in paths:
        hr = crop_to_multiple(load_rgb(path), scale)
        pairs.append(PairedImage(hr=hr, lr=make_lr(hr, scale)))
    return pairs


class PatchSampler:
    """Draws random aligned (LR, HR) patch batches with flips and 90-degree rotations.

    ``sample(n)`` returns ``lr`` of shape ``(n, 3, p/s, p/s)`` and ``hr`` of ``(n, 3, p, p)``,
    float32 in [0, 1], where ``p`` is ``hr_patch`` pixels and ``s`` the scale factor. Images
    smaller than the patch are skipped.
    """

    def __init__(self, pairs: list[PairedImage], scale: int, hr_patch: int, seed: int) -> None:
        if hr_patch % scale:
            raise ValueError(f"hr_patch {hr_patch} is not a multiple of scale {scale}")
        self.pairs = [p for p in pairs if min(p.hr.shape[:2]) >= hr_patch]
        if not self.pairs:
            raise ValueError(f"no training image is at least {hr_patch} pixels on each side")
        self.scale, self.hr_patch, self.lr_patch = scale, hr_patch, hr_patch // scale
        self.rng = np.random.default_rng(seed)

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[self.rng.integers(len(self.pairs))]
        y = self.rng.integers(pair.lr.shape[0] - self.lr_patch + 1)
        x = self.rng.integers(pair.lr.shape[1] - self.lr_patch + 1)
        lr = pair.lr[y : y + self.lr_patch, x : x + self.lr_patch]
        s = self.scale
        hr = pair.hr[y * s : y * s + self.hr_patch, x * s : x * s + self.hr_patch]
        if self.rng.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        turns = int(self.rng.integers(4))
        return np.rot90(lr, turns), np.rot90(hr, turns)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random (LR, HR) patch pairs; shapes and dtypes in the class docstring."""
        lrs, hrs = zip(*(self._one() for _ in range(n)))
        to_nchw = lambda batch: np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        return to_nchw(lrs), to_nchw(hrs)
