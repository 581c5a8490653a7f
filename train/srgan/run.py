"""The driver of a super-resolution training run: Ray Data, a Ray Train ``TorchTrainer``, and the
model folder it leaves. ``pixelfleet train srgan`` calls :func:`run`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import ray
import yaml
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pixelfleet.models.modelcard import ModelCard, TrainingRecord
from pixelfleet.train.sr_data import patch_dataset
from pixelfleet.train.srgan.config import SRTrainConfig
from pixelfleet.train.srgan.loop import train_loop_per_worker

RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


class RunStateError(RuntimeError):
    """A fresh run would overwrite an existing one, or ``--resume`` found nothing to resume."""


def check_run_dir(cfg: SRTrainConfig, resume: bool) -> None:
    """Refuse to start over an existing run without ``resume``, or to resume a missing one.

    Raises:
        RunStateError: as above; the message says what to do.
    """
    exists = (cfg.run_dir / RUN_SNAPSHOT).exists()
    if exists and not resume:
        raise RunStateError(f"{cfg.run_dir} holds a run: pass --resume to continue it, or choose another name or storage_path")
    if resume and not exists:
        raise RunStateError(f"nothing to resume in {cfg.run_dir}: no checkpoint was reported there")
    saved = cfg.run_dir / "config.yaml"
    if resume and saved.exists():
        changed = changed_training_fields(SRTrainConfig.model_validate(yaml.safe_load(saved.read_text())), cfg)
        if changed:
            raise RunStateError(f"--resume continues the same run, but these fields differ from {saved}: {', '.join(changed)}")


# Fields that must not change when a run resumes: its state (model, optimizers, schedule) depends on them.
RESUME_FIXED = ("phase", "architecture", "optim", "gan", "data.hr_patch", "precision", "scaling.num_workers")


def changed_training_fields(before: SRTrainConfig, after: SRTrainConfig) -> list[str]:
    """The :data:`RESUME_FIXED` fields whose values differ between two configs of one run."""
    changed = []
    for dotted in RESUME_FIXED:
        old, new = before, after
        for key in dotted.split("."):
            old, new = getattr(old, key), getattr(new, key)
        if old != new:
            changed.append(dotted)
    return changed


DATA_CPUS = 0.5  # CPUs that Ray Data's patch tasks need beside the workers


def cpus_per_worker(cfg: SRTrainConfig, cluster_cpus: float) -> float:
    """The configured CPUs per worker, or 1 where that leaves :data:`DATA_CPUS` for Ray Data, else
    an even share of the rest (never below 0.1)."""
    if cfg.scaling.cpus_per_worker is not None:
        return cfg.scaling.cpus_per_worker
    workers = cfg.scaling.num_workers
    return max(0.1, min(1.0, (cluster_cpus - DATA_CPUS) / workers))


def scaling_config(cfg: SRTrainConfig, cluster_cpus: float) -> ScalingConfig:
    """Ray Train's ``ScalingConfig`` from the run's ``scaling`` section."""
    resources = {"CPU": cpus_per_worker(cfg, cluster_cpus)}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
    except OSError:
        return None
    return done.stdout.strip() or None


def run(cfg: SRTrainConfig, command: str, resume: bool = False) -> ModelCard:
    """Train, then write ``cfg.output`` (model.safetensors + model.json with record and metrics).

    A psnr run writes its checkpoint of best validation PSNR-Y; a gan run its latest. Starts a
    local Ray unless one is reachable (``RAY_ADDRESS``). Returns the written card.

    Raises:
        RunStateError: see :func:`check_run_dir`.
        FileNotFoundError: a data folder is missing or empty.
        ray.train.TrainingFailedError: a worker failed.
    """
    check_run_dir(cfg, resume)
    if not ray.is_initialized():
        # Ray Train's controller watches its actors through the State API, which the dashboard
        # serves: without it every second brings a warning. Bound to localhost.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1")
    started = time.monotonic()
    worker_cfg = cfg.resolved()
    worker_cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (worker_cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    dataset = patch_dataset(
        worker_cfg.data.train, cfg.architecture.scale, cfg.data.hr_patch, cfg.data.patches_per_image, cfg.data.hr_rescale
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_cfg.model_dump(mode="json"),
        scaling_config=scaling_config(cfg, ray.cluster_resources().get("CPU", 1.0)),
        datasets={"train": dataset},
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(worker_cfg.storage_path),
            # the best by validation PSNR-Y, and the latest (Ray Train always keeps it, for resuming)
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="psnr_y", checkpoint_score_order="max"),
        ),
    )
    result = trainer.fit()
    last = result.metrics
    if cfg.phase == "psnr":
        checkpoint, chosen = max(result.best_checkpoints, key=lambda pair: pair[1].get("psnr_y", float("-inf")))
    else:
        checkpoint, chosen = result.checkpoint, last
    cfg.output.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        card = ModelCard.model_validate_json((Path(folder) / "model.json").read_text())
        shutil.copy(Path(folder) / card.weights, cfg.output / card.weights)
    card.metrics.dataset = str(cfg.data.val)
    card.training = TrainingRecord(
        command=command,
        commit=_git_commit(),
        phase=cfg.phase,
        init_from=str(cfg.init_from) if cfg.init_from else None,
        data=[str(p) for p in cfg.data.train],
        steps=int(last["step"]),
        checkpoint_step=int(chosen["step"]),
        batch_size=cfg.optim.batch_size,
        hr_patch=cfg.data.hr_patch,
        workers=cfg.scaling.num_workers,
        precision=str(last.get("precision", cfg.precision)),
        wall_time_s=round(time.monotonic() - started, 1),
        train_seconds=round(float(last["train_seconds"]), 1),
        resumed=resume,
        stopped_early=bool(last.get("stopped_early", 0.0)),
    )
    (cfg.output / "model.json").write_text(card.model_dump_json(indent=2) + "\n")
    return card
