"""The driver of a LoRA training run: Ray Data, a Ray Train ``TorchTrainer``, and the adapter it
leaves. ``pixelfleet train lora`` calls :func:`run`.

It joins and sizes itself on a cluster exactly as ``pixelfleet train srgan`` does (the same
functions of ``train/srgan/run.py``: :func:`connect`, :func:`fit_resources`, whose checks read only
the config's ``scaling`` section): on the cluster of a running ``pixelfleet up`` its workers take
the CPUs (or GPUs) the serving replicas leave free, and a run that does not fit is refused
(``ClusterFullError``) instead of waiting without end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import ray
import yaml
from ray.train import CheckpointConfig, DataConfig, RunConfig
from ray.train.torch import TorchTrainer

from pixelfleet.train.lora.card import LoraCard, sha256_file, write_card
from pixelfleet.train import rundir
from pixelfleet.train.lora.config import RESUME_FIXED, LoraTrainConfig
from pixelfleet.train.lora.data import captioned_dataset, list_captioned
from pixelfleet.train.lora.sampler import steps_per_epoch
from pixelfleet.train.lora.loop import train_loop_per_worker
from pixelfleet.train.lora.model import read_model_index
from pixelfleet.train.srgan.run import (
    DATA_CPUS,
    ClusterFullError,
    RunStateError,
    _git_commit,
    connect,
    fit_resources,
    scaling_config,
)

__all__ = ["ClusterFullError", "RunStateError", "check_run_dir", "run"]


def check_run_dir(cfg: LoraTrainConfig, resume: bool) -> None:
    """:func:`pixelfleet.train.rundir.check_run_dir` with this trainer's ``RESUME_FIXED``.

    Raises:
        RunStateError: a fresh run over an existing one, nothing to resume, or changed fields.
    """
    rundir.check_run_dir(cfg, resume, RESUME_FIXED)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def publish_adapter(source: Path, output: Path, name: str) -> Path:
    """Copy a checkpoint's adapter file to ``<output>/<name>.safetensors`` atomically (a serving
    replica that scans the folder sees the whole file or none); returns the path."""
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{name}.safetensors"
    partial = output / f".{name}.safetensors.partial"
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target


def run(cfg: LoraTrainConfig, command: str, resume: bool = False, address: str | None = None, address_source: str = "") -> LoraCard:
    """Train, then write ``<output>/<name>.safetensors`` and its card ``<output>/<name>.json``
    from the latest checkpoint. Joins the Ray cluster at ``address`` (chosen as
    ``address_source`` says) or starts its own, takes the CPUs free there, and says both on
    stderr. Returns the card.

    Raises:
        RunStateError: see :func:`check_run_dir`.
        BaseModelError: ``base_model`` is not an SD 1.x/2.x diffusers folder.
        FileNotFoundError: a data folder is missing or empty, or an image has no caption.
        NotEnoughImagesError: fewer images than one step's batch.
        ClusterFullError: the run does not fit the cluster's free resources.
        ConnectionError: no Ray cluster answers at ``address``.
        ray.train.TrainingFailedError: a worker failed.
    """
    check_run_dir(cfg, resume)
    worker_cfg = cfg.resolved()
    index = read_model_index(worker_cfg.base_model)
    captions = list_captioned(worker_cfg.data.train)
    steps_per_epoch(len(captions), cfg.scaling.num_workers, cfg.optim.batch_size // cfg.scaling.num_workers)
    cluster = connect(address, address_source)
    if cluster.joined:
        _say(f"joined the Ray cluster at {cluster.address} ({cluster.source})")
    free, total = ray.available_resources(), ray.cluster_resources()
    per_worker = fit_resources(cfg, free, total, cluster.address)
    _say(
        f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPUs free at {cluster.address}: "
        f"workers {cfg.scaling.num_workers} x {per_worker:g} CPU{' + 1 GPU' if cfg.scaling.use_gpu else ''}, "
        f"Ray Data {DATA_CPUS:g} CPU; {len(captions)} captioned images"
    )
    started = time.monotonic()
    worker_cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (worker_cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    dataset = captioned_dataset(captions, cfg.data.resolution, cfg.data.center_crop)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_cfg.model_dump(mode="json"),
        scaling_config=scaling_config(cfg, free.get("CPU", 0.0)),
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=[]),  # every worker holds the whole (small) set
        run_config=RunConfig(name=cfg.name, storage_path=str(worker_cfg.storage_path), checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    last = result.metrics
    with result.checkpoint.as_directory() as folder:
        adapter = publish_adapter(Path(folder) / f"{cfg.name}.safetensors", worker_cfg.output, cfg.name)
    unet_config = json.loads((worker_cfg.base_model / "unet" / "config.json").read_text())
    card = LoraCard(
        name=cfg.name,
        weights=adapter.name,
        sha256=sha256_file(adapter),
        base_model=str(cfg.base_model),
        base_pipeline=index["_class_name"],
        cross_attention_dim=int(unet_config["cross_attention_dim"]),
        rank=cfg.lora.rank,
        alpha=cfg.lora.lora_alpha,
        target_modules=list(cfg.lora.target_modules),
        text_encoder=cfg.lora.text_encoder,
        resolution=cfg.data.resolution,
        steps=int(last["step"]),
        batch_size=cfg.optim.batch_size,
        learning_rate=cfg.optim.learning_rate,
        precision=str(last.get("precision", cfg.precision)),
        workers=cfg.scaling.num_workers,
        data=[str(p) for p in cfg.data.train],
        images=len(captions),
        validation_prompts=list(cfg.validation.prompts),
        final_loss=float(last["loss"]) if "loss" in last else None,
        command=command,
        commit=_git_commit(),
        resumed=resume,
        train_seconds=round(float(last["train_seconds"]), 1),
        wall_time_s=round(time.monotonic() - started, 1),
    )
    write_card(card, worker_cfg.output)
    return card
