"""Model cards: the ``model.json`` beside every model's weights, as pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


#: Model folders shipped in the package, named in configs as ``builtin:NAME``.
BUILTIN_WEIGHTS = Path(__file__).resolve().parent / "weights"
BUILTIN_PREFIX = "builtin:"


def resolve_model_folder(ref: str) -> Path:
    """The folder a config's ``weights`` names: ``builtin:NAME`` (shipped), else a local path."""
    if ref.startswith(BUILTIN_PREFIX):
        return BUILTIN_WEIGHTS / ref.removeprefix(BUILTIN_PREFIX)
    return Path(ref).expanduser()


class SRArchitecture(BaseModel):
    """Hyper-parameters that rebuild a super-resolution network before its weights load."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["SRResNet"] = "SRResNet"
    scale: int = Field(4, description="scale factor: output pixels per input pixel along each axis")
    channels: int = Field(48, ge=8, le=256)
    blocks: int = Field(8, ge=1, le=64)
    res_scale: float = Field(1.0, gt=0, le=1)
    upsampler: Literal["progressive", "single"] = Field(
        "progressive",
        description="progressive: a conv + x2 pixel shuffle per octave, at growing resolution (SRGAN); "
        "single: one conv to 3*scale^2 channels at LR resolution + one pixel shuffle (ESPCN), several times cheaper",
    )


class SRMetrics(BaseModel):
    """Validation figures, PSNR in dB and SSIM in [0, 1], on the Y channel (ITU-R BT.601)."""

    dataset: str = Field(description="validation folder, as given to the training command")
    images: int
    border: int = Field(description="pixels cropped from each border before measuring")
    psnr_y: float
    ssim_y: float
    bicubic_psnr_y: float
    bicubic_ssim_y: float


class TrainingRecord(BaseModel):
    """How the weights were produced, so that anyone can produce them again."""

    command: str = Field(description="the exact command line, run from the project's root")
    commit: str | None = Field(None, description="git commit of the code that trained")
    phase: Literal["psnr", "gan"] = "psnr"
    init_from: str | None = Field(None, description="model folder the generator started from")
    data: list[str]
    steps: int = Field(description="optimizer steps done (fewer than configured after early stopping)")
    checkpoint_step: int | None = Field(None, description="the step these weights are from (psnr runs: best validation)")
    batch_size: int = Field(description="patches per step across all workers")
    hr_patch: int = Field(description="HR patch side in pixels")
    workers: int
    precision: str
    wall_time_s: float = Field(description="seconds from the command's start to the model folder (this invocation)")
    train_seconds: float | None = Field(None, description="seconds in training steps, summed over resumed runs")
    resumed: bool = False
    stopped_early: bool = False


class ModelCard(BaseModel):
    """The ``model.json`` of a super-resolution model folder."""

    name: str
    family: Literal["superres"] = "superres"
    architecture: SRArchitecture
    weights: str = "model.safetensors"
    training: TrainingRecord | None = None
    metrics: SRMetrics | None = None

    @property
    def scale(self) -> int:
        """The scale factor (output pixels per input pixel along each axis)."""
        return self.architecture.scale
