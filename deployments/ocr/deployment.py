"""The OCR deployment: one variant (an engine) per deployment.

It decodes the request's image in the replica, then wires together the engines (``engines.py``:
Tesseract 5, the default, or RapidOCR's PP-OCRv4 on ONNX Runtime) and the text-line schema and
helpers (``lines.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ray import serve

from pixelfleet.deployments import telemetry
from pixelfleet.deployments.ocr.engines import Engine, build_engine, engine_options
from pixelfleet.deployments.ocr.pool import EnginePool
from pixelfleet.deployments.ocr.lines import check_image, render_text, to_result
from pixelfleet.deployments.ocr.config import RecognizeParams
from pixelfleet.deployments.resources import replica_threads
from pixelfleet.deployments.spec import Limits, Result, VariantAddress, VariantDeployment
from pixelfleet.models.errors import PixelfleetError
from pixelfleet.models.images import decode_image, to_array, to_rgb
from pixelfleet.models.metrics import character_error_rate

logger = logging.getLogger("ray.serve")  # Serve's replica log, each line with the request id


@serve.deployment(max_ongoing_requests=4, max_queued_requests=32)
class OCR(VariantDeployment):
    """One OCR variant: a pool of engines built once and warmed up, then one call per image on
    an idle engine (``pool.py``: ``engines`` images at once, one thread each).

    Args:
        engine: ``"rapidocr"`` or ``"tesseract"``.
        options: keyword options of the engine class (serialisable values).
        variant: the variant's name in the config (reported by :meth:`info`).
        limits: :class:`~pixelfleet.deployments.spec.Limits` as a dict (pixels of an input).
        num_threads: RapidOCR's ONNX Runtime threads; default: the replica's CPUs rounded up
            (Ray sets ``OMP_NUM_THREADS=1`` in replicas, so nothing else would use them). It
            overrides ``options["intra_op_num_threads"]``.
        engines: engines in the replica's pool, >= 1, each reading one image at a time on its own
            thread. Default: the replica's CPUs rounded up for Tesseract (one core per engine:
            tesserocr releases the GIL while it recognises), 1 for RapidOCR (ONNX Runtime
            already spreads one image over ``num_threads``).

    Raises:
        ValueError: unknown engine, bad options or ``engines`` < 1 (the replica fails to start).
    """

    def __init__(
        self,
        engine: str,
        options: dict | None = None,
        variant: str = "",
        num_threads: int | None = None,
        limits: dict | None = None,
        engines: int | None = None,
    ) -> None:
        started = time.monotonic()
        self.engine_name, self.variant = engine, variant
        self.limits = Limits.model_validate(limits or {})
        options = dict(options or {})
        if num_threads is not None and engine == "rapidocr":
            options["intra_op_num_threads"] = num_threads
        self.options = engine_options(engine, options, replica_threads())
        if engines is None:
            engines = replica_threads() if engine == "tesseract" else 1
        self.pool: EnginePool[Engine] = EnginePool(lambda: self._warm(build_engine(engine, self.options)), engines)
        telemetry.record_load(variant, time.monotonic() - started)

    async def ocr(self, image: bytes | np.ndarray, params: dict, route: list[VariantAddress]) -> Result:
        """Recognise the text of an encoded image, or of ``(H, W, 3)`` uint8 RGB pixels:
        ``OCRResult(...).model_dump()`` as JSON.

        Raises:
            InvalidInput, UnsupportedMediaType, PayloadTooLarge: a bad image.
            PixelfleetError: the engine failed.
        """
        RecognizeParams.model_validate(params)
        if isinstance(image, (bytes, bytearray)):
            with telemetry.span("decode"):
                image = await asyncio.to_thread(lambda: to_rgb(to_array(decode_image(bytes(image), self.limits.max_pixels))))
        with telemetry.span("inference", engine=self.engine_name):  # the engine thread runs in this request's context (logs, spans)
            result = await self.pool.run(lambda engine: self.recognize(image, engine))
        return Result(result, "application/json")

    def compare(self, operation: str, primary: Result, own: Result, params: dict) -> float | None:
        """Character error rate of this variant's text against the primary's."""
        return character_error_rate(own.content["text"], primary.content["text"])

    @staticmethod
    def _warm(engine: Engine) -> Engine:
        engine.recognize(render_text("warm up 0123", font_size=32))
        return engine

    def recognize(self, image: np.ndarray, engine: Engine | None = None) -> dict:
        """``OCRResult(...).model_dump()`` of an ``(H, W, 3)`` uint8 RGB image, read by
        ``engine`` (one of the pool's; by default an idle one, taken in this thread).

        Raises:
            InvalidInput: wrong type, shape or dtype. PayloadTooLarge: over
                :data:`deployments.ocr_lines.MAX_PIXELS`.
            PixelfleetError: the engine failed (logged; the replica keeps serving).
        """
        image = check_image(image, self.limits.max_pixels)
        try:
            lines = engine.recognize(image) if engine is not None else self.pool.call(lambda idle: idle.recognize(image))
        except PixelfleetError:
            raise
        except Exception as error:
            logger.exception("OCR engine %s failed on an image of shape %s", self.engine_name, image.shape)
            raise PixelfleetError(f"OCR failed: {type(error).__name__}") from error
        return to_result(lines).model_dump()

    def info(self) -> dict:
        """Variant, engine name, effective options, engines in the pool and weight source, for
        ``GET /v1/models``."""
        source = self.pool.engines[0].source()
        return {"variant": self.variant, "engine": self.engine_name, "options": self.options, "engines": self.pool.size, "source": source}

    def ready(self) -> bool:
        """True: the constructor only returns once the engine is loaded and warmed up."""
        return True
