"""The OCR family: text lines with confidences and boxes, by Tesseract 5 or RapidOCR (PP-OCRv4, ONNX).

``SPEC`` is what the graph reads (``deployments/spec.py``). Modules: ``config.py``,
``deployment.py`` (the Ray Serve deployment), ``engines.py`` (the engines), ``layout.py`` (reading
order: columns, then lines), ``lines.py`` (the
result schema and input check).
"""

from __future__ import annotations

from pixelfleet.deployments.ocr.config import OCRConfig, OCRVariant, RecognizeParams
from pixelfleet.deployments.spec import FamilySpec, Operation

RECOGNIZE = Operation(
    name="ocr",
    params=RecognizeParams,
    output="json",
    summary='Recognise text: {"text", "lines": [{"text", "confidence", "box": [x0, y0, x1, y1]}]} in reading order',
)


def describe(variant: str, config: OCRVariant) -> dict:
    """A variant's card from its config alone, without building its engine: ``variant``,
    ``engine``, the configured ``options`` and ``engines`` (``None``: the replica's default)
    (``OCR.info()`` adds the effective options, the pool's size and the engine's weight source
    once a replica runs)."""
    return {"variant": variant, "engine": config.engine, "options": config.options, "engines": config.engines}


SPEC = FamilySpec(
    name="ocr",
    title="OCR (Tesseract 5, RapidOCR)",
    config=OCRConfig,
    deployment="pixelfleet.deployments.ocr.deployment:OCR",  # imported where bound: ONNX Runtime stays out of the ingress
    operations=(RECOGNIZE,),
    agreement="cer",
    describe=describe,
)
