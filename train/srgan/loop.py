"""The per-worker training loop of SRResNet on Ray Train (L1 pre-training phase).

Each worker draws its own random patches (seeded by rank); DDP averages the gradients. Rank 0
validates every ``val_every`` steps and reports a checkpoint holding a complete model folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from torch import nn

from deployments.modelcard import ModelCard, SRMetrics
from deployments.srnet import build_model, save_model
from train.sr_data import PatchSampler, list_images, load_pairs
from train.srgan.config import SRTrainConfig
from train.srgan.evaluate import evaluate_pairs


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _set_threads() -> None:
    """Ray sets OMP_NUM_THREADS to the worker's CPUs; make torch follow it."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))


def _card(cfg: SRTrainConfig, metrics: dict[str, float], images: int) -> ModelCard:
    return ModelCard(
        name=cfg.name,
        architecture=cfg.architecture,
        metrics=SRMetrics(dataset=str(cfg.val_data), images=images, border=cfg.architecture.scale, **metrics),
    )


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` is an :class:`SRTrainConfig` as a dict."""
    cfg = SRTrainConfig.model_validate(config)
    _set_threads()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    scale = cfg.architecture.scale
    torch.manual_seed(cfg.seed)
    sampler = PatchSampler(load_pairs(list_images(cfg.train_data), scale), scale, cfg.hr_patch, seed=cfg.seed * 1000 + rank)
    val_pairs = load_pairs(list_images([cfg.val_data]), scale) if rank == 0 else []

    model = ray.train.torch.prepare_model(build_model(cfg.architecture))
    plain_model: nn.Module = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.learning_rate * 0.01)
    loss_fn = nn.L1Loss()
    per_worker = cfg.batch_size // world
    started = time.monotonic()

    for step in range(1, cfg.steps + 1):
        model.train()
        lr_np, hr_np = sampler.sample(per_worker)
        lr, hr = torch.from_numpy(lr_np).to(device), torch.from_numpy(hr_np).to(device)
        with _autocast(device, cfg.bf16):
            sr = model(lr)
        loss = loss_fn(sr.float(), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if rank == 0 and step % 100 == 0:
            print(f"step {step}/{cfg.steps} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e} {time.monotonic() - started:.0f}s", flush=True)
        if step % cfg.val_every == 0 or step == cfg.steps:
            _report(cfg, plain_model, val_pairs, rank, step, loss.item())


def _report(cfg: SRTrainConfig, model: nn.Module, val_pairs: list, rank: int, step: int, loss: float) -> None:
    """Validate on rank 0 and report metrics; rank 0 attaches a checkpoint of the model folder."""
    metrics: dict[str, float] = {"step": step, "loss": loss}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            model.eval()
            val = evaluate_pairs(model, val_pairs, cfg.architecture.scale)
            metrics.update(val)
            print(
                f"validation step {step}: PSNR-Y {val['psnr_y']:.3f} dB (bicubic {val['bicubic_psnr_y']:.3f}), "
                f"SSIM-Y {val['ssim_y']:.4f} (bicubic {val['bicubic_ssim_y']:.4f})",
                flush=True,
            )
            save_model(model, _card(cfg, val, len(val_pairs)), Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
