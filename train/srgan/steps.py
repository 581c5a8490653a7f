"""The pieces of one SRGAN training step, without Ray: precision, losses, the two phases' steps,
early stopping. ``train/srgan/loop.py`` puts them together on each Ray Train worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pixelfleet.models.runtime import cpu_has_native_bf16
from pixelfleet.train.srgan.config import GanConfig
from pixelfleet.train.srgan.gan import VGGFeatureLoss, discriminator_loss, generator_adversarial_loss

logger = logging.getLogger(__name__)


def resolve_precision(requested: str, device: torch.device) -> str:
    """The autocast dtype a run uses: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is fp16 (with a gradient scaler) on CUDA and bf16 on CPUs with native bf16
    (AVX-512 BF16 or AMX; oneDNN reports it), else fp32. fp16 on a CPU becomes fp32.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        logger.warning("fp16 autocast needs CUDA; training in fp32")
        return "fp32"
    return requested


@dataclass
class Precision:
    """Autocast for forward passes and a gradient scaler (enabled for fp16 only)."""

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (a no-op in fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.name == "bf16" else torch.float16)


# BT.601 luma weights of RGB in [0, 1] (as train/metrics.py), scaled to sum to 1 so that a grey
# error of e in every channel is an error of e in luma.
_LUMA = torch.tensor([65.481, 128.553, 24.966]) / 219.0


def luma(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB -> ``(N, 1, H, W)`` BT.601 luma without its offset, weights summing to 1."""
    return torch.einsum("nchw,c->nhw", images, _LUMA.to(images)).unsqueeze(1)


def pixel_loss(name: str, sr: torch.Tensor, hr: torch.Tensor, luma_weight: float = 0.0) -> torch.Tensor:
    """L1 or MSE between ``(N, 3, H, W)`` float32 images in [0, 1].

    With ``luma_weight`` w in (0, 1], the loss is ``(1 - w) * loss(RGB) + w * loss(luma)``: the
    luma term is what PSNR-Y measures (SRCNN and VDSR train on Y alone), the RGB term keeps the
    colour planes supervised.
    """
    distance = F.l1_loss if name == "l1" else F.mse_loss
    loss = distance(sr, hr)
    if luma_weight:
        loss = (1.0 - luma_weight) * loss + luma_weight * distance(luma(sr), luma(hr))
    return loss


def psnr_step(
    generator: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    loss_name: str,
    lr: torch.Tensor,
    hr: torch.Tensor,
    luma_weight: float = 0.0,
) -> dict[str, float]:
    """One pre-training step (SRResNet): pixel loss only (:func:`pixel_loss`). Returns ``{"loss": ...}``."""
    with precision.autocast():
        sr = generator(lr)
    loss = pixel_loss(loss_name, sr.float(), hr, luma_weight)
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return {"loss": loss.item()}


def weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (and buffers), or None without ``decay``.

    After each optimizer step ``average.update_parameters(model)`` sets every weight to
    ``decay * average + (1 - decay) * weight`` (the first update copies ``model``); the average is
    ``average.module``, a model of the same class. Averaging the last few thousand steps smooths out
    the noise of small batches (as in BasicSR's ``ema_decay``; Polyak & Juditsky 1992).
    """
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@dataclass
class GanParts:
    """What the adversarial phase adds: the discriminator, its optimizer, the optional VGG loss."""

    discriminator: nn.Module
    optimizer: torch.optim.Optimizer
    config: GanConfig
    vgg: VGGFeatureLoss | None


def gan_step(
    generator: nn.Module,
    optimizer: torch.optim.Optimizer,
    gan: GanParts,
    precision: Precision,
    loss_name: str,
    lr: torch.Tensor,
    hr: torch.Tensor,
    luma_weight: float = 0.0,
) -> dict[str, float]:
    """One SRGAN step: the generator against the discriminator, then the discriminator.

    Generator loss = pixel_weight * pixel + perceptual_weight * VGG (if weights were given) +
    adversarial_weight * -log D(G(LR)); discriminator loss = BCE on real HR and generated SR
    patches, in one forward pass. Returns the loss terms as floats.
    """
    cfg = gan.config
    with precision.autocast():
        sr = generator(lr)
    sr = sr.float()
    with precision.autocast():
        fake_logits = gan.discriminator(sr)
    content = cfg.pixel_weight * pixel_loss(loss_name, sr, hr, luma_weight)
    perceptual = gan.vgg(sr, hr) if gan.vgg is not None else torch.zeros((), device=sr.device)
    adversarial = generator_adversarial_loss(fake_logits)
    g_loss = content + cfg.perceptual_weight * perceptual + cfg.adversarial_weight * adversarial
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(g_loss).backward()
    precision.scaler.step(optimizer)

    gan.optimizer.zero_grad(set_to_none=True)  # drop what the generator's loss left in D
    with precision.autocast():
        real_logits, fake_logits = gan.discriminator(torch.cat([hr, sr.detach()])).chunk(2)
    d_loss = discriminator_loss(real_logits, fake_logits)
    precision.scaler.scale(d_loss).backward()
    precision.scaler.step(gan.optimizer)
    precision.scaler.update()
    return {
        "loss": g_loss.item(),
        "pixel_loss": content.item(),
        "perceptual_loss": perceptual.item(),
        "adversarial_loss": adversarial.item(),
        "discriminator_loss": d_loss.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }


@dataclass
class EarlyStopper:
    """Early stopping on validation PSNR-Y (dB): stop after ``patience`` checks in a row that did
    not beat the best by ``min_delta``. ``patience`` None never stops."""

    patience: int | None
    min_delta: float = 0.0
    best: float = -math.inf
    bad_checks: int = 0

    def update(self, psnr: float) -> bool:
        """Record one validation; True when the run should stop."""
        if psnr > self.best + self.min_delta:
            self.best, self.bad_checks = psnr, 0
        else:
            self.bad_checks += 1
        return self.patience is not None and self.bad_checks >= self.patience

    def state_dict(self) -> dict[str, float]:
        """For the checkpoint."""
        return {"best": self.best, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """From the checkpoint."""
        self.best, self.bad_checks = float(state["best"]), int(state["bad_checks"])
