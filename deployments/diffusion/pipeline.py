"""Stable Diffusion pipelines without Ray: loading a variant's model (a diffusers folder or a
single file, safely), one generation job, and one pipeline call for a group of jobs that share
their settings and adapters. The deployment (``deployment.py``) runs these on one worker thread.

diffusers is imported inside the functions: the ingress imports this family's spec, and must not
pay for diffusers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pixelfleet.models.errors import (
    InternalError,
    ModelFileNotFound,
    UnrecognizedModelFile,
    UnsafeModelFile,
)
from pixelfleet.models.images import OUTPUT_MEDIA_TYPES, encode_image
from pixelfleet.models.modelfiles import inspect

logger = logging.getLogger("ray.serve")
#: Suffixes of pickle-based checkpoints (refused unless ``allow_pickle``).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class Interrupted(Exception):
    """Raised inside the denoising loop when the caller went away (a streamed request)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted after step {step}")
        self.step = step


@dataclass
class Pipelines:
    """The variant's three pipelines, sharing one set of components (UNet, VAE, text
    encoders): ``txt2img``, ``img2img``, ``inpaint``; ``architecture`` is ``sd`` or ``sdxl``;
    ``native_size`` the UNet's sample size in pixels."""

    txt2img: Any
    img2img: Any
    inpaint: Any
    architecture: str
    native_size: int
    scheduler_config: dict
    scheduler_class: str

    def of(self, operation: str):
        return {"txt2img": self.txt2img, "img2img": self.img2img, "inpaint": self.inpaint}[operation]

    @property
    def cross_attention_dim(self) -> int:
        return int(self.txt2img.unet.config.cross_attention_dim)


def check_model_path(model: str, allow_pickle: bool) -> Path:
    """The model's path, checked before diffusers reads it: it exists; a folder has
    ``model_index.json``; a single file is safetensors (a pickle only with ``allow_pickle``).
    :func:`load_pipelines` then has modelfiles check the headers and shapes.

    Raises:
        ModelFileNotFound, UnrecognizedModelFile, UnsafeModelFile, CorruptModelFile.
    """
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelFileNotFound(f"{path.name}: no such file or folder")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UnrecognizedModelFile(f"{path.name}: a diffusers folder needs model_index.json")
        return path
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UnsafeModelFile(f"{path.name} is a pickle checkpoint, which can run code when loaded; set allow_pickle: true to load it (weights only)")
    if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise UnrecognizedModelFile(f"{path.name}: a single-file model is .safetensors (or a .ckpt with allow_pickle)")
    return path


def load_pipelines(
    model: str,
    config: str | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    precision: str = "float32",
    cpu_offload: bool = False,
    attention_slicing: bool = False,
) -> Pipelines:
    """Load a variant's model into its txt2img, img2img and inpaint pipelines (shared components),
    offline (``local_files_only``), safety checker off, progress bars off.

    Folders load with ``use_safetensors=True`` unless ``allow_pickle`` (then diffusers falls back to
    ``.bin`` files with ``torch.load(weights_only=True)``); single files through diffusers'
    ``from_single_file`` with ``config`` (a diffusers folder) for the component configs.

    Raises:
        The ModelFileError kinds of :func:`check_model_path`; UnsafeModelFile for a folder with
        only pickle weights; InternalError when diffusers cannot build the pipeline.
    """
    import torch
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    path = check_model_path(model, allow_pickle)
    facts = inspect(path, allow_pickle=allow_pickle)  # headers and shapes checked; SD or SDXL; raises ModelFileError kinds
    dtype = getattr(torch, precision)
    try:
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text())
            extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
            pipe = AutoPipelineForText2Image.from_pretrained(
                path, dtype=dtype, local_files_only=True, use_safetensors=None if allow_pickle else True, **extra
            )
        else:
            sdxl = facts.architecture == "sdxl"
            cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
            extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
            pipe = cls.from_single_file(
                str(path), config=str(Path(config).expanduser()) if config else None, torch_dtype=dtype, local_files_only=True, **extra
            )
    except OSError as err:  # diffusers' message names what is missing, e.g. no safetensors weights
        if not allow_pickle and "safetensors" in str(err):
            raise UnsafeModelFile(f"{path.name}: no safetensors weights (only pickles?); set allow_pickle: true to load them") from None
        raise UnrecognizedModelFile(f"{path.name}: diffusers cannot load it: {str(err).splitlines()[0][:300]}") from None
    except (ValueError, KeyError, RuntimeError) as err:
        raise InternalError(f"{path.name}: diffusers cannot build a pipeline from it ({type(err).__name__})") from err
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    inpaint = AutoPipelineForInpainting.from_pipe(pipe)
    if cpu_offload:  # accelerate hooks on the shared modules: each moves to the GPU while it runs
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if attention_slicing:
        pipe.enable_attention_slicing()
    for p in (pipe, img2img, inpaint):
        p.set_progress_bar_config(disable=True)
    architecture = "sdxl" if "XL" in type(pipe).__name__ else "sd"
    native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return Pipelines(pipe, img2img, inpaint, architecture, native, dict(pipe.scheduler.config), type(pipe.scheduler).__name__)


