"""The diffusion family's request options: one typed definition per operation, the single source
of validation (422 with the field and its range) and of the OpenAPI, OIP and handle schemas.

Sizes are pixels; ``steps`` are denoising steps; ``seed`` is the seed of image 0 of the request
(image ``i`` uses ``seed + i``), so the same seed and settings give the same images. The
variant's config bounds some fields further (``max_width``, ``max_height``, ``max_steps``,
``max_images``; checked in the replica, also 422).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Scheduler classes diffusers ships for Stable Diffusion (its ``KarrasDiffusionSchedulers``, less
#: ``DPMSolverSDEScheduler``, which needs ``torchsde``, and ``EDMEulerScheduler``, which needs an
#: EDM-trained model). ``tests/unit/test_diffusion_params.py`` checks the list against diffusers.
SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler",
)  # fmt: skip
SchedulerName = Literal[SCHEDULERS]  # type: ignore[valid-type]
#: An adapter id: a file name in the variant's adapter folders, without ``.safetensors``.
ADAPTER_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_SEED = 2**32 - 1


class LoraRef(BaseModel):
    """One LoRA adapter of a request and its weight."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ADAPTER_ID, description="adapter id from GET /v1/diffusion/loras")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="the adapter's weight (1: as trained, 0: off)")


class Txt2ImgParams(BaseModel):
    """Options of a text-to-image request."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1, max_length=4000,
        description="what to draw; <lora:ID:WEIGHT> tags choose adapters and are removed from the text",
    )  # fmt: skip
    negative_prompt: str = Field("", max_length=4000, description="what to steer away from")
    steps: int = Field(25, ge=1, le=500, description="denoising steps (the variant's max_steps bounds it)")
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0, description="classifier-free guidance; <= 1 turns it off")
    width: int | None = Field(None, ge=8, le=8192, multiple_of=8, description="pixels, a multiple of 8; default: the model's native size")
    height: int | None = Field(None, ge=8, le=8192, multiple_of=8, description="pixels, a multiple of 8; default: the model's native size")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of image 0 (image i: seed + i); default: random, returned in the answer")
    scheduler: SchedulerName | None = Field(None, description="diffusers scheduler class; default: the model's own")
    num_images: int = Field(1, ge=1, le=16, description="images for this prompt (the variant's max_images bounds it)")
    format: Literal["png", "jpeg", "webp"] = Field("png", description="output image format")
    loras: list[LoraRef] = Field(default_factory=list, max_length=8, description="adapters and their weights")


class Img2ImgParams(Txt2ImgParams):
    """Options of an image-to-image request (the image itself: input ``image``)."""

    strength: float = Field(0.75, gt=0.0, le=1.0, description="how far from the input image: 1 ignores it")


class InpaintParams(Txt2ImgParams):
    """Options of an inpainting request (inputs ``image`` and ``mask``: white is repainted)."""

    strength: float = Field(1.0, gt=0.0, le=1.0, description="how far from the input inside the mask: 1 repaints it fully")
