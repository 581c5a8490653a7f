"""The configuration of one LoRA training run: a YAML file validated by pydantic.

As for ``pixelfleet train srgan``, a run is one YAML file (``train/configs/lora.yaml``) and
``--set key=value`` overrides any field (``--set optim.steps=200``); unknown fields and bad values
are errors that name the field. The recipe is diffusers' ``train_text_to_image_lora.py``: LoRA
(Hu et al. 2021, arXiv:2106.09685) on the UNet's attention projections, optionally on the text
encoder's, trained with the noise-prediction MSE on VAE latents (Ho et al. 2020, arXiv:2006.11239).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pixelfleet.train.rundir import changed_fields
from pixelfleet.train.srgan.config import ScalingSection, set_dotted

# the attention projections of diffusers' UNet (Attention: to_q, to_k, to_v, to_out.0) and of the
# CLIP text encoder (CLIPAttention), as diffusers' LoRA training scripts target them
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# diffusers.optimization.get_scheduler's names
LR_SCHEDULERS = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptionedData(_Strict):
    """Folders of images, each with its caption in a ``.txt`` file of the same stem."""

    train: list[Path] = Field(min_length=1, description="folders of images; a.png's caption is a.txt beside it")
    resolution: int = Field(512, ge=8, description="side in pixels of the square the images are resized and cropped to; a multiple of 8")
    center_crop: bool = Field(True, description="crop the centre after resizing the short side; false: the top-left corner")
    random_flip: bool = Field(True, description="flip each image left-right with probability 1/2 each time it is drawn")

    @model_validator(mode="after")
    def _multiple_of_8(self) -> "CaptionedData":
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} must be a multiple of 8 (the VAE and UNet downsample by powers of 2)")
        return self


class LoraSection(_Strict):
    """The adapter: rank, scaling and the modules it adapts (peft's ``LoraConfig``)."""

    rank: int = Field(4, ge=1, le=1024, description="r: inner dimension of each low-rank update")
    alpha: float | None = Field(None, gt=0, description="lora_alpha; the update is scaled by alpha / rank; null: alpha = rank (scale 1)")
    dropout: float = Field(0.0, ge=0, lt=1, description="lora_dropout on the adapter's input")
    target_modules: list[str] = Field(default_factory=lambda: list(UNET_TARGETS), min_length=1, description="UNet modules to adapt")
    text_encoder: bool = Field(False, description="also adapt the text encoder's attention projections")
    text_encoder_target_modules: list[str] = Field(default_factory=lambda: list(TEXT_ENCODER_TARGETS), min_length=1)

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)


class LoraOptim(_Strict):
    """Steps, batch, AdamW and the learning-rate schedule (as diffusers' script)."""

    steps: int = Field(1000, ge=1, description="optimizer steps of this run")
    batch_size: int = Field(1, ge=1, description="images per step across all workers")
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: LR_SCHEDULERS = "constant"
    warmup_steps: int = Field(0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the adapter's gradient norm; null: no clipping")
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting (Hang et al. 2023, arXiv:2303.09556), e.g. 5; null: plain MSE")
    noise_offset: float = Field(0.0, ge=0, description="offset noise (crosslabs.org/blog/diffusion-with-offset-noise); 0: off")


class Validation(_Strict):
    """Images made with fixed prompts and seeds while training (PNG files, rank 0)."""

    prompts: list[str] = Field(default_factory=list, description="one image per prompt and seed; empty: no validation")
    seeds: list[int] = Field(default_factory=lambda: [0])
    every: int | None = Field(None, ge=1, description="steps between validations; null: at each checkpoint")
    num_inference_steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0)


class LoraTrainConfig(_Strict):
    """One LoRA training run. The YAML file holds these fields (nested sections as mappings)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="adapter id (the served name), run name")
    base_model: Path = Field(description="a Stable Diffusion 1.x/2.x diffusers folder (model_index.json + components)")
    output: Path = Field(description="folder the adapter goes into: <name>.safetensors + <name>.json (e.g. a served adapters folder)")
    data: CaptionedData
    lora: LoraSection = LoraSection()
    optim: LoraOptim = LoraOptim()
    validation: Validation = Validation()
    scaling: ScalingSection = ScalingSection(num_workers=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="frozen weights in this dtype and autocast of the forward passes; the adapter's weights stay float32. "
        "auto = fp16 (with a gradient scaler) on CUDA, bf16 on CPUs with native bf16, else fp32",
    )
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints (and validations unless validation.every)")
    storage_path: Path = Field(Path("runs"), description="Ray Train storage; the run lives in <storage_path>/<name>")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "LoraTrainConfig":
        if self.optim.batch_size % self.scaling.num_workers:
            raise ValueError(f"optim.batch_size {self.optim.batch_size} must divide among {self.scaling.num_workers} workers")
        return self

    @property
    def run_dir(self) -> Path:
        """Where Ray Train keeps this run's checkpoints; TensorBoard events and validation images too."""
        return self.storage_path / self.name

    @property
    def validation_every(self) -> int:
        return self.validation.every or self.checkpoint_every

    def resolved(self) -> "LoraTrainConfig":
        """A copy with absolute paths: workers do not share the driver's working directory."""
        return self.model_copy(
            update={
                "base_model": self.base_model.resolve(),
                "output": self.output.resolve(),
                "storage_path": self.storage_path.resolve(),
                "data": self.data.model_copy(update={"train": [p.resolve() for p in self.data.train]}),
            }
        )


# Fields that must not change when a run resumes: its state (adapter, optimizer, schedule, data order) depends on them.
RESUME_FIXED = ("base_model", "lora", "optim", "data", "precision", "scaling.num_workers", "seed")


def changed_training_fields(before: LoraTrainConfig, after: LoraTrainConfig) -> list[str]:
    """The :data:`RESUME_FIXED` fields whose values differ between two configs of one run."""
    return changed_fields(before, after, RESUME_FIXED)


def load_config(path: Path, overrides: dict[str, Any]) -> LoraTrainConfig:
    """Read a run's YAML file, apply dotted ``overrides`` (``{"optim.steps": 10}``), validate.

    Relative paths are taken from the current directory (run from the project's root).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the YAML is not a mapping.
        pydantic.ValidationError: a field is unknown, missing or out of range.
    """
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: a run config is a YAML mapping")
    tree: dict[str, Any] = loaded or {}
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value)
    return LoraTrainConfig.model_validate(tree)
