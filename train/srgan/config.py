"""The configuration of one super-resolution training run, validated by pydantic."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.modelcard import SRArchitecture


class SRTrainConfig(BaseModel):
    """Everything a run needs; ``pixelfleet train srgan --help`` exposes each field as a flag."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("srresnet-x4", description="model name written to model.json")
    architecture: SRArchitecture = SRArchitecture()
    train_data: list[Path] = Field(description="folders of HR training images")
    val_data: Path = Field(description="folder of HR validation images")
    output: Path = Field(description="model folder to write (model.safetensors + model.json)")
    steps: int = Field(6000, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="patches per step across all workers")
    hr_patch: int = Field(96, ge=8, description="HR patch side in pixels")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate at the start; cosine decay to 1%")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP)")
    use_gpu: bool = False
    bf16: bool = Field(True, description="bf16 autocast for training steps on CPU (validation stays fp32)")
    val_every: int = Field(1000, ge=1, description="steps between validations (rank 0)")
    seed: int = 0
    storage_path: Path = Field(Path("runs"), description="Ray Train storage folder for checkpoints")

    @model_validator(mode="after")
    def _check(self) -> "SRTrainConfig":
        if self.hr_patch % self.architecture.scale:
            raise ValueError(f"hr_patch {self.hr_patch} must be a multiple of scale {self.architecture.scale}")
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must divide among {self.num_workers} workers")
        return self
