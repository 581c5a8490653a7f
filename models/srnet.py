"""The super-resolution network: an SRResNet generator, plus loading it from a model folder.

Architecture after SRResNet (Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a
Generative Adversarial Network", CVPR 2017, arXiv:1609.04802, Fig. 4), with two changes taken from
EDSR (Lim et al., CVPR Workshops 2017, arXiv:1707.02921): no batch normalisation, and the
residual branch is scaled. The network predicts the residual over a bicubic upscale of its input,
which makes small networks converge fast.

This module is pure PyTorch: training (``train/srgan``) and serving (``deployments/superres.py``)
share it, and tests call it without Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from pixelfleet.models.modelcard import ModelCard, SRArchitecture
from pixelfleet.models.modelfiles.safeload import load_state_dict


class ResidualBlock(nn.Module):
    """conv3x3 -> PReLU -> conv3x3, added to the input after scaling by ``res_scale``."""

    def __init__(self, channels: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` -> same shape."""
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


def _upsampler(channels: int, scale: int) -> nn.Sequential:
    """Sub-pixel convolution stages (Shi et al. 2016, arXiv:1609.05158): x2 steps, or one x3."""
    layers: list[nn.Module] = []
    if scale in (2, 4, 8):
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(channels)]
    elif scale == 3:
        layers += [nn.Conv2d(channels, 9 * channels, 3, padding=1), nn.PixelShuffle(3), nn.PReLU(channels)]
    else:
        raise ValueError(f"scale must be 2, 3, 4 or 8, got {scale}")
    return nn.Sequential(*layers)


def _single_upsampler(channels: int, scale: int) -> nn.Sequential:
    """ESPCN's tail (Shi et al. 2016): one conv at LR resolution to ``3 * scale**2`` channels, one shuffle."""
    return nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))


class SRResNet(nn.Module):
    """SRResNet generator.

    Args:
        scale: scale factor (2, 3, 4 or 8).
        channels: feature channels of the trunk.
        blocks: number of residual blocks.
        res_scale: residual scaling inside each block (EDSR uses 0.1 for wide nets).
        upsampler: ``progressive`` (SRGAN: conv + x2 pixel shuffle per octave, then a conv to RGB
            at full resolution) or ``single`` (ESPCN: one conv to ``3 * scale**2`` channels at LR
            resolution and one pixel shuffle; most of the compute stays at LR resolution).

    Input ``(N, 3, h, w)`` float32 RGB in [0, 1]; output ``(N, 3, h*scale, w*scale)`` float32,
    not clamped (callers clamp to [0, 1] before quantising).
    """

    def __init__(
        self, scale: int = 4, channels: int = 48, blocks: int = 8, res_scale: float = 1.0, upsampler: str = "progressive"
    ) -> None:
        super().__init__()
        self.scale, self.upsampler_kind = scale, upsampler
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(channels, res_scale) for _ in range(blocks)])
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1)
        if upsampler == "single":
            self.upsample, self.tail = _single_upsampler(channels, scale), nn.Identity()
        else:
            self.upsample, self.tail = _upsampler(channels, scale), nn.Conv2d(channels, 3, 3, padding=1)
        self.receptive_radius = receptive_radius(scale, blocks, upsampler)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w)`` float32 RGB in [0, 1] -> ``(N, 3, h*scale, w*scale)`` float32, unclamped."""
        features = self.head(lr)
        features = features + self.body_tail(self.body(features))
        residual = self.tail(self.upsample(features))
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + residual


def receptive_radius(scale: int, blocks: int, upsampler: str = "progressive") -> int:
    """How far (in LR pixels) an output pixel can see: 3x3 convs at LR, plus the upsampler's.

    Tiles whose overlap is at least twice this radius give the same output as the whole image.
    """
    lr_convs = 1 + 2 * blocks + 1  # head, blocks, body tail
    if upsampler == "single":
        return max(lr_convs + 1, 2)  # plus the one upsampling conv at LR resolution
    up_stages = 1 if scale == 3 else int(math.log2(scale))
    upsampler = sum(1 / (2**i) for i in range(up_stages))  # one conv before each pixel shuffle
    tail = 1 / scale
    bicubic = 2  # the bicubic skip reads two LR pixels each side
    return math.ceil(max(lr_convs + upsampler + tail, bicubic))


def build_model(arch: SRArchitecture) -> SRResNet:
    """An untrained network of the architecture that a model card describes."""
    return SRResNet(arch.scale, arch.channels, arch.blocks, arch.res_scale, arch.upsampler)


def save_model(model: nn.Module, card: ModelCard, folder: Path) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / card.weights), metadata={"format": "pt", "architecture": card.architecture.type})
    (folder / "model.json").write_text(card.model_dump_json(indent=2) + "\n")


def load_model(folder: Path, device: str = "cpu") -> tuple[SRResNet, ModelCard]:
    """Load a super-resolution model folder (``model.json`` + safetensors weights).

    Raises:
        FileNotFoundError: the folder lacks ``model.json`` or its weights file.
        pydantic.ValidationError: ``model.json`` does not match :class:`ModelCard`.
        CorruptModelFile, UnsafeModelFile: the weights file is truncated, malformed, or a pickle
            (:func:`pixelfleet.models.modelfiles.load_state_dict`).
        RuntimeError: the weights do not fit the architecture that the card names.
    """
    card = ModelCard.model_validate_json((folder / "model.json").read_text())
    model = build_model(card.architecture)
    weights = folder / card.weights
    if not weights.is_file():
        raise FileNotFoundError(f"{folder.name}: model.json names {card.weights}, which is missing")
    model.load_state_dict(load_state_dict(weights))  # header checked first; a pickle is refused
    return model.to(device).eval(), card


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0).unsqueeze(0)


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` float in [0, 1] (clamped here) -> ``(N, H, W, 3)`` uint8, rounded."""
    return batch.float().clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def self_ensemble(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """The x8 geometric self-ensemble of Lim et al. (2017), "EDSR+": the mean of ``run`` over the
    eight flips and 90-degree rotations of ``batch``, each output turned back.

    ``batch`` is ``(N, 3, h, w)`` float32 in [0, 1]; ``run`` maps any ``(N, 3, a, b)`` to ``(N, 3,
    a*s, b*s)`` (a fully convolutional network: the turned views are ``(N, 3, w, h)``). Returns
    ``(N, 3, h*s, w*s)`` float32. Eight forward passes: 8x the compute for +0.07 dB PSNR-Y on the
    shipped x4 model (README). The result is equivariant to those eight transforms.
    """
    total = None
    for turns in range(4):
        for flip in (False, True):
            view = torch.rot90(batch, turns, (2, 3))
            output = run(view.flip(3) if flip else view).float()
            output = torch.rot90(output.flip(3) if flip else output, -turns, (2, 3))
            total = output if total is None else total.add_(output)
    return total.div_(8)


@torch.inference_mode()
def upscale_whole(model: nn.Module, lr: np.ndarray) -> np.ndarray:
    """Upscale one ``(h, w, 3)`` uint8 RGB image in a single forward pass (no tiling).

    Returns ``(h*scale, w*scale, 3)`` uint8. Memory grows with the image: serving tiles instead
    (``deployments/tiling.py``); this is for validation on small images.
    """
    device = next(model.parameters()).device
    return to_uint8(model(to_tensor(lr).to(device)))[0]
