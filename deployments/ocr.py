"""OCR family: text lines with confidences and boxes from an RGB image, on ONNX Runtime or Tesseract.

The Ray Serve deployment ``OCR``, which only wires together the engines
(``deployments/ocr_engines.py``: RapidOCR's PP-OCRv4 in ONNX, the default, or Tesseract 5) and the
text-line schema and helpers (``deployments/ocr_lines.py``).
"""

from __future__ import annotations

import logging

import numpy as np

from ray import serve

from deployments.ocr_engines import build_engine, engine_options
from deployments.ocr_lines import check_image, render_text, to_result
from deployments.runtime import replica_threads
from serve.errors import PixelfleetError

logger = logging.getLogger(__name__)


@serve.deployment(max_ongoing_requests=4, max_queued_requests=32)
class OCR:
    """One OCR variant: an engine built once, warmed up, then one call per image.

    Args:
        engine: ``"rapidocr"`` or ``"tesseract"``.
        options: keyword options of the engine class (serialisable values).
        variant: the variant's name in the config (reported by :meth:`info`).
        num_threads: RapidOCR's ONNX Runtime threads; default: the replica's CPUs rounded up
            (Ray sets ``OMP_NUM_THREADS=1`` in replicas, so nothing else would use them). It
            overrides ``options["intra_op_num_threads"]``.

    Raises:
        ValueError: unknown engine or bad options (the replica fails to start).
    """

    def __init__(
        self, engine: str, options: dict | None = None, variant: str = "", num_threads: int | None = None
    ) -> None:
        self.engine_name, self.variant = engine, variant
        options = dict(options or {})
        if num_threads is not None and engine == "rapidocr":
            options["intra_op_num_threads"] = num_threads
        self.options = engine_options(engine, options, replica_threads())
        self.engine = build_engine(engine, self.options)
        self.engine.recognize(render_text("warm up 0123", font_size=32))

    def recognize(self, image: np.ndarray) -> dict:
        """``OCRResult(...).model_dump()`` of an ``(H, W, 3)`` uint8 RGB image.

        Raises:
            InvalidInput: wrong type, shape or dtype. PayloadTooLarge: over
                :data:`deployments.ocr_lines.MAX_PIXELS`.
            PixelfleetError: the engine failed (logged; the replica keeps serving).
        """
        image = check_image(image)
        try:
            lines = self.engine.recognize(image)
        except PixelfleetError:
            raise
        except Exception as error:
            logger.exception("OCR engine %s failed on an image of shape %s", self.engine_name, image.shape)
            raise PixelfleetError(f"OCR failed: {type(error).__name__}") from error
        return to_result(lines).model_dump()

    def info(self) -> dict:
        """Variant, engine name, effective options and weight source, for ``GET /v1/models``."""
        return {"variant": self.variant, "engine": self.engine_name, "options": self.options, "source": self.engine.source()}

    def ready(self) -> bool:
        """True: the constructor only returns once the engine is loaded and warmed up."""
        return True
