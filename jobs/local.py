"""Job work without a running app: a :class:`~pixelfleet.jobs.context.JobContext` whose
``infer`` runs the super-resolution family's own upscaler code in this process
(``deployments/superres/upscaler.py``: the same tiles and networks as the replicas), and whose
progress and checkpoints stay in memory. ``pixelfleet upscale`` without ``--url`` runs batch and
video work through it; tests run the work modules through it without Ray.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from pixelfleet.deployments.superres.config import UpscaleParams
from pixelfleet.deployments.superres.upscaler import Upscaler
from pixelfleet.jobs.context import InferResult
from pixelfleet.jobs.work import parse_params
from pixelfleet.models.errors import Unprocessable
from pixelfleet.models.images import OUTPUT_MEDIA_TYPES, decode_image, encode_image, image_metadata, to_array
from pixelfleet.models.modelcard import resolve_model_folder

#: The shipped model of each scale factor (``models/weights``).
BUILTIN_BY_SCALE = {2: "builtin:srresnet-x2", 4: "builtin:srresnet-x4"}
MAX_PIXELS = 16_000_000


class LocalUpscaler:
    """The ``superres`` family's ``upscale`` in this process: encoded image bytes in, encoded out.

    Args:
        weights: a model folder or ``builtin:NAME``; default: the shipped model of ``scale``.
        scale: picks the shipped model (2 or 4) when ``weights`` is not given.
        tile_size, overlap: LR pixels, as a variant's config.
        precision: autocast of the torch backend (``float32`` default, ``auto``: bf16 where native).
        num_threads: torch threads (default: every CPU).
    """

    def __init__(
        self, weights: str | None = None, scale: int = 4, tile_size: int = 192, overlap: int = 32, precision: str = "float32",
        num_threads: int | None = None,
    ) -> None:  # fmt: skip
        if weights is None:
            if scale not in BUILTIN_BY_SCALE:
                raise Unprocessable(f"no shipped model upscales x{scale}; shipped: {sorted(BUILTIN_BY_SCALE)}, or give weights")
            weights = BUILTIN_BY_SCALE[scale]
        self.weights = weights
        self.upscaler = Upscaler(Path(resolve_model_folder(weights)), precision=precision, num_threads=num_threads or os.cpu_count() or 1,
                                 weights_ref=weights)  # fmt: skip
        self.tile_size, self.overlap = tile_size, overlap
        self.variant = Path(weights.removeprefix("builtin:")).name
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every thread

    def upscale(self, data: bytes, params: dict) -> InferResult:
        """Upscale one encoded image (``params``: the family's options; ``scale``, if given,
        must be the model's).

        Raises:
            InvalidInput, UnsupportedMediaType, PayloadTooLarge: not a decodable image, too large.
            Unprocessable: bad params, or another scale than the model's.
        """
        options = parse_params(UpscaleParams, params)
        if options.scale not in (None, self.upscaler.scale):
            raise Unprocessable(f"the local model upscales x{self.upscaler.scale}, not x{options.scale}")
        image = decode_image(data, MAX_PIXELS)
        with self._lock:
            pixels = self.upscaler.upscale(to_array(image), self.tile_size, self.overlap)
        level = options.png_level if options.png_level is not None else 1
        content = encode_image(pixels, options.format, image_metadata(image), level)
        return InferResult(content, OUTPUT_MEDIA_TYPES[options.format], self.variant)


class LocalContext:
    """A :class:`~pixelfleet.jobs.context.JobContext` in this process.

    ``infer`` runs ``upscaler`` in a thread (only the ``superres`` family's ``upscale``);
    ``on_progress(done, total, stage)`` sees the progress (a progress bar); checkpoints are kept
    in :attr:`checkpoints` (the last one is what a rerun would resume from); ``cancel()`` makes
    :meth:`cancelled` true.
    """

    def __init__(
        self, upscaler: LocalUpscaler, params: dict, family: str = "superres", operation: str = "batch",
        resume_state: dict | None = None, on_progress: Callable[[int, int, str], None] | None = None, job_id: str | None = None,
    ) -> None:  # fmt: skip
        self.job_id = job_id or uuid.uuid4().hex
        self.family, self.operation, self.params = family, operation, params
        self.attempt = 1 if resume_state is None else 2
        self.resume_state = resume_state
        self.upscaler = upscaler
        self.on_progress = on_progress
        self.checkpoints: list[dict] = []
        self._cancelled = False

    async def infer(self, family: str, operation: str, data: bytes, params: dict, model: str | None = None) -> InferResult:
        if (family, operation) != ("superres", "upscale"):
            raise Unprocessable(f"only superres/upscale runs without an app, not {family}/{operation}")
        return await asyncio.to_thread(self.upscaler.upscale, data, params)

    async def progress(self, done: int, total: int, stage: str) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, stage)

    async def checkpoint(self, state: dict) -> None:
        self.checkpoints.append(state)

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled
