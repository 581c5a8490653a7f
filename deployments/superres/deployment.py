"""The super-resolution deployment: one variant (one model folder) per deployment.

A request's encoded image is decoded here, in the replica, cut into fixed-size overlapping tiles
(``tiling.py``), and every tile goes through one ``@serve.batch`` method, so tiles of one big
image and of concurrent requests share forward passes of one shape; the result is encoded here
too. A scale no single variant has (x8 = x2 then x4) runs as a chain: the first variant of the
route decodes, upscales, hands the pixels to the next variant's replica, and encodes the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ray import serve

from pixelfleet.deployments import telemetry
from pixelfleet.deployments.resources import replica_threads
from pixelfleet.deployments.spec import Limits, Result, VariantAddress, VariantDeployment
from pixelfleet.deployments.superres.config import UpscaleParams
from pixelfleet.models.errors import InvalidInput, PayloadTooLarge
from pixelfleet.models.images import FAST_PNG_LEVEL, OUTPUT_MEDIA_TYPES, decode_image, encode_image, image_metadata, to_array
from pixelfleet.models.metrics import psnr_y
from pixelfleet.models.modelcard import resolve_model_folder

if TYPE_CHECKING:
    from pixelfleet.deployments.superres.upscaler import Upscaler

logger = logging.getLogger("ray.serve")


def _decode(data: bytes, max_pixels: int) -> tuple[np.ndarray, dict[str, bytes]]:
    """Pixels ``(H, W, C)`` uint8 and the metadata (EXIF, ICC) to carry to the output."""
    image = decode_image(data, max_pixels)
    return to_array(image), image_metadata(image)


def _check_pixels(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """An ``(H, W, C)`` uint8 array (C in 1..4) within ``max_pixels``; raises InvalidInput, PayloadTooLarge."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InvalidInput("expected (H, W, C) uint8 pixels with C in 1..4")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise PayloadTooLarge(f"image of {image.shape[0] * image.shape[1]} pixels is over the limit of {max_pixels}")
    return image


