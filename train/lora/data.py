"""Captioned images for LoRA training: listing them and reading them with Ray Data.

A data folder holds images with their captions beside them: ``cat.png`` and ``cat.txt`` (UTF-8,
the whole file is the caption), the layout kohya's trainers and diffusers' ``imagefolder`` accept.
Ray Data reads and decodes the images and resizes them to the run's square
(:func:`captioned_dataset`); every worker gets the whole (small) set and draws its batches by
``train/lora/sampler.py``. No torch here: Ray Data's tasks import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pixelfleet.train.sr_data import list_images

if TYPE_CHECKING:
    import ray.data

DATA_TASK_CPUS = 0.25  # CPUs of each Ray Data read/resize task (train/srgan/run.py keeps DATA_CPUS = 0.5 for them)
IMAGES_PER_TASK = 64


def list_captioned(folders: list[Path]) -> dict[str, str]:
    """Every image below ``folders`` (sorted) -> its caption, read from ``<stem>.txt`` beside it.

    Raises:
        FileNotFoundError: a folder is missing, holds no image, or an image has no caption file
            (the message names up to five of them).
    """
    captions: dict[str, str] = {}
    missing: list[Path] = []
    for path in list_images(folders):
        text = path.with_suffix(".txt")
        if text.is_file():
            captions[str(path)] = text.read_text(encoding="utf-8").strip()
        else:
            missing.append(path)
    if missing:
        named = ", ".join(str(p) for p in missing[:5])
        raise FileNotFoundError(f"{len(missing)} images have no caption file (<stem>.txt beside the image): {named}")
    return captions


def square_crop(image: np.ndarray, resolution: int, center: bool = True) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 RGB so its short side is ``resolution`` pixels (Pillow bilinear,
    antialiased, as torchvision's ``Resize`` in diffusers' script), then cut a ``resolution``
    square from the centre (or the top-left corner): ``(resolution, resolution, 3)`` uint8."""
    height, width = image.shape[:2]
    factor = resolution / min(height, width)
    size = (max(resolution, round(width * factor)), max(resolution, round(height * factor)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    top = (size[1] - resolution) // 2 if center else 0
    left = (size[0] - resolution) // 2 if center else 0
    return np.ascontiguousarray(resized[top : top + resolution, left : left + resolution])


def captioned_dataset(captions: dict[str, str], resolution: int, center_crop: bool = True) -> "ray.data.Dataset":
    """A Ray Data pipeline of training examples from :func:`list_captioned`'s mapping (of absolute paths).

    ``ray.data.read_images`` decodes the files (RGB); a map resizes and crops each to the run's
    square (:func:`square_crop`) and attaches its caption; both run as one task of
    :data:`DATA_TASK_CPUS` per :data:`IMAGES_PER_TASK` images. The dataset is not split among the workers: each reads it
    all once, at its start. Rows: ``{"path": str, "caption": str,
    "pixels": (R, R, 3) uint8}`` with R = ``resolution`` pixels.
    """
    import ray.data

    def example(row: dict) -> dict:
        path = row["path"]  # as given: the keys must be absolute local paths
        return {"path": path, "caption": captions[path], "pixels": square_crop(row["image"], resolution, center_crop)}

    # a quarter CPU each: the read runs beside the workers, within the CPUs the run keeps for Ray Data;
    # one task per IMAGES_PER_TASK images (a task's start costs more than decoding a few images)
    blocks = -(-len(captions) // IMAGES_PER_TASK)
    images = ray.data.read_images(
        list(captions), mode="RGB", include_paths=True, file_extensions=None, num_cpus=DATA_TASK_CPUS, override_num_blocks=blocks
    )
    return images.map(example, num_cpus=DATA_TASK_CPUS)
