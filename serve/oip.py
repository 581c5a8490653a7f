"""The Open Inference Protocol v2 (KServe OIP REST) front end, with Triton's binary tensor data
extension: ``tritonclient.http`` and KServe clients call pixelfleet's families as models.

Source: the KServe predict protocol v2 (``docs/predict-api/v2/required_api.md`` in
kserve/kserve) and Triton's binary tensor data and parameters extensions. The body codec is
:mod:`pixelfleet.serve.oip_codec` (pure functions); this module maps models to families.

Mapping:

- Each family is a model (``superres``, ``ocr``); each variant a version. ``/v2/models/{model}``
  routes by the A/B split (sticky per ``X-Client-Id``, as REST does); ``/versions/{version}``
  names the variant explicitly (REST's ``model=``).
- One input, ``image``: BYTES shape ``[1]`` (an encoded image: PNG, JPEG, ...), or UINT8
  ``[H, W, C]`` pixels (C in 1..4). An image operation answers in kind in its output ``image``
  (BYTES ``[1]`` encoded as ``parameters.format``, or UINT8 ``[H', W', C]``); a JSON operation
  (OCR) answers BYTES ``[1]`` in output ``json``: the UTF-8 JSON text.
- An operation with a JSON body (``Operation.body == "json"``, e.g. diffusion's ``txt2img``)
  takes its named images instead (``Operation.images``: ``image``, ``mask``), each BYTES ``[1]``,
  and options may come as ``[1]`` tensors named as the option too (``prompt`` BYTES ``[1]``:
  the one input of text-to-image); list and object options may be given as JSON text.
- The request's ``parameters`` are the operation's options (validated by its pydantic model),
  less Triton's reserved keys (``binary_data_output``, ``priority``, ``timeout``, ``sequence_*``,
  ``headers``, ``triton_*``), ``content_type`` and ``operation``, which picks an operation of the
  family other than its first.
- The response names the variant(s) in ``model_version`` and the ``X-Pixelfleet-Variant`` header.

Errors are ``{"error": "<message>"}`` (``serve/errors.py`` renders every error below ``/v2`` so):
400 for a malformed body or bad parameters (the spec's status for a failed inference; REST's 422
becomes 400 here), 404 for an unknown model or version, 413 over the body or pixel limits, 415
for an unknown ``Content-Encoding`` or image format, 503 when a variant is at capacity. Health
routes answer 200 for true and 400 for false, with an empty body, as the spec asks.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

import pixelfleet
from pixelfleet.deployments.spec import Operation
from pixelfleet.models.errors import InvalidInput, UnknownModel, Unprocessable
from pixelfleet.serve.oip_codec import (
    BASE64,
    BINARY_DATA_OUTPUT,
    CONTENT_TYPE,
    HEADER_LENGTH,
    InferenceRequest,
    Tensor,
    bytes_tensor,
    decode_request,
    decompress,
    encode_response,
)
from pixelfleet.serve.rest import VARIANT_HEADER, caller_of
from pixelfleet.serve.uploads import read_limited

if TYPE_CHECKING:
    from pixelfleet.serve.ingress import Family, Ingress

PLATFORM = "pixelfleet"
EXTENSIONS = ["binary_tensor_data", "parameters"]
INPUT = "image"
#: The output of an operation, by its kind (``Operation.output``).
OUTPUTS = {"image": "image", "json": "json"}
#: Request parameters that are not operation options (Triton reserves these, see its parameters extension).
RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers", BINARY_DATA_OUTPUT, CONTENT_TYPE, "operation"}
)
RESERVED_PREFIX = "triton_"
HEALTH_TRUE, HEALTH_FALSE = 200, 400  # health statuses: 200 is true, a 4xx false (empty body)


# ---- pure helpers ----


def model_metadata(family: "Family") -> dict:
    """``$metadata_model_response`` of a family: name, versions (its variants), platform, the
    default operation's tensors, and under ``pixelfleet`` what the standard fields cannot say
    (every operation with its parameters' JSON schema, the UINT8 pixel alternative)."""
    default = family.spec.operations[0]
    output = OUTPUTS[default.output]
    return {
        "name": family.name,
        "versions": list(family.variants),
        "platform": PLATFORM,
        "inputs": _signatures(default)[0]["inputs"] if default.body == "json" else [{"name": INPUT, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": output, "datatype": "BYTES", "shape": [1]}],
        "pixelfleet": {
            "title": family.spec.title,
            "default_version": family.config.default,
            "operations": [
                {
                    "name": op.name,
                    "default": op is default,
                    "output": OUTPUTS[op.output],
                    "parameters": op.params.model_json_schema(),
                    "signatures": _signatures(op),
                }
                for op in family.spec.operations
            ],
        },
    }


def _signatures(operation: Operation) -> list[dict]:
    """The input -> output tensor pairs an operation accepts (-1: variable size)."""
    out = OUTPUTS[operation.output]
    if operation.body == "json":  # named encoded images in, the operation's output out
        inputs = [{"name": name, "datatype": "BYTES", "shape": [1], "optional": not required} for name, required in operation.images.items()]
        return [{"inputs": inputs, "output": {"name": out, "datatype": "BYTES", "shape": [1]}}]
    pixels_out = {"name": out, "datatype": "UINT8", "shape": [-1, -1, -1]} if operation.output == "image" else {"name": out, "datatype": "BYTES", "shape": [1]}
    return [
        {"input": {"name": INPUT, "datatype": "BYTES", "shape": [1]}, "output": {"name": out, "datatype": "BYTES", "shape": [1]}},
        {"input": {"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1]}, "output": pixels_out},
    ]


def pick_operation(family: "Family", parameters: dict[str, Any]) -> Operation:
    """The operation named by ``parameters.operation``, else the family's first. Raises InvalidInput."""
    name = parameters.get("operation")
    if name is None:
        return family.spec.operations[0]
    for operation in family.spec.operations:
        if operation.name == name:
            return operation
    names = ", ".join(op.name for op in family.spec.operations)
    raise InvalidInput(f"model {family.name!r} has no operation {name!r}; operations: {names}")


def operation_options(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request parameters that are the operation's options (reserved keys removed)."""
    return {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS and not k.startswith(RESERVED_PREFIX)}


def model_input(request: InferenceRequest) -> bytes | np.ndarray:
    """The ``image`` input as the family takes it: encoded bytes, or ``(H, W, C)`` uint8 pixels.

    Raises:
        InvalidInput: another input name, more than one input, another datatype or shape, an
            empty image, zero height or width, C outside 1..4.
    """
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(t.name) for t in request.inputs)
        raise InvalidInput(f"the model has one input, {INPUT!r}; the request has {names}")
    tensor = request.inputs[0]
    if tensor.datatype == "BYTES" and tensor.shape == (1,):
        data = tensor.data.reshape(-1)[0]
        if not data:
            raise InvalidInput(f"input {INPUT!r} is empty")
        return bytes(data)
    if tensor.datatype == "UINT8" and len(tensor.shape) == 3:
        height, width, channels = tensor.shape
        if height < 1 or width < 1 or not 1 <= channels <= 4:
            raise InvalidInput(f"input {INPUT!r}: UINT8 pixels must be [H, W, C] with H, W >= 1 and C in 1..4, not {list(tensor.shape)}")
        return np.ascontiguousarray(tensor.data)
    raise InvalidInput(
        f"input {INPUT!r} takes BYTES [1] (an encoded image) or UINT8 [H, W, C] pixels, "
        f"not {tensor.datatype} {list(tensor.shape)}"
    )


def named_inputs(operation: Operation, request: InferenceRequest) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The inputs of a JSON-body operation: its images (``Operation.images``; BYTES ``[1]``, an
    encoded image each) and options given as tensors (shape ``[1]``, named as the option, e.g.
    ``prompt`` BYTES ``[1]`` of UTF-8 text, as Triton's text-to-image examples send it; the spec
    asks for at least one input, and text-to-image has no image).

    Raises:
        InvalidInput: an input that is neither, another shape, an empty image, text that is
            not UTF-8, a required image missing.
    """
    images: dict[str, bytes] = {}
    options: dict[str, Any] = {}
    for tensor in request.inputs:
        if tensor.name not in operation.images and tensor.name not in operation.params.model_fields:
            known = sorted(operation.images) + sorted(operation.params.model_fields)
            raise InvalidInput(f"operation {operation.name!r} takes the inputs {known}, not {tensor.name!r}")
        if tensor.shape != (1,) or (tensor.name in operation.images and tensor.datatype != "BYTES"):
            raise InvalidInput(f"input {tensor.name!r} takes one element (shape [1]; BYTES for an image), not {tensor.datatype} {list(tensor.shape)}")
        value = tensor.data.reshape(-1)[0]
        if tensor.name in operation.images:
            if not value:
                raise InvalidInput(f"input {tensor.name!r} is empty")
            images[tensor.name] = bytes(value)
        elif tensor.datatype == "BYTES":
            try:
                options[tensor.name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input {tensor.name!r} is not UTF-8 text") from None
        else:
            options[tensor.name] = value.item()
    missing = [name for name, required in operation.images.items() if required and name not in images]
    if missing:
        raise InvalidInput(f"operation {operation.name!r} needs the input {missing[0]!r}")
    return images, options


def output_tensor(operation: Operation, content: bytes | np.ndarray | dict, media_type: str) -> Tensor:
    """A family's result as the operation's output tensor: pixels as UINT8 ``[H, W, C]``,
    encoded bytes as BYTES ``[1]`` (base64 in JSON mode), a dict as BYTES ``[1]`` of JSON text."""
    name = OUTPUTS[operation.output]
    if isinstance(content, np.ndarray):
        return Tensor(name, "UINT8", tuple(content.shape), content.astype(np.uint8, copy=False))
    if isinstance(content, dict):
        text = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return bytes_tensor(name, [text], {"media_type": "application/json"})
    return bytes_tensor(name, [bytes(content)], {"media_type": media_type, CONTENT_TYPE: BASE64})


def output_modes(request: InferenceRequest, tensor: Tensor) -> list[tuple[Tensor, bool]]:
    """The outputs to send and whether each is binary: the requested ones (each must be the
    operation's output), or the output in the request's ``binary_data_output`` mode."""
    if request.outputs is None:
        return [(tensor, request.binary_outputs)]
    unknown = [o.name for o in request.outputs if o.name != tensor.name]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; the operation's output is {tensor.name!r}")
    return [(tensor, request.outputs[0].binary)]


# ---- routes ----


def _health(ok: bool) -> Response:
    return Response(status_code=HEALTH_TRUE if ok else HEALTH_FALSE)


def build_router(ingress: "Ingress") -> APIRouter:
    """The ``/v2`` routes over ``ingress``'s families (see the module docstring)."""
    router = APIRouter(prefix="/v2", tags=["oip v2"])

    def family_and_version(model: str, version: str | None) -> "Family":
        family = ingress.family(model)  # NotFound (404)
        if version is not None and version not in family.variants:
            raise UnknownModel(f"model {model!r} has no version {version!r}; versions: {', '.join(family.variants)}")
        return family

    @router.get("")
    async def server_metadata() -> dict:
        """``$metadata_server_response``: name, version, extensions."""
        return {"name": "pixelfleet", "version": pixelfleet.__version__, "extensions": EXTENSIONS}

    @router.get("/health/live")
    async def live() -> Response:
        """200: the server answers (empty body)."""
        return _health(True)

    @router.get("/health/ready")
    async def ready() -> Response:
        """200 when every variant of every family is ready, else 400 (empty body)."""
        return _health(all((await ingress.ready()).values()))

    async def model_ready(model: str, version: str | None) -> Response:
        family = family_and_version(model, version)
        states = await ingress.ready()
        variants = [version] if version is not None else list(family.variants)
        return _health(all(states.get(f"{family.name}/{v}", False) for v in variants))

    async def metadata(model: str, version: str | None) -> dict:
        family = family_and_version(model, version)
        body = model_metadata(family)
        if version is not None:
            body["pixelfleet"]["card"] = (await ingress.cards(family))[version]
        return body

    async def infer(request: Request, model: str, version: str | None) -> Response:
        family = family_and_version(model, version)
        limit = ingress.config.limits.max_body_bytes
        body = decompress(await read_limited(request, limit), request.headers.get("content-encoding"), limit)
        decoded = decode_request(body, request.headers.get(HEADER_LENGTH))
        operation = pick_operation(family, decoded.parameters)
        if operation.body == "json":  # named image inputs (maybe none); list/object options as JSON text
            from pixelfleet.serve.rest_json import parse_structured

            image, given = named_inputs(operation, decoded)
            options = parse_structured(operation.params, {**operation_options(decoded.parameters), **given})
        else:
            image = model_input(decoded)
            options = operation_options(decoded.parameters)
        try:
            answer = await ingress.infer(family.name, operation.name, image, options, model=version, caller=caller_of(request))
        except Unprocessable as err:  # OIP: a request the model cannot serve is a 400
            raise InvalidInput(err.message) from None
        tensor = output_tensor(operation, answer.result.content, answer.result.media_type)
        content, header_length = encode_response(family.name, answer.variant, decoded.id, output_modes(decoded, tensor))
        headers = {VARIANT_HEADER: f"{family.name}/{answer.variant}"}
        if header_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(header_length)
        return Response(content, media_type="application/octet-stream", headers=headers)

    infer_body = {
        "requestBody": {
            "required": True,
            "description": "an $inference_request (JSON), optionally followed by binary tensor data "
            f"({HEADER_LENGTH} gives the JSON's length)",
            "content": {"application/json": {"schema": {"type": "object"}}, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    }

    @router.get("/models/{model}")
    async def get_model(model: str) -> dict:
        """``$metadata_model_response`` of a family; 404 if there is none."""
        return await metadata(model, None)

    @router.get("/models/{model}/versions/{version}")
    async def get_model_version(model: str, version: str) -> dict:
        """The family's metadata plus the variant's card; 404 for an unknown model or version."""
        return await metadata(model, version)

    @router.get("/models/{model}/ready")
    async def get_model_ready(model: str) -> Response:
        """200 when every variant of the family is ready, else 400; 404 for an unknown model."""
        return await model_ready(model, None)

    @router.get("/models/{model}/versions/{version}/ready")
    async def get_model_version_ready(model: str, version: str) -> Response:
        """200 when the variant is ready, else 400; 404 for an unknown model or version."""
        return await model_ready(model, version)

    @router.post("/models/{model}/infer", openapi_extra=infer_body, response_class=Response)
    async def post_infer(request: Request, model: str) -> Response:
        """Inference through the family's A/B split (sticky per ``X-Client-Id``)."""
        return await infer(request, model, None)

    @router.post("/models/{model}/versions/{version}/infer", openapi_extra=infer_body, response_class=Response)
    async def post_infer_version(request: Request, model: str, version: str) -> Response:
        """Inference on one variant."""
        return await infer(request, model, version)

    return router

