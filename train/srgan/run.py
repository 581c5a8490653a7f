"""The driver of a super-resolution training run: a Ray Train ``TorchTrainer`` and the model folder.

``pixelfleet train srgan`` calls :func:`run`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import ray
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from deployments.modelcard import ModelCard, TrainingRecord
from train.srgan.config import SRTrainConfig
from train.srgan.loop import train_loop_per_worker


def run(cfg: SRTrainConfig, command: str) -> ModelCard:
    """Train, then write ``cfg.output`` (model.safetensors + model.json with the record and metrics).

    Starts a local Ray unless one is reachable (``RAY_ADDRESS``). Returns the written card.

    Raises:
        ray.train.TrainingFailedError: a worker failed.
    """
    if not ray.is_initialized():
        # Ray Train's controller watches its actors through the State API, which the dashboard
        # serves: without it every second brings a warning. Bound to localhost.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1")
    started = time.monotonic()
    # Workers do not share the driver's working directory: hand them absolute paths.
    worker_cfg = cfg.model_copy(update={"train_data": [p.resolve() for p in cfg.train_data], "val_data": cfg.val_data.resolve()})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(cfg.storage_path.resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    wall_time = time.monotonic() - started
    cfg.output.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        card = ModelCard.model_validate_json((Path(folder) / "model.json").read_text())
        shutil.copy(Path(folder) / card.weights, cfg.output / card.weights)
    card.metrics.dataset = str(cfg.val_data)
    card.training = TrainingRecord(
        command=command,
        data=[str(p) for p in cfg.train_data],
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        hr_patch=cfg.hr_patch,
        workers=cfg.num_workers,
        precision="bf16 autocast" if cfg.bf16 else "fp32",
        wall_time_s=round(wall_time, 1),
    )
    (cfg.output / "model.json").write_text(card.model_dump_json(indent=2) + "\n")
    return card
