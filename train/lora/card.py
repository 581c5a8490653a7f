"""The card of a trained adapter: ``<name>.json`` beside ``<name>.safetensors``.

It records what the adapter is (base model, rank, targets) and how it was made (steps, data,
the command and git commit), the way ``model.json`` does for a super-resolution model. The name
follows A1111's convention of a ``.json`` of user metadata beside a LoRA file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class LoraCard(BaseModel):
    """What ``pixelfleet train lora`` knows about the adapter it wrote."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the adapter id: the file's stem")
    format: str = Field("diffusers", description="key style of the .safetensors: diffusers/peft (unet.*.lora_A.weight ...)")
    weights: str = Field(description="the adapter file's name, beside this card")
    sha256: str = Field(description="SHA-256 of the adapter file, hex")
    base_model: str = Field(description="the diffusers folder it was trained on")
    base_pipeline: str = Field(description="that folder's pipeline class (model_index.json)")
    cross_attention_dim: int = Field(description="the base UNet's cross-attention width: 768 SD 1.x, 1024 SD 2.x")
    rank: int
    alpha: float
    target_modules: list[str]
    text_encoder: bool = Field(description="whether the text encoder carries an adapter too")
    resolution: int = Field(description="training image side, pixels")
    steps: int
    batch_size: int
    learning_rate: float
    precision: str
    workers: int
    data: list[str] = Field(description="the training folders")
    images: int = Field(description="captioned images in them")
    validation_prompts: list[str] = []
    final_loss: float | None = None
    command: str
    commit: str | None = None
    resumed: bool = False
    train_seconds: float = Field(description="seconds spent in training steps (rank 0)")
    wall_time_s: float = Field(description="seconds the command ran, start-up and export included")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_card(card: LoraCard, folder: Path) -> Path:
    """Write ``<folder>/<card.name>.json`` atomically (a watcher never sees half a file); returns its path."""
    path = folder / f"{card.name}.json"
    partial = folder / f".{card.name}.json.partial"
    partial.write_text(card.model_dump_json(indent=2) + "\n")
    os.replace(partial, path)
    return path
