"""The per-worker training loop of SRResNet/SRGAN on Ray Train.

Each worker reads its shard of the Ray Data patch pipeline (``get_dataset_shard("train")``);
DDP averages the gradients. Every ``checkpoint_every`` steps rank 0 validates on whole images,
and every worker reports: rank 0 attaches a checkpoint that is at once a servable model folder
(``model.safetensors`` + ``model.json``) and the full training state (``train_state.pt``: step,
generator, its moving average, optimizer, scheduler, discriminator, gradient scaler, early
stopping). A run started
again with the same name and storage (``--resume``) continues from the latest checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pixelfleet.models.modelcard import ModelCard, SRArchitecture, SRMetrics
from pixelfleet.models.srnet import SRResNet, build_model, load_model, save_model
from pixelfleet.train.sr_data import list_images, load_pairs, to_nchw_float
from pixelfleet.train.srgan.config import SRTrainConfig
from pixelfleet.train.srgan.evaluate import evaluate_pairs
from pixelfleet.train.srgan.gan import Discriminator, VGGFeatureLoss
from pixelfleet.train.srgan.steps import EarlyStopper, GanParts, Precision, gan_step, psnr_step, resolve_precision, weight_average

TRAIN_STATE = "train_state.pt"


def _set_threads(cfg: SRTrainConfig) -> None:
    """Ray sets OMP_NUM_THREADS to the worker's whole CPUs (at least 1); torch follows it."""
    threads = cfg.scaling.threads_per_worker or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(max(1, threads))


def _initial_generator(cfg: SRTrainConfig) -> nn.Module:
    if cfg.init_from is None:
        return build_model(cfg.architecture)
    model, card = load_model(cfg.init_from)
    if card.architecture == cfg.architecture:
        return model
    if card.architecture.model_copy(update={"blocks": cfg.architecture.blocks}) == cfg.architecture:
        return grow_blocks(model, cfg.architecture.blocks)
    raise ValueError(f"init_from {cfg.init_from} is {card.architecture}, the config says {cfg.architecture}")


def grow_blocks(model: SRResNet, blocks: int) -> SRResNet:
    """A deeper copy of ``model`` that computes the same function: residual blocks appended with
    their second conv zeroed, so each starts as the identity and training grows it (function-
    preserving growth, after Net2Net: Chen et al. 2016, arXiv:1511.05641).

    Raises:
        ValueError: ``blocks`` is not more than the model has.
    """
    have = len(model.body)
    if blocks <= have:
        raise ValueError(f"growing needs more than {have} blocks, got {blocks}")
    arch = SRArchitecture(scale=model.scale, channels=model.head.out_channels, blocks=blocks, res_scale=model.body[0].res_scale, upsampler=model.upsampler_kind)
    grown = build_model(arch)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("body.") and int(key.split(".")[1]) >= have for key in missing)
    with torch.no_grad():
        for block in grown.body[have:]:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
    return grown


def _cosine(optimizer: torch.optim.Optimizer, cfg: SRTrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.optim.steps, eta_min=base * cfg.optim.min_lr_ratio)


def _batches(cfg: SRTrainConfig, per_worker: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches from this worker's shard: epoch after epoch of fresh random patches."""
    shard = ray.train.get_dataset_shard("train")
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None):
            empty = False
            yield batch
        if empty:
            raise ValueError("an epoch gave no full batch: raise data.patches_per_image or add images at least data.hr_patch pixels wide")


