"""The adversarial parts of SRGAN: the discriminator, the GAN losses and the VGG19 feature loss.

After Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network" (CVPR 2017, arXiv:1609.04802), Fig. 4 and §2.2, with two changes: no batch
normalisation in the discriminator (real and fake patches share one forward pass, which batch
statistics would mix; DDP also prefers one pass), and global average pooling before the dense
layers so that any patch size works.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def _block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True)]


class Discriminator(nn.Module):
    """SRGAN's discriminator: eight 3x3 convs (channels c, c, 2c, 2c, 4c, 4c, 8c, 8c; every
    second one strided), LeakyReLU(0.2), then dense 16c -> 1.

    Input ``(N, 3, H, W)`` float in [0, 1] (H, W >= 16 pixels); output ``(N,)`` float32 logits,
    positive for "real HR".
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        layers = _block(3, c, 1) + _block(c, c, 2)
        for width in (2 * c, 4 * c, 8 * c):
            layers += _block(width // 2, width, 1) + _block(width, width, 2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(8 * c, 16 * c), nn.LeakyReLU(0.2, inplace=True), nn.Linear(16 * c, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N,)`` logits."""
        pooled = self.features(image).mean(dim=(2, 3))
        return self.head(pooled).squeeze(1).float()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: real HR patches -> 1, generated ones -> 0 (Goodfellow et al. 2014)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss, -log D(G(LR)) (SRGAN eq. 6)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# torchvision's VGG19 ``features`` layout: channels per conv, "M" for max-pooling.
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
# Index in ``features`` of the ReLU after the named conv (before the next pooling).
VGG_LAYERS = {"relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(last_index: int) -> nn.Sequential:
    """torchvision's ``vgg19().features[: last_index + 1]``, built here (no torchvision needed)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG19:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*layers[: last_index + 1])


class VGGFeatureLoss(nn.Module):
    """SRGAN's VGG loss: MSE between VGG19 feature maps of SR and HR (``relu5_4`` = VGG54).

    Weights come only from a local file: a torchvision VGG19 state dict (``vgg19-dcbb9e9d.pth``,
    keys ``features.N.weight``/``bias``; the classifier is ignored and may be absent). The
    features are rescaled by 1/12.75 as in the paper. Inputs ``(N, 3, H, W)`` float in [0, 1].

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        KeyError: the file lacks a conv layer up to ``layer``.
    """

    def __init__(self, weights: Path, layer: str = "relu5_4") -> None:
        super().__init__()
        self.features = vgg19_features(VGG_LAYERS[layer])
        state = torch.load(weights, map_location="cpu", weights_only=True)
        wanted = {name: state[f"features.{name}"] for name in self.features.state_dict()}
        self.features.load_state_dict(wanted)
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Scalar float32 loss."""
        both = (torch.cat([sr, hr]) - self.mean) / self.std
        sr_features, hr_features = self.features(both).float().chunk(2)
        return F.mse_loss(sr_features / 12.75, hr_features / 12.75)
