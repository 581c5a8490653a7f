"""OCR text lines: the result schema, the input check and boxes, pure and engine-free.

``OCRLine`` and ``OCRResult`` are what every engine returns and what the API serves; the helpers
here are shared by the engines (``engines.py``), the layout step (``layout.py``, reading order)
and the deployment (``deployment.py``), and tests call them without an engine or Ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

from pixelfleet.models.errors import InvalidInput, PayloadTooLarge

MAX_PIXELS = 40_000_000
"""Largest image (H * W) a replica accepts; the ingress should refuse bigger ones first."""


# --------------------------------------------------------------------------------------- schema


class OCRLine(BaseModel):
    """One recognised text line."""

    text: str = Field(description="the line's text, without a trailing newline")
    confidence: float = Field(ge=0.0, le=1.0, description="engine score in [0, 1]")
    box: list[int] = Field(
        min_length=4, max_length=4, description="[x0, y0, x1, y1] in pixels of the input image, x1 > x0, y1 > y0"
    )


class OCRResult(BaseModel):
    """Every line of one image in reading order, and their texts joined by newlines."""

    text: str = Field(description="the lines' texts joined by '\\n' in reading order")
    lines: list[OCRLine]


# ----------------------------------------------------------------------------------- pure helpers


def check_image(image: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Validate an OCR input and return it C-contiguous.

    Args:
        image: ``(H, W, 3)`` uint8 RGB array, H and W >= 1.
        max_pixels: largest accepted ``H * W``.

    Returns:
        The same pixels as a C-contiguous ``(H, W, 3)`` uint8 array.

    Raises:
        InvalidInput: not a numpy array, wrong number of dimensions or channels, not uint8, or
            an empty side.
        PayloadTooLarge: more than ``max_pixels`` pixels.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidInput(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidInput(f"image must be uint8, got {image.dtype}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise InvalidInput(f"image must not be empty, got {image.shape}")
    if height * width > max_pixels:
        raise PayloadTooLarge(f"image has {height * width} pixels, more than {max_pixels}")
    return np.ascontiguousarray(image)


def quad_to_box(points: Any) -> list[int]:
    """``[x0, y0, x1, y1]`` integer pixels enclosing a polygon given as ``(N, 2)`` x, y points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    return [int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))]


def to_result(lines: list[OCRLine]) -> OCRResult:
    """An :class:`OCRResult` of ``lines`` in the order given (each engine returns reading order),
    texts joined by ``"\\n"``."""
    return OCRResult(text="\n".join(line.text for line in lines), lines=lines)


def render_text(text: str, font_size: int = 48, margin: int = 16) -> np.ndarray:
    """Black text on white, drawn with Pillow's default font (one line per ``"\\n"``).

    Returns:
        ``(H, W, 3)`` uint8 RGB array just large enough for the text plus ``margin`` pixels.
    """
    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=font, spacing=font_size // 2)
    canvas = Image.new("RGB", (x1 - x0 + 2 * margin, y1 - y0 + 2 * margin), "white")
    ImageDraw.Draw(canvas).multiline_text(
        (margin - x0, margin - y0), text, fill="black", font=font, spacing=font_size // 2
    )
    return np.asarray(canvas)

