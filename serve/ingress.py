"""The ingress: one FastAPI deployment in front of every model family.

HTTP routes and Python methods share one implementation, so ``POST /v1/superres`` and
``await handle.upscale.remote(...)`` behave the same. Errors of the :mod:`serve.errors`
hierarchy become JSON bodies ``{"error": {"code", "message"}}`` with their status, here only.
"""

import asyncio
import logging
import math
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve.config import AppConfig
from serve.errors import Overloaded, PayloadTooLarge, PixelfleetError, Unprocessable
from serve.images import OUTPUT_MEDIA_TYPES, decode_image, encode_image, image_metadata, to_array, to_rgb
from serve.routing import pick_ocr_variant, superres_chain
from serve.uploads import IMAGE_FIELD, read_upload

logger = logging.getLogger("ray.serve")
VARIANT_HEADER = "X-Pixelfleet-Variant"
READY_TIMEOUT_S = 2.0

api = FastAPI(
    title="pixelfleet",
    version="0.1.0",
    description="Image models on Ray Serve: super-resolution and OCR. Errors are JSON: "
    '`{"error": {"code": ..., "message": ...}}`.',
)


class SuperResParams(BaseModel):
    """Options of a super-resolution request (query parameters, or form fields with multipart)."""

    model_config = ConfigDict(extra="forbid")

    scale: int | None = Field(None, ge=2, le=8, description="scale factor; default: the default variant's. A scale no single variant has is served by chaining variants (e.g. 8 = 2 x 4)")
    format: Literal["png", "jpeg", "webp", "tiff", "avif"] = Field("png", description="output image format; EXIF and ICC profile are carried over")
    model: str | None = Field(None, description="variant id from GET /v1/models; default: the family's default")


class OCRParams(BaseModel):
    """Options of an OCR request."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="variant id from GET /v1/models (rapidocr, tesseract)")


def _image_body(description: str) -> dict:
    """OpenAPI request body: a raw image or a multipart upload with field ``image``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    form = {"schema": {"type": "object", "required": [IMAGE_FIELD], "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"image/png": binary, "image/jpeg": binary, "image/webp": binary, "image/tiff": binary, "image/avif": binary, "multipart/form-data": form},
        }
    }


