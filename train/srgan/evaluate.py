"""Validation of a super-resolution model against bicubic upscaling, on Y with border cropped.

Used by training (rank 0, whole-image inference) and by ``pixelfleet eval superres`` (the
serving path: tiles through :class:`deployments.superres.Upscaler`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from pixelfleet.models.srnet import upscale_whole
from pixelfleet.models.metrics import psnr_y, ssim_y
from pixelfleet.train.sr_data import PairedImage, bicubic_resize

Upscale = Callable[[np.ndarray], np.ndarray]  # (h, w, 3) uint8 -> (h*s, w*s, 3) uint8


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: ``(h, w, 3)`` uint8 upscaled by Pillow's bicubic to ``(h*s, w*s, 3)``."""
    return bicubic_resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale))


def evaluate_images(upscale: Upscale, pairs: list[PairedImage], scale: int) -> list[dict[str, float]]:
    """Per pair: PSNR-Y (dB) and SSIM-Y of the model's and of bicubic's output, border = scale."""
    rows = []
    for pair in pairs:
        sr, bicubic = upscale(pair.lr), bicubic_upscale(pair.lr, scale)
        rows.append(
            {
                "psnr_y": psnr_y(sr, pair.hr, scale),
                "ssim_y": ssim_y(sr, pair.hr, scale),
                "bicubic_psnr_y": psnr_y(bicubic, pair.hr, scale),
                "bicubic_ssim_y": ssim_y(bicubic, pair.hr, scale),
            }
        )
    return rows


def mean_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over :func:`evaluate_images` rows."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def evaluate_pairs(model: nn.Module, pairs: list[PairedImage], scale: int) -> dict[str, float]:
    """Mean PSNR-Y (dB) and SSIM-Y of the model (whole-image inference) and of bicubic."""
    return mean_row(evaluate_images(lambda lr: upscale_whole(model, lr), pairs, scale))


def side_by_side(pair: PairedImage, sr: np.ndarray, scale: int) -> Image.Image:
    """One picture, left to right: LR (nearest-neighbour enlarged) | bicubic | model | HR."""
    height, width = pair.hr.shape[:2]
    lr_big = np.asarray(Image.fromarray(pair.lr).resize((width, height), Image.Resampling.NEAREST))
    panels = [lr_big, bicubic_upscale(pair.lr, scale), sr, pair.hr]
    return Image.fromarray(np.concatenate(panels, axis=1))


def write_comparisons(upscale: Upscale, pairs: list[PairedImage], names: list[str], scale: int, folder: Path) -> None:
    """Write ``<name>.png`` side-by-side comparisons into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for pair, name in zip(pairs, names):
        side_by_side(pair, upscale(pair.lr), scale).save(folder / f"{name}.png")
