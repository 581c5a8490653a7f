"""Upscaling without Ray: a model folder on its backend (:class:`Upscaler`), the channel
pre/post-processing, and the tile loop (:func:`upscale_tiled`) that the deployment drives with
its ``@serve.batch`` method and that the CLI and benchmarks run directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixelfleet.models.runtime import auto_precision
from pixelfleet.models.sr_onnx import OnnxSR, onnx_file
from pixelfleet.models.srnet import load_model, self_ensemble, to_uint8
from pixelfleet.deployments.superres.tiling import crop_canvas, new_canvas, paste_tile, split_tiles
from pixelfleet.models.errors import InvalidInput

logger = logging.getLogger(__name__)

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


class Upscaler:
    """One model folder ready to run on batches of tiles, by the configured backend (no Ray).

    Args: ``folder`` (``model.json`` + ``model.safetensors``), ``backend`` torch|onnx,
    ``quantize`` none|int8 (onnx), ``device`` cpu|cuda (cuda falls back to CPU with a warning
    where none is present, and float16 then becomes float32), ``precision`` of autocast (``auto``:
    :func:`pixelfleet.models.runtime.auto_precision`; the onnx backend always runs float32)
    (torch), ``num_threads`` for torch and ONNX Runtime, ``ensemble``: average each tile over its
    eight flips and rotations (:func:`pixelfleet.models.srnet.self_ensemble`, 8x the compute),
    ``weights_ref``: the id to report (``builtin:NAME``) instead of the folder's path.
    """

    def __init__(
        self,
        folder: Path,
        backend: str = "torch",
        quantize: str = "none",
        device: str = "cpu",
        precision: str = "float32",
        num_threads: int = 1,
        ensemble: bool = False,
        weights_ref: str | None = None,
    ) -> None:
        torch.set_num_threads(num_threads)
        if device == "cuda" and not torch.cuda.is_available():
            logger.warning("%s: CUDA is not available, falling back to CPU", folder)
            device, precision = "cpu", ("float32" if precision == "float16" else precision)
        if precision == "auto":
            precision = auto_precision(device) if backend == "torch" else "float32"
        self.folder, self.backend, self.quantize, self.ensemble = folder, backend, quantize, ensemble
        self.weights_ref = weights_ref or folder.name  # what info() shows: the config's id, never a server path
        self.device, self.precision = torch.device(device), precision
        self.model, self.card = load_model(folder, device)
        # NHWC: oneDNN's and cuDNN's fast convolution layout (1.33x over NCHW in fp32 on a 2-core
        # AVX2 CPU, BENCHMARKS.md); weights are converted once here, each batch in forward()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.scale = self.card.scale
        self.onnx = OnnxSR(onnx_file(folder, quantize), device, num_threads) if backend == "onnx" else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """One forward pass of the backend: ``(N, 3, h, w)`` float32 -> ``(N, 3, h*s, w*s)``."""
        if self.onnx is not None:
            return torch.from_numpy(self.onnx(np.ascontiguousarray(batch.numpy())))
        with self._autocast():
            return self.model(batch.to(self.device, memory_format=torch.channels_last))

    @torch.inference_mode()
    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, 3, h, w)`` float32 in [0, 1] -> ``(N, h*s, w*s, 3)`` uint8."""
        batch = torch.from_numpy(tiles)
        return to_uint8(self_ensemble(self._run, batch) if self.ensemble else self._run(batch))

    def upscale(self, image: np.ndarray, tile_size: int = 64, overlap: int = 16) -> np.ndarray:
        """Upscale ``(H, W, C)`` uint8 through the serving path's tiles, one tile a pass, without Ray."""

        async def infer_tile(tile: np.ndarray) -> np.ndarray:
            return self.forward(tile[None].astype(np.float32) / 255.0)[0].transpose(2, 0, 1)

        return asyncio.run(upscale_tiled(image, self.scale, tile_size, overlap, infer_tile, window=1))

    def info(self) -> dict:
        """Card and runtime settings, for ``GET /v1/models``."""
        return {
            "scale": self.scale,
            "architecture": self.card.architecture.model_dump(),
            "weights": self.weights_ref,
            "metrics": self.card.metrics.model_dump() if self.card.metrics else None,
            "training": self.card.training.model_dump() if self.card.training else None,
            "backend": self.backend,
            "quantize": self.quantize,
            "providers": self.onnx.providers if self.onnx is not None else None,
            "device": self.device.type,
            "precision": self.precision,
            "ensemble": self.ensemble,
        }


async def upscale_tiled(
    image: np.ndarray,
    scale: int,
    tile_size: int,
    overlap: int,
    infer_tile: Callable[[np.ndarray], Awaitable[np.ndarray]],
    window: int,
) -> np.ndarray:
    """Upscale ``(H, W, C)`` uint8 (C in 1..4) to ``(H*scale, W*scale, C)`` uint8, tile by tile.

    ``infer_tile`` maps one ``(3, h, w)`` uint8 tile to ``(3, h*scale, w*scale)`` uint8 (in the
    deployment, the ``@serve.batch`` method). At most ``window`` tiles are in flight at a time:
    enough to fill batches, while memory stays bounded whatever the image size.

    Raises:
        InvalidInput: not a uint8 image array.
    """
    rgb, alpha, is_gray = split_channels(image)
    tiles, plan = split_tiles(rgb, tile_size, overlap)
    canvas = new_canvas(plan, scale, channels=3)
    for start in range(0, len(tiles), window):
        indices = range(start, min(start + window, len(tiles)))
        outputs = await asyncio.gather(*(infer_tile(tiles[i]) for i in indices))
        for index, output in zip(indices, outputs):
            paste_tile(canvas, output, index, plan, scale)
    return merge_channels(crop_canvas(canvas, plan, scale), alpha, is_gray)
