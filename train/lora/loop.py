"""The per-worker LoRA training loop on Ray Train.

Each worker reads the whole captioned set from Ray Data once (``get_dataset_shard("train")``,
not split: a LoRA set is tens to thousands of images) and draws its share of each step's batch
by the seeded order of ``train/lora/data.py``; DDP averages the adapter's gradients. Every
``checkpoint_every`` steps rank 0 reports a checkpoint holding the adapter as a servable file
(``<name>.safetensors``) and the full training state (``train_state.pt``: step, adapter,
optimizer, LR schedule, gradient scaler, every rank's random state). A run started again with
the same name and storage (``--resume``) continues from the latest one exactly. Rank 0 also
draws the progress bar, writes TensorBoard scalars and makes the validation images.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pixelfleet.train.lora.config import LoraTrainConfig
from pixelfleet.train.lora.model import save_adapter
from pixelfleet.train.lora.steps import LoraTraining
from pixelfleet.train.lora.validate import save_validation, validation_images

TRAIN_STATE = "train_state.pt"


def _set_threads(cfg: LoraTrainConfig) -> None:
    """Ray sets OMP_NUM_THREADS to the worker's whole CPUs (at least 1); torch follows it."""
    threads = cfg.scaling.threads_per_worker or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(max(1, threads))


def load_examples() -> list[dict]:
    """The run's examples from Ray Data, sorted by path (the fixed order the batches index into)."""
    rows = list(ray.train.get_dataset_shard("train").iter_rows())
    return sorted(rows, key=lambda row: row["path"])


def gather_rng(training: LoraTraining) -> list[dict[str, torch.Tensor]]:
    """Every rank's random state, in rank order (a collective: all ranks call it)."""
    mine = training.rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, {key: value.cpu() for key, value in mine.items()})
    return states


def write_checkpoint(training: LoraTraining, folder: Path, rng_states: list[dict[str, torch.Tensor]]) -> None:
    """The checkpoint folder: the adapter file (servable as it is) and ``train_state.pt``."""
    text_encoder = training.parts.text_encoder if training.cfg.lora.text_encoder else None
    save_adapter(folder, training.cfg.name, training.parts.unet, text_encoder)
    torch.save(training.state_dict(rng_states), folder / TRAIN_STATE)


def read_checkpoint(training: LoraTraining, folder: Path) -> None:
    """Continue ``training`` from a checkpoint folder that :func:`write_checkpoint` wrote."""
    # our own file (optimizer state holds Python scalars and dicts): trusted, so weights_only is off
    training.load_state_dict(torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=False))


def _progress(training: LoraTraining):
    """A progress bar on rank 0, drawn by the driver (Ray's tqdm); None on other ranks."""
    if training.rank != 0:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=training.cfg.optim.steps, desc=f"{training.cfg.name} (lora, {training.precision.name})")
    bar.update(training.step)
    return bar


def _tensorboard(training: LoraTraining):
    """Rank 0 writes scalars to ``<run_dir>/tensorboard`` (``tensorboard --logdir``)."""
    if training.rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # on resume, drop what the stopped run logged after its checkpoint
    return SummaryWriter(str(training.cfg.run_dir / "tensorboard"), purge_step=training.step + 1 if training.step else None)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` is a :class:`LoraTrainConfig` (absolute paths) as a dict."""
    cfg = LoraTrainConfig.model_validate(config)
    _set_threads(cfg)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    training = LoraTraining(cfg, ray.train.torch.get_device(), rank, world, wrap=ray.train.torch.prepare_model)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            read_checkpoint(training, Path(folder))
        print(f"resumed at step {training.step} from {checkpoint.path}", flush=True)
    examples = load_examples()
    progress, writer = _progress(training), _tensorboard(training)
    losses: dict[str, float] = {}
    while training.step < cfg.optim.steps:
        started = time.monotonic()
        losses = training.train_step(examples)
        training.train_seconds += time.monotonic() - started
        if progress is not None:
            progress.update(1)
            progress.set_description(f"{cfg.name} (lora, {training.precision.name}) loss {losses['loss']:.4f}")
        if writer is not None:
            for key, value in losses.items():
                writer.add_scalar(f"train/{key}", value, training.step)
        final = training.step == cfg.optim.steps
        if rank == 0 and cfg.validation.prompts and (training.step % cfg.validation_every == 0 or final):
            _validate(training, writer)
        if training.step % cfg.checkpoint_every == 0 or final:
            _report(training, losses)
    if not losses:  # resumed a run that had already finished: report where it stands, so the driver exports it
        ray.train.report({"step": training.step, "train_seconds": training.train_seconds, "precision": training.precision.name})
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()


def _validate(training: LoraTraining, writer) -> None:
    """Rank 0: validation images to ``<run_dir>/validation/step-N/`` and to TensorBoard."""
    import numpy as np

    images = validation_images(training, training.cfg.validation, training.cfg.data.resolution)
    paths = save_validation(images, training.cfg.run_dir / "validation", training.step)
    for (index, seed, image), _ in zip(images, paths):
        writer.add_image(f"validation/prompt{index}-seed{seed}", np.asarray(image), training.step, dataformats="HWC")
    print(f"validation step {training.step}: {len(paths)} images in {paths[0].parent}", flush=True)


def _report(training: LoraTraining, losses: dict[str, float]) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (the states of all ranks gathered to it)."""
    rng_states = gather_rng(training)
    metrics = {"step": training.step, "train_seconds": training.train_seconds, "precision": training.precision.name, **losses}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if training.rank == 0:
            write_checkpoint(training, Path(folder), rng_states)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
