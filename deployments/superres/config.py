"""The super-resolution family's config (a variant: model folder, tiles, backend) and request options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pixelfleet.deployments.spec import FamilyConfig, Strict
from pixelfleet.models.images import FAST_PNG_LEVEL, OUTPUT_MEDIA_TYPES
from pixelfleet.models.modelcard import resolve_model_folder

OutputFormat = Literal["png", "jpeg", "webp", "tiff", "avif"]
assert set(OutputFormat.__args__) == set(OUTPUT_MEDIA_TYPES)


class SuperResVariant(Strict):
    """One super-resolution variant: a model folder and how its replica runs it."""

    weights: str = Field(description="model folder; 'builtin:NAME' is a folder shipped in models/weights")
    tile_size: int = Field(128, ge=16, le=1024, description="LR tile side, pixels")
    overlap: int = Field(32, ge=0, description="overlap of adjacent tiles, LR pixels")
    max_batch_size: int = Field(16, ge=1, description="tiles per forward pass (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="how long a batch waits to fill, seconds")
    adaptive_batch_wait: bool = Field(
        False,
        description="wait batch_wait_timeout_s for a batch to fill only while another request is in the replica; "
        "a lone request's tiles go at once (BENCHMARKS.md: tile batches)",
    )
    concurrent_batches: int = Field(
        1, ge=1, le=16,
        description="forward passes at once, each in its own thread (with num_threads: 1 on a CPU, one per core)",
    )  # fmt: skip
    backend: Literal["torch", "onnx"] = Field("torch", description="PyTorch, or ONNX Runtime on an exported model")
    quantize: Literal["none", "int8"] = Field("none", description="int8 dynamic quantization (onnx backend only)")
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="autocast dtype; float32 is exact and portable (the default); auto: float16 on CUDA, bfloat16 "
        "on CPUs with native bf16, else float32",
    )
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: the replica's CPUs")
    png_level: int = Field(
        FAST_PNG_LEVEL, ge=0, le=9,
        description="PNG zlib level of the output unless a request sets one: 1 encodes a 2048x2048 image 4x faster than 6",
    )  # fmt: skip
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
        """The model folder (``builtin:NAME`` resolves into the package)."""
        return resolve_model_folder(self.weights)


class SuperResConfig(FamilyConfig):
    """``families.superres``: the variants (one deployment each) and the traffic between them."""

    kind: Literal["superres"] = "superres"
    variants: dict[str, SuperResVariant]


class UpscaleParams(BaseModel):
    """Options of an upscale (query parameters, form fields, OIP parameters, handle keywords)."""

    model_config = ConfigDict(extra="forbid")

    scale: int | None = Field(
        None, ge=2, le=8,
        description="scale factor; default: the chosen variant's. A scale no single variant has is served by chaining "
        "variants (e.g. 8 = 2 x 4)",
    )  # fmt: skip
    format: OutputFormat = Field("png", description="output image format; EXIF and ICC profile are carried over")
    png_level: int | None = Field(
        None, ge=0, le=9,
        description="PNG zlib level, 0-9: 1 encodes fast, 9 smallest; the pixels are the same (default: the variant's png_level)",
    )  # fmt: skip
