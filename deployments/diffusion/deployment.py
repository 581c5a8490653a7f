"""The diffusion deployment: one variant (one Stable Diffusion model) per deployment.

A request is prepared in the replica (bounds, prompt tags, adapters, input images decoded), then
goes through one ``@serve.batch`` method: the batch is cut into groups of requests that share
every setting and the same adapter set (``pipeline.group_jobs``), and each group is one pipeline
call, so requests with different adapters are never mixed. LoRA adapters load through
``@serve.multiplexed`` (an LRU of ``max_loaded_adapters`` per replica; an evicted adapter is
deleted from the pipeline). Every pipeline operation (load, adapters, generation) runs on one
worker thread, in order, so they never race on the shared components.

A streamed request runs alone (not batched): progress events after each denoising step, then
the result; when the caller goes away the generator is cancelled here, and the denoising loop
stops at its next step (``callback_on_step_end`` raises :class:`pipeline.Interrupted`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from pixelfleet.deployments import telemetry
from pixelfleet.deployments.diffusion import pipeline
from pixelfleet.deployments.diffusion.adapters import (
    AdapterCatalog,
    AdapterInfo,
    check_fits,
)
from pixelfleet.deployments.diffusion.config import DiffusionVariant
from pixelfleet.deployments.diffusion.params import (
    MAX_SEED,
    Img2ImgParams,
    InpaintParams,
    Txt2ImgParams,
)
from pixelfleet.deployments.diffusion.prompt import adapter_set
from pixelfleet.deployments.resources import replica_threads
from pixelfleet.deployments.spec import (
    Limits,
    Result,
    VariantAddress,
    VariantDeployment,
)
from pixelfleet.models.errors import ModelFileError, PayloadTooLarge, Unprocessable
from pixelfleet.models.images import decode_image
from pixelfleet.models.modelfiles import inspect, load_state_dict
from ray import serve

logger = logging.getLogger("ray.serve")
PARAMS = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams, "inpaint": InpaintParams}


class LoadedAdapter:
    """An adapter loaded into the replica's pipeline (what ``@serve.multiplexed`` caches).
    Serve calls :meth:`__del__` when it evicts it: the adapter is deleted from the pipeline on
    the worker thread (after the calls queued before it)."""

    def __init__(self, owner: Diffusion, info: AdapterInfo) -> None:
        self.owner, self.info, self._released = owner, info, False

    def __del__(self) -> None:
        if self._released:
            return
        self._released = True
        self.owner._held.discard(self.info.id)  # no longer in the LRU: the pipeline may drop it
        try:
            self.owner._worker.submit(self.owner._unload_adapter, self.info.id)
        except RuntimeError:  # the worker is shut down: the replica is going away
            pass


def _named(images: dict | bytes | None) -> dict:
    """The named image inputs: a dict as the REST/OIP front ends send it, or one image's bytes
    (a handle or job caller's ``img2img(png_bytes, ...)``) as input ``image``."""
    if isinstance(images, (bytes, bytearray)):
        return {"image": bytes(images)}
    if images is not None and not isinstance(images, dict):
        raise Unprocessable("the images are a dict of name -> encoded image bytes (image, mask)")
    return images or {}


@serve.deployment(max_ongoing_requests=8, max_queued_requests=32)
class Diffusion(VariantDeployment):
    """One diffusion variant.

    Args: ``variant`` (its name), ``limits`` (:class:`~pixelfleet.deployments.spec.Limits` as a
    dict: the input image's pixels, the output's pixels), and the fields of
    :class:`~pixelfleet.deployments.diffusion.config.DiffusionVariant`.

    Raises (the replica fails to start): the ModelFileError kinds for a missing, unsafe or
    corrupt model; InternalError when diffusers cannot build the pipeline.
    """

    def __init__(self, variant: str, limits: dict | None = None, **config: Any) -> None:
        import torch

        started = time.monotonic()
        self.variant = variant
        self.limits = Limits.model_validate(limits or {})
        self.config = DiffusionVariant.model_validate(config)
        torch.set_num_threads(replica_threads(self.config.num_threads))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusion")
        c = self.config
        self.pipes = pipeline.load_pipelines(c.model, c.config, c.allow_pickle, c.device, c.precision, c.cpu_offload, c.attention_slicing)
        self.model = inspect(Path(c.model).expanduser(), allow_pickle=c.allow_pickle)  # what adapters must fit (modelfiles)
        self.catalog = AdapterCatalog(c.adapters)
        self._loaded: dict[str, str] = {}  # adapter id -> peft adapter name, in the pipeline now (worker thread only)
        self._held: set[str] = set()  # adapter ids the multiplexed LRU holds (a LoadedAdapter alive)
        self._lora_active = False
        self.finished = self.interrupted = self.pipeline_calls = 0
        self.last_interrupted_step: int | None = None

        async def load_adapter(adapter_id: str) -> LoadedAdapter:  # a function, not a method: the LRU size is per variant
            return await self._load_adapter(adapter_id)

        self._adapter = serve.multiplexed(max_num_models_per_replica=c.max_loaded_adapters)(load_adapter)
        self._batched.set_max_batch_size(c.max_batch_size)
        self._batched.set_batch_wait_timeout_s(c.batch_wait_timeout_s)
        if c.warmup:
            size = min(self.pipes.native_size, 64)
            warm = pipeline.Job("txt2img", "warm up", "", 1, 1.0, size, size, 0, 1, None, ())
            self._worker.submit(pipeline.run_group, self.pipes, [warm], self._activate).result()
        telemetry.record_load(variant, time.monotonic() - started)

    # ---- operations ----

    async def txt2img(self, image: dict | None, params: dict, route: list[VariantAddress]) -> Result:
        """Text to image: ``{"images": [base64, ...], "seeds", "media_type", ...}``.

        Raises: Unprocessable (a bound of the variant, a bad tag, an adapter that does not fit),
        NotFound (an unknown adapter), ModelFileError (an unreadable adapter file).
        """
        return await self._generate("txt2img", image, params)

    async def img2img(self, image: dict | None, params: dict, route: list[VariantAddress]) -> Result:
        """Image to image from input ``image``; as :meth:`txt2img`, plus the image's errors
        (InvalidInput, UnsupportedMediaType, PayloadTooLarge)."""
        return await self._generate("img2img", image, params)

    async def inpaint(self, image: dict | None, params: dict, route: list[VariantAddress]) -> Result:
        """Repaint input ``image`` where input ``mask`` is white; as :meth:`img2img`."""
        return await self._generate("inpaint", image, params)

    async def txt2img_stream(self, image: dict | None, params: dict, route: list[VariantAddress]):
        """:meth:`txt2img` as events: ``accepted``, ``progress`` ``{"step", "steps"}`` per step,
        ``result`` (the JSON of :meth:`txt2img`)."""
        async for event in self._stream("txt2img", image, params):
            yield event

    async def img2img_stream(self, image: dict | None, params: dict, route: list[VariantAddress]):
        """:meth:`img2img` as events (see :meth:`txt2img_stream`)."""
        async for event in self._stream("img2img", image, params):
            yield event

    async def inpaint_stream(self, image: dict | None, params: dict, route: list[VariantAddress]):
        """:meth:`inpaint` as events (see :meth:`txt2img_stream`)."""
        async for event in self._stream("inpaint", image, params):
            yield event

    def loras(self) -> dict:
        """The adapters of the variant's folders (read now): id, rank, base, style, size, and
        whether each fits this variant's model (``GET /v1/diffusion/loras``)."""
        return {
            "variant": self.variant,
            "base": self.model.base,
            "cross_attention_dim": self.model.cross_attention_dim,
            "adapters": self.catalog.listing(self.model),
        }

    # ---- preparing a request ----

    async def _generate(self, operation: str, images: dict | bytes | None, params: dict) -> Result:
        job = await self._prepare(operation, _named(images), params)
        images_out, batch = await self._batched(job)
        self.finished += 1
        return Result(self._answer(job, images_out, params, batch), "application/json")

    async def _prepare(self, operation: str, images: dict, params: dict) -> pipeline.Job:
        options = PARAMS[operation].model_validate(params)
        c = self.config
        prompt, adapters = adapter_set(options.prompt, options.loras, c.max_adapters_per_request)
        if options.steps > c.max_steps:
            raise Unprocessable(f"steps: at most {c.max_steps} on this variant")
        if options.num_images > c.max_images:
            raise Unprocessable(f"num_images: at most {c.max_images} per request on this variant")
        image = mask = None
        if operation in ("img2img", "inpaint"):
            with telemetry.span("decode"):
                image = await asyncio.to_thread(self._decode, images.get("image"), "image", "RGB")
        width, height = self._size(options, image)
        if image is not None and image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        if operation == "inpaint":
            mask = await asyncio.to_thread(self._decode, images.get("mask"), "mask", "L")
            mask = mask.resize((width, height), Image.Resampling.NEAREST) if mask.size != (width, height) else mask
        files = {}
        for adapter_id, _ in adapters:  # loaded (or found loaded) through the multiplexed LRU
            loaded = await self._adapter(adapter_id)
            files[adapter_id] = loaded.info.path
        seed = options.seed if options.seed is not None else secrets.randbelow(MAX_SEED + 1)
        strength = getattr(options, "strength", 1.0)
        return pipeline.Job(
            operation, prompt, options.negative_prompt, options.steps, options.guidance_scale, width, height, seed,
            options.num_images, options.scheduler, adapters, strength, image, mask, files,
        )  # fmt: skip

    def _decode(self, data: bytes | None, name: str, mode: str) -> Image.Image:
        if not data:
            raise Unprocessable(f"{name}: this operation needs the image {name!r}")
        return decode_image(bytes(data), self.limits.max_pixels).convert(mode)

    def _size(self, options: Txt2ImgParams, image: Image.Image | None) -> tuple[int, int]:
        """Width and height in pixels: asked, else the input image's (rounded down to a multiple
        of 8), else the model's native size; within the variant's bounds (else 422)."""
        c = self.config
        if image is not None:
            default_w, default_h = max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)
        else:
            default_w = default_h = self.pipes.native_size
        width, height = options.width or default_w, options.height or default_h
        if width > c.max_width or height > c.max_height:
            raise Unprocessable(f"width x height {width}x{height}: at most {c.max_width}x{c.max_height} on this variant (give width and height)")
        if width * height > self.limits.max_output_pixels:
            raise PayloadTooLarge(f"{width}x{height} output is over the limit of {self.limits.max_output_pixels} pixels")
        return width, height

    # ---- adapters (the worker thread owns the pipeline) ----

    async def _load_adapter(self, adapter_id: str) -> LoadedAdapter:
        info = self.catalog.get(adapter_id)  # NotFound (404), ModelFileError (422)
        check_fits(info, self.model)  # Unprocessable (422)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._load_into_pipeline, adapter_id, info.path, True)
        return LoadedAdapter(self, info)

    def _load_into_pipeline(self, adapter_id: str, path: str, held: bool = False) -> None:
        """Load an adapter into the pipeline (worker thread); ``held``: for the multiplexed LRU,
        which then owns it (else it is dropped again after the pipeline call that needed it)."""
        if held:
            self._held.add(adapter_id)
        if adapter_id in self._loaded:
            return
        name = pipeline.adapter_name(adapter_id)
        try:
            state = load_state_dict(path)  # safetensors, header checked first (modelfiles)
            self.pipes.txt2img.load_lora_weights(state, adapter_name=name)
        except ModelFileError:
            raise
        except (ValueError, KeyError, RuntimeError) as err:  # peft/diffusers: keys or shapes that do not fit
            raise Unprocessable(f"adapter {adapter_id!r} cannot be applied to this variant: {str(err).splitlines()[0][:200]}") from None
        self._loaded[adapter_id] = name
        logger.info("adapter %s loaded (%d in the pipeline)", adapter_id, len(self._loaded))

    def _unload_adapter(self, adapter_id: str) -> None:
        name = self._loaded.pop(adapter_id, None)
        if name is not None:
            self.pipes.txt2img.delete_adapters([name])
            logger.info("adapter %s evicted", adapter_id)

    def _activate(self, pipe: Any, jobs: list[pipeline.Job]) -> None:
        """Set the group's adapters and weights on the pipeline (worker thread). An adapter
        evicted since the request was prepared is loaded again."""
        adapters = jobs[0].adapters
        if not adapters:
            if self._lora_active:
                pipe.disable_lora()
                self._lora_active = False
            return
        for adapter_id, _ in adapters:
            self._load_into_pipeline(adapter_id, jobs[0].adapter_files[adapter_id])
        if not self._lora_active:
            pipe.enable_lora()
            self._lora_active = True
        pipe.set_adapters([self._loaded[a] for a, _ in adapters], adapter_weights=[scale for _, scale in adapters])

    # ---- generation ----

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def _batched(self, jobs: list[pipeline.Job]) -> list[tuple[Any, int]]:
        """Every job's images, ``(num_images, H, W, 3)`` float32, and the images of the pipeline
        call that made them: one call per group of :func:`pipeline.group_jobs`."""
        results: list[tuple[Any, int]] = [None] * len(jobs)  # type: ignore[list-item]
        loop = asyncio.get_running_loop()
        for group in pipeline.group_jobs(jobs, self.config.max_batch_size * self.config.max_images):
            members = [jobs[i] for i in group]
            with telemetry.span("inference", images=sum(j.num_images for j in members)):
                outputs = await loop.run_in_executor(self._worker, contextvars.copy_context().run, self._run, members, None)
            for index, output in zip(group, outputs):
                results[index] = (output, sum(j.num_images for j in members))
        return results

    def _run(self, jobs: list[pipeline.Job], on_step) -> list:
        self.pipeline_calls += 1
        try:
            return pipeline.run_group(self.pipes, jobs, self._activate, on_step)
        finally:  # an adapter reloaded for this call after the LRU evicted it is not kept
            for adapter_id in [a for a in self._loaded if a not in self._held]:
                self._unload_adapter(adapter_id)

    async def _stream(self, operation: str, images: dict | bytes | None, params: dict):
        job = await self._prepare(operation, _named(images), params)
        yield {"event": "accepted", "data": {"seed": job.seed, "width": job.width, "height": job.height, "steps": job.steps}}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def on_step(step: int, total: int) -> None:  # worker thread
            loop.call_soon_threadsafe(events.put_nowait, {"step": step, "steps": total})
            if stop.is_set():
                raise pipeline.Interrupted(step)

        future = loop.run_in_executor(self._worker, contextvars.copy_context().run, self._run, [job], on_step)
        future.add_done_callback(partial(self._stream_done, stop))
        getter: asyncio.Future | None = None
        try:
            while not future.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield {"event": "progress", "data": getter.result()}
                else:
                    getter.cancel()
            outputs = future.result()
        finally:
            stop.set()  # the caller went away (GeneratorExit / CancelledError): the loop stops at its next step
            if getter is not None:
                getter.cancel()
        self.finished += 1
        yield {"event": "result", "data": self._answer(job, outputs[0], params, 1)}

    def _stream_done(self, stop: threading.Event, future: asyncio.Future) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, pipeline.Interrupted):
            self.interrupted += 1
            self.last_interrupted_step = error.step
            logger.info("streamed request stopped after step %d: the caller went away", error.step)

    def _answer(self, job: pipeline.Job, images: Any, params: dict, batch: int) -> dict:
        fmt = params.get("format", "png")
        return {
            "images": pipeline.encode_images(images, fmt),
            "media_type": pipeline.media_type(fmt),
            "seeds": [job.seed + i for i in range(job.num_images)],
            "width": job.width,
            "height": job.height,
            "steps": job.steps,
            "scheduler": job.scheduler or self.pipes.scheduler_class,
            "prompt": job.prompt,
            "loras": [{"id": a, "scale": s} for a, s in job.adapters],
            "batch_images": batch,
        }

    # ---- card ----

    def info(self) -> dict:
        """Variant card: model file name, architecture and base, native size, device and
        precision, bounds, adapters loaded now, and counters (finished, interrupted streams)."""
        c = self.config
        return {
            "variant": self.variant,
            "model": Path(c.model).name,
            "architecture": self.pipes.architecture,
            "base": self.model.base,
            "cross_attention_dim": self.model.cross_attention_dim,
            "native_size": self.pipes.native_size,
            "scheduler": self.pipes.scheduler_class,
            "device": c.device,
            "precision": c.precision,
            "bounds": {"max_width": c.max_width, "max_height": c.max_height, "max_steps": c.max_steps, "max_images": c.max_images},
            "adapters_loaded": sorted(self._loaded),
            "finished": self.finished,
            "pipeline_calls": self.pipeline_calls,
            "interrupted": self.interrupted,
            "last_interrupted_step": self.last_interrupted_step,
        }

    def ready(self) -> bool:
        """True: the constructor returns once the pipelines are loaded (and warmed up)."""
        return True
