"""The OCR family's config (a variant: an engine and its options) and request options."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelfleet.deployments.spec import FamilyConfig, Strict


class OCRVariant(Strict):
    """One OCR variant: an engine and its options (see ``engines.py``)."""

    engine: Literal["rapidocr", "tesseract"]
    options: dict = Field(default_factory=dict, description="keyword options of the engine class")
    num_threads: int | None = Field(None, ge=1, description="RapidOCR's ONNX Runtime threads; default: the replica's CPUs")
    engines: int | None = Field(
        None, ge=1, description="engines in each replica, reading one image each at once; default: the replica's CPUs for Tesseract, 1 for RapidOCR"
    )


class OCRConfig(FamilyConfig):
    """``families.ocr``: the variants (one deployment each) and the traffic between them."""

    kind: Literal["ocr"] = "ocr"
    variants: dict[str, OCRVariant]


class RecognizeParams(BaseModel):
    """Options of an OCR request (none beyond the variant choice today)."""

    model_config = ConfigDict(extra="forbid")
