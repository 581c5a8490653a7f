"""The diffusion family: Stable Diffusion pipelines (SD 1.x/2.x, SDXL) from a local diffusers
folder or single file, with LoRA adapters chosen per request (issue 13).

``SPEC`` is what the graph reads (``deployments/spec.py``). Modules: ``config.py`` (variant
config), ``params.py`` (request options: the API's schema), ``prompt.py`` (``<lora:NAME:WEIGHT>``
tags), ``adapters.py`` (adapter folders, inspection, fit), ``pipeline.py`` (loading and
generation without Ray), ``deployment.py`` (the Ray Serve deployment).

Operations take a JSON body (``Operation.body == "json"``): ``POST /v1/diffusion/txt2img``,
``/img2img`` (input ``image``), ``/inpaint`` (inputs ``image`` and ``mask``), each also streamed
(``/stream``, server-sent events), over OIP v2 (model ``diffusion``, parameter ``operation``),
and by handle (``handle.txt2img.remote(prompt=...)``); ``GET /v1/diffusion/loras`` lists the
adapters.
"""

from __future__ import annotations

from pixelfleet.deployments.diffusion.config import DiffusionConfig
from pixelfleet.deployments.diffusion.deployment import Diffusion
from pixelfleet.deployments.diffusion.params import (
    Img2ImgParams,
    InpaintParams,
    Txt2ImgParams,
)
from pixelfleet.deployments.spec import FamilySpec, Listing, Operation

_RESULT = '{"images": [base64, ...], "media_type", "seeds", "width", "height", "steps", "scheduler", "prompt", "loras", "batch_images"}'

TXT2IMG = Operation(
    name="txt2img", route="txt2img", params=Txt2ImgParams, output="json", body="json", stream=True, idempotent=False,
    summary=f"Text to image: {_RESULT}",
)  # fmt: skip
IMG2IMG = Operation(
    name="img2img", route="img2img", params=Img2ImgParams, output="json", body="json", stream=True, idempotent=False,
    images={"image": True}, summary="Image to image from input image (base64 in JSON, or a multipart file)",
)  # fmt: skip
INPAINT = Operation(
    name="inpaint", route="inpaint", params=InpaintParams, output="json", body="json", stream=True, idempotent=False,
    images={"image": True, "mask": True}, summary="Repaint input image where input mask is white",
)  # fmt: skip

SPEC = FamilySpec(
    name="diffusion",
    title="Stable Diffusion (txt2img, img2img, inpaint; LoRA adapters per request)",
    config=DiffusionConfig,
    deployment=Diffusion,
    operations=(TXT2IMG, IMG2IMG, INPAINT),
    listings=(Listing(route="loras", method="loras", summary="LoRA adapters of a variant: id, rank, base family, whether each fits"),),
)
