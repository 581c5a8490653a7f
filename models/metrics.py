"""Evaluation metrics: PSNR/SSIM on the Y channel for super-resolution, CER for OCR.

PSNR and SSIM follow the convention of the SRGAN and EDSR papers (Ledig et al. 2017, §3.1): the
luma channel Y of ITU-R BT.601 on the [16, 235] scale, with ``border`` pixels cropped from each
side. SSIM is Wang et al. (2004) with an 11x11 Gaussian window, sigma 1.5, via scikit-image.
"""

from __future__ import annotations

import re

import numpy as np

# scikit-image (and SciPy under it, ~44 MiB per process) is imported by the two functions that use
# it, not here: every OCR and super-resolution replica imports this module for its shadow
# comparison, which most never run.


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an ``(H, W, 3)`` uint8 RGB image, as ``(H, W)`` float64 in [16, 235]."""
    rgb = image.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    return y[border:-border, border:-border] if border > 0 else y


def psnr_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """PSNR in dB between two ``(H, W, 3)`` uint8 RGB images of one size, on Y, border cropped.

    Raises:
        ValueError: the shapes differ.
    """
    if output.shape != reference.shape:
        raise ValueError(f"shapes differ: {output.shape} vs {reference.shape}")
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_crop(rgb_to_y(reference), border), _crop(rgb_to_y(output), border), data_range=255))


def ssim_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """SSIM in [0, 1] between two ``(H, W, 3)`` uint8 RGB images, on Y, border cropped."""
    if output.shape != reference.shape:
        raise ValueError(f"shapes differ: {output.shape} vs {reference.shape}")
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            _crop(rgb_to_y(reference), border),
            _crop(rgb_to_y(output), border),
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def normalize_text(text: str) -> str:
    """Collapse every run of white space to one space and strip the ends."""
    return re.sub(r"\s+", " ", text).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each of cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def character_error_rate(hypothesis: str, reference: str) -> float:
    """CER: edit distance over reference length, after collapsing white space (1.0 if empty)."""
    hyp, ref = normalize_text(hypothesis), normalize_text(reference)
    if not ref:
        return 0.0 if not hyp else 1.0
    return levenshtein(hyp, ref) / len(ref)
