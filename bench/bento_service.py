"""The pixelfleet pipeline as a BentoML service: the BentoML point of `bench/serving.py`
(bench-only; runs in the bench's own virtualenv ``.venv-bentoml`` (repository root)).

One BentoML worker (``workers=1``); sync APIs, run by BentoML in its thread pool (``threads=16``),
each through :class:`serving_pipeline.Pipeline` (the replica's upscaler and Tesseract engine, same
decode and PNG level; one model call at a time on 2 torch threads, 2 Tesseract engines). Root
inputs (BentoML's raw-body inputs): the image is the request body. Run by the bench as::

    bentoml serve bento_service:PipelineService --working-dir bench --port PORT
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from serving_pipeline import Pipeline


@bentoml.service(workers=1, threads=16, traffic={"timeout": 600, "max_concurrency": 256})
class PipelineService:
    """``POST /upscale`` (raw image -> x4 PNG) and ``POST /ocr`` (raw image -> OCR JSON)."""

    def __init__(self) -> None:
        self.pipeline = Pipeline(sr_workers=1, ocr_workers=2)

    @bentoml.api
    def upscale(self, image: Path, /) -> Annotated[bytes, ContentType("image/png")]:
        """The request body (an image file) -> its x4 upscale, PNG bytes."""
        return self.pipeline.upscale(image.read_bytes())

    @bentoml.api
    def ocr(self, image: Path, /) -> dict:
        """The request body (an image file) -> ``{"text", "lines"}``."""
        return self.pipeline.ocr(image.read_bytes())
