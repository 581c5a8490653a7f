"""The super-resolution family: a Ray Serve deployment that upscales images tile by tile.

One replica serves one variant (one model folder). A request's image is cut into fixed-size
overlapping tiles (``deployments/tiling.py``); every tile goes through one ``@serve.batch``
method, so tiles of one big image and of concurrent requests share forward passes of one shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ray import serve

from deployments.runtime import replica_threads
from deployments.srnet import load_model, to_uint8
from deployments.tiling import crop_canvas, new_canvas, paste_tile, split_tiles
from serve.errors import InvalidInput

logger = logging.getLogger("ray.serve")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def split_channels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Pre-processing: ``(H, W, C)`` uint8, C in 1..4 -> RGB ``(H, W, 3)``, alpha ``(H, W)`` or None, is_gray.

    Raises:
        InvalidInput: not a uint8 array of that shape.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InvalidInput("expected an (H, W, C) uint8 array with C in 1..4")
    if min(image.shape[:2]) < 1:
        raise InvalidInput("the image is empty")
    channels = image.shape[2]
    alpha = image[..., -1] if channels in (2, 4) else None
    color = image[..., :1] if channels in (1, 2) else image[..., :3]
    is_gray = channels in (1, 2)
    rgb = np.repeat(color, 3, axis=2) if is_gray else color
    return np.ascontiguousarray(rgb), alpha, is_gray


def merge_channels(rgb: np.ndarray, alpha: np.ndarray | None, is_gray: bool) -> np.ndarray:
    """Post-processing: upscaled RGB ``(sH, sW, 3)`` back to the input's channel layout.

    Gray inputs come back as the luma of the output (ITU-R BT.601, Pillow's ``convert("L")``);
    the alpha plane, which the network never sees, is upscaled with bicubic interpolation.
    """
    planes = [np.asarray(Image.fromarray(rgb).convert("L"))[..., None] if is_gray else rgb]
    if alpha is not None:
        size = (rgb.shape[1], rgb.shape[0])
        planes.append(np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.BICUBIC))[..., None])
    return np.concatenate(planes, axis=2)


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64)
class SuperResolution:
    """Upscales images with one model folder (``model.json`` + ``model.safetensors``).

    Args (from the app config's variant, ``serve/config.py``): ``variant`` name, ``weights``
    folder, ``tile_size`` and ``overlap`` in LR pixels, ``max_batch_size`` tiles per forward
    pass, ``batch_wait_timeout_s`` seconds, ``device`` cpu|cuda, ``precision`` of autocast,
    ``num_threads`` for torch.
    """

    def __init__(
        self,
        variant: str,
        weights: str,
        tile_size: int = 128,
        overlap: int = 32,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        device: str = "cpu",
        precision: str = "float32",
        num_threads: int | None = None,
    ) -> None:
        started = time.monotonic()
        torch.set_num_threads(replica_threads(num_threads))
        if device == "cuda" and not torch.cuda.is_available():
            logger.warning("variant %s: CUDA is not available, falling back to CPU", variant)
            device, precision = "cpu", ("float32" if precision == "float16" else precision)
        self.variant, self.tile_size, self.overlap, self.max_batch_size = variant, tile_size, overlap, max_batch_size
        self.device, self.precision = torch.device(device), precision
        self.folder = Path(weights)
        self.model, self.card = load_model(self.folder, device)
        self.scale = self.card.scale
        self._infer_tiles.set_max_batch_size(max_batch_size)
        self._infer_tiles.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._forward(np.zeros((1, 3, tile_size, tile_size), dtype=np.float32))  # warm-up
        self.load_seconds = time.monotonic() - started
        logger.info("variant %s: x%d loaded from %s in %.1f s", variant, self.scale, self.folder, self.load_seconds)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    @torch.inference_mode()
    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, 3, t, t)`` float32 in [0, 1] -> ``(N, t*s, t*s, 3)`` uint8."""
        with self._autocast():
            output = self.model(torch.from_numpy(tiles).to(self.device))
        return to_uint8(output)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _infer_tiles(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Batched: each item ``(3, t, t)`` uint8 -> ``(3, t*s, t*s)`` uint8."""
        batch = np.stack(tiles).astype(np.float32) / 255.0
        output = await asyncio.to_thread(self._forward, batch)
        return list(output.transpose(0, 3, 1, 2))

    async def upscale(self, image: np.ndarray) -> np.ndarray:
        """Upscale ``(H, W, C)`` uint8 (C in 1..4) to ``(H*scale, W*scale, C)`` uint8.

        Raises:
            InvalidInput: not a uint8 image array.
        """
        rgb, alpha, is_gray = split_channels(image)
        tiles, plan = split_tiles(rgb, self.tile_size, self.overlap)
        canvas = new_canvas(plan, self.scale, channels=3)
        # A window of tiles in flight at a time: enough to fill batches (with other requests'
        # tiles too), while the upscaled tiles held at once stay bounded whatever the image size.
        window = 4 * self.max_batch_size
        for start in range(0, len(tiles), window):
            indices = range(start, min(start + window, len(tiles)))
            outputs = await asyncio.gather(*(self._infer_tiles(tiles[i]) for i in indices))
            for index, output in zip(indices, outputs):
                paste_tile(canvas, output, index, plan, self.scale)
        return merge_channels(crop_canvas(canvas, plan, self.scale), alpha, is_gray)

    def info(self) -> dict:
        """What ``GET /v1/models`` shows for this variant."""
        return {
            "variant": self.variant,
            "scale": self.scale,
            "architecture": self.card.architecture.model_dump(),
            "weights": str(self.folder),
            "metrics": self.card.metrics.model_dump() if self.card.metrics else None,
            "training": self.card.training.model_dump() if self.card.training else None,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "device": self.device.type,
            "precision": self.precision,
            "load_seconds": round(self.load_seconds, 2),
        }

    def ready(self) -> bool:
        """True once the model is loaded and warmed up (the constructor has returned)."""
        return True
