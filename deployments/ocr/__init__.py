"""The OCR family: text lines with confidences and boxes, by Tesseract 5 or RapidOCR (PP-OCRv4, ONNX).

``SPEC`` is what the graph reads (``deployments/spec.py``). Modules: ``config.py``,
``deployment.py`` (the Ray Serve deployment), ``engines.py`` (the engines), ``layout.py`` (reading
order: columns, then lines), ``lines.py`` (the
result schema and input check).
"""

from __future__ import annotations

from pixelfleet.deployments.ocr.config import OCRConfig, RecognizeParams
from pixelfleet.deployments.ocr.deployment import OCR
from pixelfleet.deployments.spec import FamilySpec, Operation

RECOGNIZE = Operation(
    name="ocr",
    params=RecognizeParams,
    output="json",
    summary='Recognise text: {"text", "lines": [{"text", "confidence", "box": [x0, y0, x1, y1]}]} in reading order',
)

SPEC = FamilySpec(
    name="ocr",
    title="OCR (Tesseract 5, RapidOCR)",
    config=OCRConfig,
    deployment=OCR,
    operations=(RECOGNIZE,),
    agreement="cer",
)
