"""The request pipeline of the pixelfleet replicas, without Ray: what `bench/serving.py` runs
in-process and behind the plain FastAPI and BentoML servers (bench-only, no pixelfleet code
depends on it).

Super-resolution: the replica's :class:`~pixelfleet.deployments.superres.upscaler.Upscaler`
with the variant's settings from ``serve/configs/local.yaml`` (``srresnet-x4``, precision
``auto``, 192 px tiles, 32 px overlap), the same decode (``decode_image`` + ``to_array`` +
``image_metadata``) and the same PNG encode (``encode_image`` at the replica's default zlib level,
:data:`~pixelfleet.models.images.FAST_PNG_LEVEL`). OCR: the ``tesseract`` engine of
``deployments/ocr`` with the replica's options, the same decode (``to_rgb``) and the same result
(``to_result(...).model_dump()``).

``workers`` sets how the pipeline shares the 2 cores among concurrent calls:

- super-resolution, ``workers=1``: one model call at a time with ``torch`` on ``threads`` threads
  (the replica's layout: one upscaler, 2 threads); decoding and encoding of other requests run
  beside it. ``workers=2``: two model calls at once, each on ``threads // 2`` torch threads.
- OCR: ``workers`` Tesseract engines (one engine is not thread-safe; Tesseract releases the GIL),
  each call takes a free one.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from pixelfleet.deployments.ocr.engines import build_engine, engine_options
from pixelfleet.deployments.ocr.lines import check_image, to_result
from pixelfleet.deployments.superres.upscaler import Upscaler
from pixelfleet.models.images import (
    FAST_PNG_LEVEL,
    decode_image,
    encode_image,
    image_metadata,
    to_array,
    to_rgb,
)
from pixelfleet.models.modelcard import resolve_model_folder

#: The ``srresnet-x4`` variant of ``serve/configs/local.yaml``.
SR_WEIGHTS, SR_TILE, SR_OVERLAP, SR_PRECISION = "builtin:srresnet-x4", 192, 32, "auto"
#: Pixels a request may decode to (``limits.max_pixels`` of ``local.yaml``).
MAX_PIXELS = 16_000_000


class Pipeline:
    """Decode, model, encode, as a replica does it; thread-safe.

    Args:
        sr_workers: concurrent super-resolution model calls (1 or 2), see the module docstring.
        ocr_workers: Tesseract engines.
        threads: CPU cores to use (torch threads in total).
        families: which of ``"superres"``, ``"ocr"`` to load.
    """

    def __init__(self, sr_workers: int = 1, ocr_workers: int = 2, threads: int = 2, families: tuple[str, ...] = ("superres", "ocr")) -> None:
        self.sr_workers = sr_workers
        torch_threads = max(1, threads // sr_workers)
        self.upscaler = None
        if "superres" in families:
            folder = Path(resolve_model_folder(SR_WEIGHTS))
            self.upscaler = Upscaler(folder, precision=SR_PRECISION, num_threads=torch_threads, weights_ref=SR_WEIGHTS)
            self.upscaler.forward(np.zeros((1, 3, SR_TILE, SR_TILE), dtype=np.float32))  # warm-up, as the replica
        torch.set_num_threads(torch_threads)
        self._model_slots = threading.BoundedSemaphore(sr_workers)
        self._engines: queue.Queue = queue.Queue()
        if "ocr" in families:
            for _ in range(ocr_workers):
                self._engines.put(build_engine("tesseract", engine_options("tesseract", {}, 1)))

    def upscale(self, data: bytes, png_level: int = FAST_PNG_LEVEL) -> bytes:
        """An encoded image (PNG, JPEG, ...) -> the x4 upscale as PNG bytes at zlib ``png_level``.

        Raises:
            InvalidInput, UnsupportedMediaType, PayloadTooLarge: a bad image (``models/images.py``).
        """
        image = decode_image(data, MAX_PIXELS)
        pixels, metadata = to_array(image), image_metadata(image)
        with self._model_slots:
            upscaled = self.upscaler.upscale(pixels, SR_TILE, SR_OVERLAP)
        return encode_image(upscaled, "png", metadata, png_level)

    def upscale_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The model alone: ``(H, W, 3)`` uint8 -> ``(4H, 4W, 3)`` uint8 (no decode, no encode)."""
        with self._model_slots:
            return self.upscaler.upscale(pixels, SR_TILE, SR_OVERLAP)

    @contextmanager
    def _engine(self):
        engine = self._engines.get()
        try:
            yield engine
        finally:
            self._engines.put(engine)

    def ocr(self, data: bytes) -> dict:
        """An encoded image -> ``OCRResult(...).model_dump()`` (text, lines, boxes), as the replica answers.

        Raises:
            InvalidInput, UnsupportedMediaType, PayloadTooLarge: a bad image.
        """
        pixels = check_image(to_rgb(to_array(decode_image(data, MAX_PIXELS))), MAX_PIXELS)
        with self._engine() as engine:
            lines = engine.recognize(pixels)
        return to_result(lines).model_dump()
