"""The application's configuration: the ``args`` of the pixelfleet app in a Serve config file.

``serve/configs/local.yaml`` and ``gpu.yaml`` are ordinary Ray Serve config files (what
``serve run``, ``serve deploy`` and KubeRay's ``serveConfigV2`` take); their ``args`` validate
against :class:`AppConfig`. Per-deployment resources (``num_cpus``, ``num_gpus``, replicas,
``max_ongoing_requests``) stay in the Serve config's ``deployments`` list, where Ray reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILTIN_WEIGHTS = Path(__file__).resolve().parent.parent / "deployments" / "weights"
BUILTIN_PREFIX = "builtin:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Strict):
    """What one request may carry; over either limit answers 413."""

    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="request body, bytes")
    max_pixels: int = Field(16_000_000, gt=0, description="decoded image width x height, pixels")
    max_output_pixels: int = Field(64_000_000, gt=0, description="super-resolution output width x height, pixels")


class SuperResVariant(_Strict):
    """One super-resolution variant: a model folder and how its replica runs it."""

    weights: str = Field(description="model folder; 'builtin:NAME' is a folder shipped in deployments/weights")
    tile_size: int = Field(128, ge=16, le=1024, description="LR tile side, pixels")
    overlap: int = Field(32, ge=0, description="overlap of adjacent tiles, LR pixels")
    max_batch_size: int = Field(16, ge=1, description="tiles per forward pass (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="how long a batch waits to fill, seconds")
    backend: Literal["torch", "onnx"] = Field("torch", description="PyTorch, or ONNX Runtime on an exported model")
    quantize: Literal["none", "int8"] = Field("none", description="int8 dynamic quantization (onnx backend only)")
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="autocast dtype; float32 is exact and portable (the default); auto: float16 on CUDA, bfloat16 "
        "on CPUs with native bf16, else float32",
    )
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: the replica's CPUs")
    ensemble: bool = Field(
        False,
        description="x8 self-ensemble (EDSR+): each tile averaged over its flips and rotations; 8x the compute, "
        "+0.07 dB PSNR-Y on the shipped x4 model",
    )

    @model_validator(mode="after")
    def _check(self) -> "SuperResVariant":
        if self.overlap >= self.tile_size:
            raise ValueError(f"overlap {self.overlap} must be smaller than tile_size {self.tile_size}")
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError("quantize needs backend onnx")
        if self.precision not in ("float32", "auto") and self.backend != "torch":
            raise ValueError("precision applies to the torch backend; the onnx backend runs the exported float32 model")
        if self.precision == "float16" and self.device != "cuda":
            raise ValueError("precision float16 needs device cuda; use bfloat16 or float32 on CPU")
        return self

    def weights_path(self) -> Path:
        """The model folder as a path (builtin names resolve into the package)."""
        if self.weights.startswith(BUILTIN_PREFIX):
            return BUILTIN_WEIGHTS / self.weights.removeprefix(BUILTIN_PREFIX)
        return Path(self.weights).expanduser()


class OCRVariant(_Strict):
    """One OCR variant: an engine and its options (see ``deployments/ocr_engines.py``)."""

    engine: Literal["rapidocr", "tesseract"]
    options: dict = Field(default_factory=dict)
    num_threads: int | None = Field(None, ge=1)


V = TypeVar("V", SuperResVariant, OCRVariant)


class Family(_Strict, Generic[V]):
    """The variants of one model family and the one that requests get by default."""

    default: str
    variants: dict[str, V]

    @model_validator(mode="after")
    def _default_exists(self) -> "Family":
        if self.default not in self.variants:
            raise ValueError(f"default {self.default!r} is not among the variants {sorted(self.variants)}")
        for name in self.variants:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"variant name {name!r} may hold only letters, digits, '-' and '_'")
        return self


class AppConfig(_Strict):
    """``args`` of the pixelfleet application."""

    limits: Limits = Limits()
    superres: Family[SuperResVariant]
    ocr: Family[OCRVariant]
