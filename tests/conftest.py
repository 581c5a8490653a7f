"""Shared test helpers: where the real data lives, and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


def dataset(*parts: str) -> Path:
    """A folder of ``../shared/datasets``; the test skips cleanly when it is absent."""
    folder = DATASETS.joinpath(*parts)
    if not folder.is_dir():
        pytest.skip(f"real data not present: {folder}")
    return folder


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth ``(H, W, 3)`` uint8 test image: gradients plus a few soft blobs and edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(height + width - 2, 1)], axis=2) * 160
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, max(4, min(height, width) / 3))
        image += (np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-90, 90, size=3))
    image[:, width // 2 :] += 30  # a hard vertical edge
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> dict[str, Path]:
    """The tiny Stable Diffusion pipeline of ``tests/tinysd.py`` on disk, made once per session:
    ``folder`` (diffusers folder), ``single_file`` (SD 1.x-layout ``.safetensors``; load it with
    ``config=folder``), ``lora`` (a rank-4 LoRA that fits it) and ``lora_other_base`` (one that
    does not)."""
    from tests import tinysd

    root = tmp_path_factory.mktemp("tinysd")
    return {
        "folder": tinysd.save_folder(root / "folder"),
        "single_file": tinysd.save_single_file(root / "tiny-sd1.safetensors"),
        "lora": tinysd.make_lora(root / "loras" / "tiny-style.safetensors", rank=4, seed=1),
        "lora_other_base": tinysd.make_lora_for_other_base(root / "other" / "wide.safetensors"),
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): the tiny
    diffusion models gain nothing from more threads, and OpenMP's spinning threads slow to a crawl
    when the machine's cores are busy with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