def adapter_name(adapter_id: str) -> str:
    """peft's name of a loaded adapter (a Python identifier, unlike some ids)."""
    digest = hashlib.sha1(adapter_id.encode()).hexdigest()[:8]  # ids differing only in '.'/'-' stay apart
    return "lora_" + "".join(c if c.isalnum() else "_" for c in adapter_id) + f"_{digest}"


@dataclass
class Job:
    """One request, prepared: ``operation`` (txt2img, img2img, inpaint), the prompt the model
    sees (tags removed), its ``adapters`` ``((id, scale), ...)`` sorted, sizes in pixels,
    ``seed`` of image 0, and for img2img/inpaint the PIL ``image`` (RGB) and ``mask`` (L), both
    ``width x height``."""

    operation: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    num_images: int
    scheduler: str | None
    adapters: tuple[tuple[str, float], ...]
    strength: float = 1.0
    image: Any = None
    mask: Any = None
    adapter_files: dict[str, str] = field(default_factory=dict)  # id -> path, to load again if evicted meanwhile

    @property
    def key(self) -> tuple:
        """What one pipeline call must share: every setting but the prompts and seeds."""
        return (self.operation, self.steps, self.guidance_scale, self.width, self.height, self.scheduler, self.strength, self.adapters)


def group_jobs(jobs: list[Job], max_images: int) -> list[list[int]]:
    """Indices of ``jobs`` grouped by :attr:`Job.key` (first-seen order), each group cut so its
    images stay within ``max_images`` (a job bigger than that runs alone). Jobs of different
    keys (e.g. different adapter sets) never share a group."""
    groups: dict[tuple, list[list[int]]] = {}
    for index, job in enumerate(jobs):
        chunks = groups.setdefault(job.key, [[]])
        if chunks[-1] and sum(jobs[i].num_images for i in chunks[-1]) + job.num_images > max_images:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunks in groups.values() for chunk in chunks]


def run_group(
    pipes: Pipelines,
    jobs: list[Job],
    activate: Callable[[Any, list[Job]], None],
    on_step: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """One pipeline call for ``jobs`` (all of one :attr:`Job.key`): every job's images, each
    ``(num_images, H, W, 3)`` float32 in [0, 1].

    Image ``i`` of a job starts from the noise of ``torch.Generator("cpu").manual_seed(seed + i)``,
    so a job's images do not depend on the other jobs of the call. ``activate(pipe, jobs)`` sets
    the adapters (on this thread, before the call). ``on_step(step, total)`` runs after each
    denoising step (1-based); it may raise :class:`Interrupted` to stop the loop.
    """
    import diffusers
    import torch

    first = jobs[0]
    pipe = pipes.of(first.operation)
    scheduler_cls = getattr(diffusers, first.scheduler or pipes.scheduler_class)
    pipe.scheduler = scheduler_cls.from_config(pipes.scheduler_config)  # a fresh one: schedulers keep step state
    activate(pipe, jobs)
    prompts, negatives, generators, images, masks = [], [], [], [], []
    for job in jobs:
        for i in range(job.num_images):
            prompts.append(job.prompt)
            negatives.append(job.negative_prompt)
            generators.append(torch.Generator("cpu").manual_seed(job.seed + i))
            images.append(job.image)
            masks.append(job.mask)
    kwargs: dict[str, Any] = {
        "prompt": prompts, "negative_prompt": negatives, "num_inference_steps": first.steps,
        "guidance_scale": first.guidance_scale, "generator": generators, "output_type": "np",
    }  # fmt: skip
    if first.operation in ("txt2img", "inpaint"):
        kwargs.update(width=first.width, height=first.height)
    if first.operation == "img2img":
        kwargs.update(image=images, strength=first.strength)
    if first.operation == "inpaint":
        kwargs.update(image=images, mask_image=masks, strength=first.strength)
    if on_step is not None:

        def callback(p, step: int, timestep, callback_kwargs: dict) -> dict:
            on_step(step + 1, int(p.num_timesteps))
            return callback_kwargs

        kwargs["callback_on_step_end"] = callback
    with torch.inference_mode():
        out = pipe(**kwargs).images
    results, start = [], 0
    for job in jobs:
        results.append(np.asarray(out[start : start + job.num_images], dtype=np.float32))
        start += job.num_images
    return results


def encode_images(images: np.ndarray, fmt: str) -> list[str]:
    """``(N, H, W, 3)`` float32 in [0, 1] -> N base64 strings of ``fmt`` files (PNG, JPEG, WebP)."""
    pixels = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return [base64.b64encode(encode_image(image, fmt)).decode("ascii") for image in pixels]


def media_type(fmt: str) -> str:
    return OUTPUT_MEDIA_TYPES[fmt]