class _Run:
    """One worker's models, optimizers and counters; saved to and restored from checkpoints."""

    def __init__(self, cfg: SRTrainConfig) -> None:
        self.cfg = cfg
        self.device = ray.train.torch.get_device()
        self.precision = Precision(resolve_precision(cfg.precision, self.device), self.device)
        self.generator = ray.train.torch.prepare_model(_initial_generator(cfg))
        self.plain_generator: nn.Module = getattr(self.generator, "module", self.generator)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.optim.learning_rate)
        self.ema = weight_average(self.plain_generator, cfg.optim.ema_decay)
        self.scheduler = _cosine(self.optimizer, cfg)
        self.gan: GanParts | None = None
        self.d_scheduler = None
        if cfg.phase == "gan":
            discriminator = ray.train.torch.prepare_model(Discriminator(cfg.gan.discriminator_channels))
            d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=cfg.gan.discriminator_lr)
            vgg = VGGFeatureLoss(cfg.gan.vgg19_weights, cfg.gan.vgg_layer).to(self.device) if cfg.gan.vgg19_weights else None
            self.gan = GanParts(discriminator, d_optimizer, cfg.gan, vgg)
            self.d_scheduler = _cosine(d_optimizer, cfg)
        self.early = EarlyStopper(cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        self.step, self.train_seconds = 0, 0.0

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "generator": self.plain_generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "early_stopping": self.early.state_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.gan is not None:
            state["discriminator"] = getattr(self.gan.discriminator, "module", self.gan.discriminator).state_dict()
            state["d_optimizer"] = self.gan.optimizer.state_dict()
            state["d_scheduler"] = self.d_scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.plain_generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.early.load_state_dict(state["early_stopping"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.gan is not None:
            getattr(self.gan.discriminator, "module", self.gan.discriminator).load_state_dict(state["discriminator"])
            self.gan.optimizer.load_state_dict(state["d_optimizer"])
            self.d_scheduler.load_state_dict(state["d_scheduler"])

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        lr, hr = to_nchw_float(batch["lr"]).to(self.device), to_nchw_float(batch["hr"]).to(self.device)
        self.generator.train()
        optim = self.cfg.optim
        if self.gan is None:
            losses = psnr_step(self.generator, self.optimizer, self.precision, optim.pixel_loss, lr, hr, optim.luma_weight)
        else:
            losses = gan_step(self.generator, self.optimizer, self.gan, self.precision, optim.pixel_loss, lr, hr, optim.luma_weight)
            self.d_scheduler.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.plain_generator)
        self.step += 1
        return losses

    @property
    def model(self) -> nn.Module:
        """The generator that is validated and saved: the moving average where there is one."""
        return self.plain_generator if self.ema is None else self.ema.module


def _restore(run: _Run) -> None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        run.load_state_dict(torch.load(Path(folder) / TRAIN_STATE, map_location=run.device, weights_only=False))
    print(f"resumed at step {run.step} from {checkpoint.path}", flush=True)


def _progress(run: _Run, rank: int):
    """A progress bar on rank 0, drawn by the driver (Ray's tqdm); None on other ranks."""
    if rank != 0:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=run.cfg.optim.steps, desc=f"{run.cfg.name} ({run.cfg.phase}, {run.precision.name})")
    bar.update(run.step)
    return bar


def _tensorboard(run: _Run, rank: int):
    """Rank 0 writes scalars to ``<run_dir>/tensorboard`` (``tensorboard --logdir``)."""
    if rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # on resume, drop what the stopped run logged after its checkpoint
    return SummaryWriter(str(run.cfg.run_dir / "tensorboard"), purge_step=run.step + 1 if run.step else None)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` is an :class:`SRTrainConfig` (absolute paths) as a dict."""
    cfg = SRTrainConfig.model_validate(config)
    _set_threads(cfg)
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(cfg.seed)
    run = _Run(cfg)
    _restore(run)
    val_pairs = load_pairs(list_images([cfg.data.val]), cfg.architecture.scale) if rank == 0 else []
    progress, writer = _progress(run, rank), _tensorboard(run, rank)
    batches = _batches(cfg, cfg.optim.batch_size // world)
    while run.step < cfg.optim.steps:
        started = time.monotonic()
        losses = run.train_step(next(batches))
        run.train_seconds += time.monotonic() - started
        if progress is not None:
            progress.update(1)
            progress.set_description(f"{cfg.name} ({cfg.phase}, {run.precision.name}) loss {losses['loss']:.4f}")
        if writer is not None:
            for key, value in losses.items():
                writer.add_scalar(f"train/{key}", value, run.step)
            writer.add_scalar("train/learning_rate", run.scheduler.get_last_lr()[0], run.step)
        if run.step % cfg.checkpoint_every == 0 or run.step == cfg.optim.steps:
            if _checkpoint(run, val_pairs, rank, losses, writer):
                break
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()


def _checkpoint(run: _Run, val_pairs: list, rank: int, losses: dict[str, float], writer) -> bool:
    """Validate (rank 0), report a checkpoint, decide on early stopping; True to stop (all ranks)."""
    cfg = run.cfg
    metrics: dict[str, float | str] = {"step": run.step, "train_seconds": run.train_seconds, "precision": run.precision.name, **losses}
    stop = torch.zeros(1, device=run.device)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            run.model.eval()
            val = evaluate_pairs(run.model, val_pairs, cfg.architecture.scale)
            metrics.update(val)
            stop += run.early.update(val["psnr_y"])
            metrics["stopped_early"] = float(stop.item())
            for key in ("psnr_y", "ssim_y"):
                writer.add_scalar(f"val/{key}", val[key], run.step)
            print(
                f"validation step {run.step}: PSNR-Y {val['psnr_y']:.3f} dB (bicubic {val['bicubic_psnr_y']:.3f}), "
                f"SSIM-Y {val['ssim_y']:.4f} (bicubic {val['bicubic_ssim_y']:.4f})" + (", stopping early" if stop.item() else ""),
                flush=True,
            )
            card = ModelCard(
                name=cfg.name,
                architecture=cfg.architecture,
                metrics=SRMetrics(dataset=str(cfg.data.val), images=len(val_pairs), border=cfg.architecture.scale, **val),
            )
            save_model(run.model, card, Path(folder))
            torch.save(run.state_dict(), Path(folder) / TRAIN_STATE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(stop, src=0)
    return bool(stop.item())
