"""Super-resolution data: HR photos from folders, bicubic LR, random aligned patches.

LR images are made the way the SRGAN paper and ``../shared/datasets/README.md`` prescribe:
crop the HR image to a multiple of the scale factor, then downsample it by bicubic interpolation
(Pillow's, which antialiases like MATLAB's ``imresize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import ray.data
    import torch

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


def random_rescale(hr_image: np.ndarray, rescale: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Shrink an HR image by a factor drawn uniformly from ``rescale`` = (low, high), both in (0, 1].

    The scale augmentation of VDSR (Kim et al. 2016) and LapSRN (Lai et al. 2017), which train on
    the same T91 + BSD200 images: a photo downscaled (Pillow bicubic, antialiased) is a new HR
    image with the same content at another size, so a small training set shows more textures at
    more sizes. ``(H, W, 3)`` uint8 in, ``(round(H*f), round(W*f), 3)`` uint8 out; ``(1, 1)``
    returns the image itself.
    """
    factor = float(rng.uniform(*rescale)) if rescale[0] < rescale[1] else rescale[0]
    if factor == 1.0:
        return hr_image
    height, width = hr_image.shape[:2]
    return bicubic_resize(hr_image, (max(1, round(width * factor)), max(1, round(height * factor))))


def random_patch_pairs(
    hr_image: np.ndarray,
    scale: int,
    hr_patch: int,
    count: int,
    rng: np.random.Generator,
    rescale: tuple[float, float] = (1.0, 1.0),
) -> list[dict[str, np.ndarray]]:
    """Cut ``count`` random HR patches from one image and make each one's bicubic LR on the fly.

    The image is first shrunk by a random factor in ``rescale`` (:func:`random_rescale`; the
    default ``(1, 1)`` keeps it as it is). Each patch is flipped left-right with probability 1/2
    and turned by a random multiple of 90 degrees (the augmentations of EDSR/SRGAN training).
    ``hr_image`` is ``(H, W, 3)`` uint8 RGB; each result holds ``hr`` ``(p, p, 3)`` and ``lr``
    ``(p/s, p/s, 3)``, uint8, with ``p`` = ``hr_patch`` pixels and ``s`` the scale factor. An
    image smaller than the patch (after the shrink) gives none.

    Raises:
        ValueError: ``hr_patch`` is not a multiple of ``scale``.
    """
    if hr_patch % scale:
        raise ValueError(f"hr_patch {hr_patch} is not a multiple of scale {scale}")
    hr_image = random_rescale(hr_image, rescale, rng)
    height, width = hr_image.shape[:2]
    if min(height, width) < hr_patch:
        return []
    pairs = []
    for _ in range(count):
        y, x = int(rng.integers(height - hr_patch + 1)), int(rng.integers(width - hr_patch + 1))
        hr = hr_image[y : y + hr_patch, x : x + hr_patch]
        if rng.random() < 0.5:
            hr = hr[:, ::-1]
        hr = np.ascontiguousarray(np.rot90(hr, int(rng.integers(4))))
        pairs.append({"hr": hr, "lr": make_lr(hr, scale)})
    return pairs


def patch_dataset(
    folders: list[Path], scale: int, hr_patch: int, patches_per_image: int, rescale: tuple[float, float] = (1.0, 1.0)
) -> "ray.data.Dataset":
    """A Ray Data pipeline of random (LR, HR) patch pairs: ``patches_per_image`` from each image.

    The images are read and decoded once (``ray.data.read_images``, materialized in the object
    store); the shrink by a factor in ``rescale``, the crops, flips, rotations and bicubic LR
    (:func:`random_patch_pairs`) are drawn anew each time the dataset is
    iterated, so every epoch sees fresh patches. Rows: ``{"lr": (p/s, p/s, 3) uint8, "hr": (p,
    p, 3) uint8}``. Ray Train splits it among the workers (``get_dataset_shard("train")``).

    Raises:
        FileNotFoundError: a folder is missing or holds no image.
    """
    import ray.data

    paths = [str(p) for p in list_images(folders)]
    images = ray.data.read_images(paths, mode="RGB").materialize()

    def cut(row: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return random_patch_pairs(row["image"], scale, hr_patch, patches_per_image, np.random.default_rng(), rescale)

    return images.flat_map(cut, num_cpus=0.25)


def to_nchw_float(batch: "torch.Tensor") -> "torch.Tensor":
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 in [0, 1]."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
