"""Validation of a super-resolution model against bicubic upscaling, on Y with border cropped."""

from __future__ import annotations

import numpy as np
from torch import nn

from deployments.srnet import upscale_whole
from train.metrics import psnr_y, ssim_y
from train.sr_data import PairedImage, bicubic_resize


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: ``(h, w, 3)`` uint8 upscaled by Pillow's bicubic to ``(h*s, w*s, 3)``."""
    return bicubic_resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale))


def evaluate_pairs(model: nn.Module, pairs: list[PairedImage], scale: int) -> dict[str, float]:
    """Mean PSNR-Y (dB) and SSIM-Y of the model and of bicubic over the pairs, border = scale."""
    rows = []
    for pair in pairs:
        sr, bic = upscale_whole(model, pair.lr), bicubic_upscale(pair.lr, scale)
        rows.append(
            (psnr_y(sr, pair.hr, scale), ssim_y(sr, pair.hr, scale), psnr_y(bic, pair.hr, scale), ssim_y(bic, pair.hr, scale))
        )
    mean = np.mean(rows, axis=0)
    return {"psnr_y": mean[0], "ssim_y": mean[1], "bicubic_psnr_y": mean[2], "bicubic_ssim_y": mean[3]}