@serve.deployment(max_ongoing_requests=16, max_queued_requests=64)
class SuperResolution(VariantDeployment):
    """One super-resolution variant: an :class:`Upscaler`, its tiles batched with ``@serve.batch``.

    Args (from the family config's variant, ``config.py``): ``variant`` name, ``limits``
    (:class:`~pixelfleet.deployments.spec.Limits` as a dict), ``weights`` (``builtin:NAME`` or a
    folder), ``tile_size`` and ``overlap`` in LR pixels, ``max_batch_size`` tiles per forward
    pass, ``batch_wait_timeout_s`` seconds a batch waits to fill, ``adaptive_batch_wait`` (wait
    only while another request is in the replica; a lone request's tiles go at once),
    ``concurrent_batches`` (forward passes at once, each in its own thread: on a CPU, 2 with
    ``num_threads: 1`` keeps both cores busy where one small tile cannot),
    ``num_threads`` (default: the replica's CPUs), ``png_level`` (zlib level of PNG output unless a request sets one), and the
    :class:`Upscaler` options ``backend``, ``quantize``, ``device``, ``precision``, ``ensemble``.
    """

    def __init__(
        self,
        variant: str,
        weights: str,
        limits: dict | None = None,
        tile_size: int = 128,
        overlap: int = 32,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        adaptive_batch_wait: bool = False,
        concurrent_batches: int = 1,
        num_threads: int | None = None,
        png_level: int = FAST_PNG_LEVEL,
        **upscaler_options: str,
    ) -> None:
        # torch comes in here, in the replica: Serve's build task imports this module only to bind the class
        from pixelfleet.deployments.superres.upscaler import Upscaler, upscale_tiled

        started = time.monotonic()
        self._upscale_tiled = upscale_tiled
        self.variant, self.tile_size, self.overlap, self.max_batch_size = variant, tile_size, overlap, max_batch_size
        self.png_level = png_level
        self.batch_wait_timeout_s, self.adaptive_batch_wait = batch_wait_timeout_s, adaptive_batch_wait
        self._upscaling = 0  # requests of this replica in upscale_pixels now
        self.limits = Limits.model_validate(limits or {})
        folder = resolve_model_folder(weights)
        self.upscaler: Upscaler = Upscaler(Path(folder), num_threads=replica_threads(num_threads), weights_ref=weights, **upscaler_options)
        # this replica's own batch queue (Ray's decorator on a method would share one per process)
        self._infer_tiles = serve.batch(
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, max_concurrent_batches=concurrent_batches
        )(self._forward_tiles)
        self.upscaler.forward(np.zeros((1, 3, tile_size, tile_size), dtype=np.float32))  # warm-up
        self.load_seconds = time.monotonic() - started
        telemetry.record_load(variant, self.load_seconds)
        logger.info("variant %s: x%d loaded from %s in %.1f s", variant, self.upscaler.scale, weights, self.load_seconds)

    async def _forward_tiles(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """One batch (``self._infer_tiles`` is this method under ``serve.batch``, with up to
        ``concurrent_batches`` batches running at once, each forward pass in its own thread):
        each item ``(3, h, w)`` uint8 -> ``(3, h*s, w*s)`` uint8.

        Tiles are ``tile_size`` square, except that an image smaller than a tile is one tile of its
        own size; one forward pass per distinct shape in the batch.
        """
        telemetry.record_batch(self.variant, len(tiles))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, tile in enumerate(tiles):
            by_shape.setdefault(tile.shape, []).append(index)
        outputs: list[np.ndarray] = [np.empty(0)] * len(tiles)
        for indices in by_shape.values():
            batch = np.stack([tiles[i] for i in indices]).astype(np.float32) / 255.0
            upscaled = await asyncio.to_thread(self.upscaler.forward, batch)
            for index, output in zip(indices, upscaled.transpose(0, 3, 1, 2)):
                outputs[index] = output
        return outputs

    async def upscale_pixels(self, image: np.ndarray) -> np.ndarray:
        """One stage: ``(H, W, C)`` uint8 (C in 1..4) -> ``(H*scale, W*scale, C)`` uint8.

        Raises:
            InvalidInput: not a uint8 image array.
        """
        self._upscaling += 1
        try:
            if self.adaptive_batch_wait:  # a batch waits to fill only while another request is here: a lone one never waits
                self._infer_tiles.set_batch_wait_timeout_s(self.batch_wait_timeout_s if self._upscaling > 1 else 0.0)
            return await self._upscale_tiled(image, self.upscaler.scale, self.tile_size, self.overlap, self._infer_tiles, 4 * self.max_batch_size)
        finally:
            self._upscaling -= 1
            if self.adaptive_batch_wait and self._upscaling <= 1:  # the one left (if any) is alone now: no wait
                self._infer_tiles.set_batch_wait_timeout_s(0.0)

    async def upscale(self, image: bytes | np.ndarray, params: dict, route: list[VariantAddress]) -> Result:
        """Upscale an encoded image (PNG, JPEG, WebP, TIFF, AVIF, BMP, GIF) or ``(H, W, C)`` uint8
        pixels through every variant of ``route`` (this one first); answer in kind: the image
        encoded as ``params["format"]``, EXIF and ICC carried over, or pixels.

        Raises:
            InvalidInput, UnsupportedMediaType: not a decodable image.
            PayloadTooLarge: input over ``max_pixels`` or output over ``max_output_pixels``.
            Unprocessable: bad ``params``.
        """
        options = UpscaleParams.model_validate(params)
        if isinstance(image, (bytes, bytearray)):
            with telemetry.span("decode"):
                pixels, metadata = await asyncio.to_thread(_decode, bytes(image), self.limits.max_pixels)
        else:
            pixels, metadata = _check_pixels(image, self.limits.max_pixels), None
        total = options.scale or self.upscaler.scale
        output_pixels = pixels.shape[0] * pixels.shape[1] * total * total
        if output_pixels > self.limits.max_output_pixels:
            raise PayloadTooLarge(f"the x{total} output would have {output_pixels} pixels; the limit is {self.limits.max_output_pixels}")
        with telemetry.span("inference", scale=total):
            pixels = await self.upscale_pixels(pixels)
            for stage in route[1:]:  # progressive upscaling: the next variants of the chain, on their replicas
                pixels = await stage.handle().invoke.remote("upscale_pixels", pixels, context=telemetry.call_context(stage.family, stage.variant))
        if metadata is None:
            return Result(pixels, "application/octet-stream")
        with telemetry.span("encode", format=options.format):
            encoded = await asyncio.to_thread(encode_image, pixels, options.format, metadata, self.png_level if options.png_level is None else options.png_level)
        return Result(encoded, OUTPUT_MEDIA_TYPES[options.format])

    def compare(self, operation: str, primary: Result, own: Result, params: dict) -> float | None:
        """PSNR-Y in dB between the primary's and this variant's output (100 when identical)."""
        decode = lambda r: r.content if isinstance(r.content, np.ndarray) else to_array(decode_image(r.content, 10**9))  # noqa: E731
        a, b = decode(primary), decode(own)
        if a.shape != b.shape or a.shape[2] != 3:
            return None
        return min(psnr_y(a, b, border=0), 100.0)  # identical images: 100 dB, not inf

    def info(self) -> dict:
        """What ``GET /v1/models`` shows for this variant (no server paths)."""
        return {
            "variant": self.variant,
            **self.upscaler.info(),
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "max_batch_size": self.max_batch_size,
            "png_level": self.png_level,
            "load_seconds": round(self.load_seconds, 2),
        }

    def ready(self) -> bool:
        """True once the model is loaded and warmed up (the constructor has returned)."""
        return True