def _describe(errors: list[dict]) -> str:
    """Pydantic/FastAPI validation errors as one line: ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def _params(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """Request options validated by ``model`` (422 if bad); a None value means not given."""
    try:
        return model.model_validate({key: value for key, value in values.items() if value is not None})
    except ValidationError as err:
        raise Unprocessable(_describe(err.errors())) from None


def error_response(err: PixelfleetError) -> JSONResponse:
    """The one mapping from an error of :mod:`serve.errors` to an HTTP response."""
    return JSONResponse({"error": {"code": err.code, "message": err.message}}, status_code=err.status, headers=err.headers)


@api.exception_handler(PixelfleetError)
async def _pixelfleet_error(request: Request, err: PixelfleetError) -> JSONResponse:
    # Errors raised inside a deployment arrive wrapped by Ray; ``cause`` is the original.
    return error_response(getattr(err, "cause", None) or err)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    message = _describe(err.errors())
    return error_response(Unprocessable(message))


async def _call(response: DeploymentResponse) -> Any:
    """Await a family deployment's answer; a full queue there becomes :class:`Overloaded`.

    (Ray Serve installs its own plain-text handler for ``BackPressureError`` on the ingress's
    FastAPI app, so the conversion happens here, where the JSON error format is kept.)
    """
    try:
        return await response
    except BackPressureError:
        raise Overloaded("the model is at capacity; retry shortly") from None


@serve.deployment(max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress(api)
class Ingress:
    """Routes requests to the variants of each family; holds one handle per variant."""

    def __init__(self, config: dict, superres: dict[str, DeploymentHandle], ocr: dict[str, DeploymentHandle]) -> None:
        self.config = AppConfig.model_validate(config)
        self.superres_handles = superres
        self.ocr_handles = ocr
        self._superres_scales: dict[str, int] | None = None

    # ---- Python API (also reached by handle: serve.get_app_handle("pixelfleet")) ----

    async def upscale(self, image: bytes, scale: int | None = None, format: str = "png", model: str | None = None) -> bytes:
        """Upscale an encoded image (PNG, JPEG, WebP, TIFF, AVIF, BMP, GIF); return it encoded as ``format``.

        Raises the :mod:`serve.errors` of the HTTP route (e.g. :class:`Unprocessable` for a scale
        no variant serves).
        """
        params = _params(SuperResParams, {"scale": scale, "format": format, "model": model})
        encoded, _ = await self._upscale(image, params)
        return encoded

    async def ocr(self, image: bytes, model: str | None = None) -> dict:
        """Recognise text in an encoded image: ``{"text", "lines": [{"text", "confidence", "box"}]}``."""
        result, _ = await self._ocr(image, _params(OCRParams, {"model": model}))
        return result

    async def list_models(self) -> dict:
        """Every family with its default and its variants' cards (what ``GET /v1/models`` returns)."""
        families = {"superres": (self.config.superres.default, self.superres_handles), "ocr": (self.config.ocr.default, self.ocr_handles)}
        listing = {}
        for family, (default, handles) in families.items():
            infos = await asyncio.gather(*(_call(handle.info.remote()) for handle in handles.values()))
            listing[family] = {"default": default, "variants": dict(zip(handles, infos))}
        return {"families": listing}

    async def ready(self) -> dict[str, bool]:
        """Whether each variant's replica answers (``family/variant`` -> bool) within 2 s."""
        handles = {f"superres/{n}": h for n, h in self.superres_handles.items()} | {f"ocr/{n}": h for n, h in self.ocr_handles.items()}

        async def call_ready(handle: DeploymentHandle) -> bool:
            return await handle.ready.remote()

        async def answers(handle: DeploymentHandle) -> bool:
            try:
                return bool(await asyncio.wait_for(call_ready(handle), READY_TIMEOUT_S))
            except Exception as err:  # not up yet, or failing: not ready either way
                logger.info("readiness: %s does not answer yet: %r", handle.deployment_name, err)
                return False

        states = await asyncio.gather(*(answers(h) for h in handles.values()))
        return dict(zip(handles, states))

    # ---- shared implementation ----

    async def _scales(self) -> dict[str, int]:
        if self._superres_scales is None:
            infos = await asyncio.gather(*(_call(h.info.remote()) for h in self.superres_handles.values()))
            self._superres_scales = {name: info["scale"] for name, info in zip(self.superres_handles, infos)}
        return self._superres_scales

    def _decode(self, data: bytes) -> tuple[np.ndarray, dict[str, bytes]]:
        """Pixels and the metadata (EXIF, ICC) to carry to an output image."""
        image = decode_image(data, self.config.limits.max_pixels)
        return to_array(image), image_metadata(image)

    async def _upscale(self, data: bytes, params: SuperResParams) -> tuple[bytes, str]:
        scales = await self._scales()
        chain = superres_chain(scales, self.config.superres.default, params.scale, params.model)
        array, metadata = await asyncio.to_thread(self._decode, data)  # codecs off the event loop
        total = math.prod(scales[variant] for variant in chain)
        output_pixels = array.shape[0] * array.shape[1] * total * total
        if output_pixels > self.config.limits.max_output_pixels:
            raise PayloadTooLarge(f"the x{total} output would have {output_pixels} pixels; the limit is {self.config.limits.max_output_pixels}")
        for variant in chain:  # progressive upscaling when no single variant has the scale
            array = await _call(self.superres_handles[variant].upscale.remote(array))
        return await asyncio.to_thread(encode_image, array, params.format, metadata), "+".join(chain)

    async def _ocr(self, data: bytes, params: OCRParams) -> tuple[dict, str]:
        variant = pick_ocr_variant(list(self.ocr_handles), self.config.ocr.default, params.model)
        array, _ = await asyncio.to_thread(self._decode, data)
        rgb = to_rgb(array)
        return await _call(self.ocr_handles[variant].recognize.remote(rgb)), variant

    # ---- HTTP routes ----

    @api.post("/v1/superres", response_class=Response, openapi_extra=_image_body("the image to upscale"),
              responses={200: {"content": {t: {} for t in OUTPUT_MEDIA_TYPES.values()}, "description": "the upscaled image"}})
    async def http_superres(self, request: Request, query: SuperResParams = Query()) -> Response:
        """Upscale an image by the scale factor of a super-resolution variant."""
        upload = await read_upload(request, self.config.limits.max_body_bytes)
        params = _params(SuperResParams, {**query.model_dump(exclude_unset=True), **upload.fields})
        encoded, variant = await self._upscale(upload.data, params)
        return Response(encoded, media_type=OUTPUT_MEDIA_TYPES[params.format], headers={VARIANT_HEADER: f"superres/{variant}"})

    @api.post("/v1/ocr", openapi_extra=_image_body("the image to read"))
    async def http_ocr(self, request: Request, query: OCRParams = Query()) -> JSONResponse:
        """Recognise text: ``{"text", "lines": [{"text", "confidence", "box": [x0, y0, x1, y1]}]}`` in reading order."""
        upload = await read_upload(request, self.config.limits.max_body_bytes)
        params = _params(OCRParams, {**query.model_dump(exclude_unset=True), **upload.fields})
        result, variant = await self._ocr(upload.data, params)
        return JSONResponse(result, headers={VARIANT_HEADER: f"ocr/{variant}"})

    @api.get("/v1/models")
    async def http_models(self) -> dict:
        """Families, their default variant, and each variant's model card (scale, weights, metrics)."""
        return await self.list_models()

    @api.get("/healthz")
    async def http_healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def http_readyz(self) -> JSONResponse:
        """Readiness: 200 once every variant has loaded its model, else 503 with what is missing."""
        states = await self.ready()
        ready = all(states.values())
        return JSONResponse({"ready": ready, "variants": states}, status_code=200 if ready else 503)
