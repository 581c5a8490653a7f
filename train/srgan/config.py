"""The configuration of one super-resolution training run: a YAML file validated by pydantic.

A run is described by one YAML file (``train/configs/*.yaml``); command-line flags override its
fields (``--set data.hr_patch=128`` for any field, or the named flags of ``pixelfleet train
srgan``). Unknown fields and bad values are errors that name the field.

Phases, after Ledig et al. (2017, arXiv:1609.04802): ``psnr`` trains the generator alone with a
pixel loss (SRResNet); ``gan`` starts from a ``psnr`` model (``init_from``) and trains it against
a discriminator with content + adversarial loss (SRGAN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pixelfleet.models.modelcard import SRArchitecture


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Image folders and how patches are cut from them (``train/sr_data.py``)."""

    train: list[Path] = Field(min_length=1, description="folders of HR training images")
    val: Path = Field(description="folder of HR validation images (whole images, rank 0)")
    hr_patch: int = Field(96, ge=8, description="HR patch side in pixels; a multiple of the scale")
    patches_per_image: int = Field(16, ge=1, description="random patches cut from each image per epoch")
    hr_rescale: tuple[float, float] = Field(
        (1.0, 1.0),
        description="scale augmentation (VDSR, LapSRN): each epoch shrinks each HR image by a factor drawn "
        "uniformly from [low, high], 0 < low <= high <= 1, before patches are cut; (1, 1) is off",
    )
    shuffle_buffer: int = Field(1024, ge=0, description="patches in each worker's local shuffle buffer")

    @field_validator("hr_rescale")
    @classmethod
    def _rescale_range(cls, rescale: tuple[float, float]) -> tuple[float, float]:
        low, high = rescale
        if not 0 < low <= high <= 1:
            raise ValueError(f"hr_rescale must be [low, high] with 0 < low <= high <= 1, got {list(rescale)}")
        return rescale


class OptimConfig(_Strict):
    """Steps, batch and the Adam optimizers with cosine decay."""

    steps: int = Field(6000, ge=1, description="optimizer steps of this run")
    batch_size: int = Field(32, ge=1, description="patches per step across all workers")
    learning_rate: float = Field(1e-3, gt=0, description="generator Adam learning rate at step 0")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine decay ends at learning_rate * this")
    pixel_loss: Literal["l1", "mse"] = "l1"
    luma_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the pixel loss taken on BT.601 luma (what PSNR-Y measures) instead of RGB: "
        "loss = (1 - w) * loss(RGB) + w * loss(luma); 0 is RGB only, 1 leaves colour unsupervised",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the generator weights, updated every step with this "
        "decay (e.g. 0.999); validation, checkpoints and the model folder then hold the average",
    )


class GanConfig(_Strict):
    """The adversarial phase: discriminator and the weights of the generator's loss terms.

    Generator loss = ``pixel_weight`` * pixel loss + ``perceptual_weight`` * VGG19 feature loss
    (only with ``vgg19_weights``) + ``adversarial_weight`` * non-saturating GAN loss.
    """

    discriminator_channels: int = Field(32, ge=8, le=128, description="channels of the first discriminator block")
    discriminator_lr: float = Field(1e-4, gt=0)
    adversarial_weight: float = Field(1e-3, ge=0, description="SRGAN uses 1e-3")
    pixel_weight: float = Field(1.0, ge=0)
    perceptual_weight: float = Field(1.0, ge=0)
    vgg19_weights: Path | None = Field(
        None,
        description="local torchvision VGG19 state dict (vgg19-dcbb9e9d.pth); without it there is no perceptual "
        "loss (nothing is downloaded)",
    )
    vgg_layer: Literal["relu2_2", "relu3_4", "relu4_4", "relu5_4"] = Field(
        "relu5_4", description="feature layer of the perceptual loss; SRGAN's VGG54 is relu5_4"
    )


class ScalingSection(_Strict):
    """Ray Train's ``ScalingConfig``: DDP workers, GPUs, CPUs per worker."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(
        None,
        gt=0,
        description="CPUs reserved per worker; null: 1, or less where the cluster would otherwise keep no CPU "
        "for Ray Data's patch tasks (2 workers on 2 CPUs get 0.75 each)",
    )
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker (default: its CPUs)")


class EarlyStopping(_Strict):
    """Stop when validation PSNR-Y has not improved by ``min_delta`` dB for ``patience`` checks."""

    patience: int | None = Field(None, ge=1, description="validations without improvement; null: never stop early")
    min_delta: float = Field(0.0, ge=0, description="dB an improvement must reach")


class SRTrainConfig(_Strict):
    """One training run. The YAML file holds these fields (nested sections as mappings)."""

    name: str = Field("srresnet-x4", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="model and run name")
    output: Path = Field(description="model folder to write (model.safetensors + model.json)")
    phase: Literal["psnr", "gan"] = "psnr"
    init_from: Path | None = Field(None, description="model folder whose generator weights start this run")
    architecture: SRArchitecture = SRArchitecture()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    gan: GanConfig = GanConfig()
    scaling: ScalingSection = ScalingSection()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast in training steps: auto = fp16 with a gradient scaler on CUDA, bf16 on CPUs with "
        "native bf16, else fp32; validation always runs in fp32",
    )
    checkpoint_every: int = Field(1000, ge=1, description="steps between validation + checkpoint")
    early_stopping: EarlyStopping = EarlyStopping()
    storage_path: Path = Field(Path("runs"), description="Ray Train storage; the run lives in <storage_path>/<name>")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "SRTrainConfig":
        scale = self.architecture.scale
        if self.data.hr_patch % scale:
            raise ValueError(f"data.hr_patch {self.data.hr_patch} must be a multiple of the scale {scale}")
        if self.optim.batch_size % self.scaling.num_workers:
            raise ValueError(f"optim.batch_size {self.optim.batch_size} must divide among {self.scaling.num_workers} workers")
        if self.phase == "gan" and self.init_from is None:
            raise ValueError("phase gan starts from a trained generator: set init_from to a psnr model folder")
        return self

    @property
    def run_dir(self) -> Path:
        """Where Ray Train keeps this run's checkpoints, TensorBoard events and config."""
        return self.storage_path / self.name

    def resolved(self) -> "SRTrainConfig":
        """A copy with absolute paths: workers do not share the driver's working directory."""
        update: dict[str, Any] = {
            "output": self.output.resolve(),
            "storage_path": self.storage_path.resolve(),
            "data": self.data.model_copy(update={"train": [p.resolve() for p in self.data.train], "val": self.data.val.resolve()}),
        }
        if self.init_from is not None:
            update["init_from"] = self.init_from.resolve()
        if self.gan.vgg19_weights is not None:
            update["gan"] = self.gan.model_copy(update={"vgg19_weights": self.gan.vgg19_weights.resolve()})
        return self.model_copy(update=update)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted`` = ``"a.b"``, creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted}: {key} is not a section")
        tree = node
    tree[leaf] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"optim.steps=100"`` -> ``("optim.steps", 100)``: the value is read as YAML.

    Raises:
        ValueError: no ``=`` in ``text``.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(raw)


def load_config(path: Path | None, overrides: dict[str, Any]) -> SRTrainConfig:
    """Read a run's YAML file (or start empty), apply dotted ``overrides``, validate.

    Relative paths inside the file are taken as they are, from the current directory (run from
    the project's root, as the shipped configs expect).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the YAML is not a mapping.
        pydantic.ValidationError: a field is unknown, missing or out of range.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: a run config is a YAML mapping")
        tree = loaded or {}
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value)
    return SRTrainConfig.model_validate(tree)
