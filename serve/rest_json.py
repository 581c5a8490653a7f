"""REST routes of operations whose body is JSON (``Operation.body == "json"``), their streamed
form (server-sent events), and the families' read-only listings (``FamilySpec.listings``).

Built by :func:`pixelfleet.serve.rest.build_api`, from the specs alone (no family named here):

- ``POST /v1/<family>/<route>``: the options as a JSON object (the operation's pydantic model,
  shown in OpenAPI), the named image inputs (``Operation.images``) as base64 strings (a
  ``data:`` URL works too) in the same object; or ``multipart/form-data`` with the options as
  fields (list and object fields as JSON text) and the images as file fields. ``?model=`` picks
  the variant. The answer is the operation's JSON.
- ``POST /v1/<family>/<route>/stream`` (operations with ``stream``): the same body; the answer
  is ``text/event-stream``: one SSE event per item the deployment yields (``event:`` its name,
  ``data:`` its JSON), the last a ``result`` (or an ``error`` with the JSON error body). Errors
  found before the first event answer as usual (422, 404, ...), not as a stream.
- ``GET /v1/<family>/<route>`` per listing, ``?model=`` as above.

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time.
"""

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from pixelfleet.deployments.spec import Listing, Operation
from pixelfleet.models.errors import InvalidInput, Unprocessable, UnsupportedMediaType
from pixelfleet.serve.rest import VARIANT_HEADER, caller_of
from pixelfleet.serve.uploads import read_limited
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

if TYPE_CHECKING:
    from pixelfleet.serve.ingress import Ingress

MODEL_QUERY = Query(None, description="variant id from GET /v1/models; default: the A/B split")
#: Form fields (besides files) a multipart body may carry.
MAX_FORM_FIELDS = 64


def structured_fields(params: type[BaseModel]) -> frozenset[str]:
    """Fields of ``params`` whose values are lists or objects: a form field or an OIP string
    parameter gives them as JSON text."""
    properties = params.model_json_schema()["properties"]

    def structured(schema: dict) -> bool:
        if schema.get("type") in ("array", "object") or "$ref" in schema:
            return True
        return any(structured(s) for s in schema.get("anyOf", []))

    return frozenset(name for name, schema in properties.items() if structured(schema))


def parse_structured(params: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the structured fields' JSON text parsed (others untouched).

    Raises:
        Unprocessable: a structured field whose text is not JSON.
    """
    out = dict(values)
    for name in structured_fields(params) & values.keys():
        if isinstance(out[name], str):
            try:
                out[name] = json.loads(out[name])
            except json.JSONDecodeError:
                raise Unprocessable(f"{name}: expected JSON text (a list or an object)") from None
    return out


def decode_base64_image(name: str, value: Any) -> bytes:
    """An image input given as base64 text (or a ``data:<type>;base64,`` URL) -> its bytes.

    Raises:
        Unprocessable: not a string, not base64, or empty.
    """
    if not isinstance(value, str):
        raise Unprocessable(f"{name}: expected the image as a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable(f"{name}: not valid base64") from None
    if not data:
        raise Unprocessable(f"{name}: the image is empty")
    return data


async def _once(data: bytes):
    yield data


async def read_operation_body(request: Request, operation: Operation, max_bytes: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The named images (``{name: bytes}``) and the options of a JSON-body operation's request.

    Raises:
        PayloadTooLarge: the body is over ``max_bytes``.
        UnsupportedMediaType: neither ``application/json`` nor ``multipart/form-data``.
        InvalidInput: malformed JSON or multipart.
        Unprocessable: not a JSON object, an image that is not base64, a file field that is
            not an image input of the operation, a required image missing.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_limited(request, max_bytes)
    images: dict[str, bytes] = {}
    if content_type == "application/json" or (not content_type and body):
        try:
            values = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInput(f"malformed JSON body: {err}") from None
        if not isinstance(values, dict):
            raise Unprocessable("the JSON body must be an object of the operation's fields")
        for name in operation.images:
            if name in values:
                images[name] = decode_base64_image(name, values.pop(name))
    elif content_type == "multipart/form-data":
        parser = MultiPartParser(request.headers, _once(body), max_files=max(1, len(operation.images)), max_fields=MAX_FORM_FIELDS, max_part_size=max_bytes)
        try:
            form = await parser.parse()
        except MultiPartException as err:
            raise InvalidInput(f"malformed multipart body: {err.message}") from None
        values = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in operation.images:
                    known = ", ".join(operation.images) or "none"
                    raise Unprocessable(f"unexpected file field {name!r}; image fields: {known}")
                images[name] = await value.read()
            elif name in operation.images:
                images[name] = decode_base64_image(name, value)
            else:
                values[name] = value
        values = parse_structured(operation.params, values)
    elif not content_type and not body:
        values = {}
    else:
        raise UnsupportedMediaType(f"content type {content_type!r} is not accepted: send application/json or multipart/form-data")
    for name, required in operation.images.items():
        if required and not images.get(name):
            raise Unprocessable(f"{name}: this operation needs the image {name!r}")
    return images, values


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with every ``{"$ref": "#/$defs/X"}`` replaced by ``defs["X"]`` (pydantic puts
    nested models under ``$defs``, which OpenAPI would resolve against the document's root)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def request_body_schema(operation: Operation) -> dict:
    """OpenAPI ``requestBody`` of a JSON-body operation, derived from its params model: the JSON
    form (images as base64 strings) and the multipart form (images as files)."""
    schema = operation.params.model_json_schema()
    fields = _inline(schema, schema.get("$defs", {}))
    json_schema = {**fields, "properties": dict(fields.get("properties", {})), "required": list(fields.get("required", []))}
    form_schema = {**json_schema, "properties": dict(json_schema["properties"]), "required": list(json_schema["required"])}
    for name, required in operation.images.items():
        json_schema["properties"][name] = {"type": "string", "contentEncoding": "base64", "description": f"the {name} image (PNG, JPEG, WebP), base64"}
        form_schema["properties"][name] = {"type": "string", "format": "binary", "description": f"the {name} image file"}
        if required:
            json_schema["required"].append(name)
            form_schema["required"].append(name)
    for body in (json_schema, form_schema):
        if not body["required"]:
            del body["required"]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form_schema}}}}


def _sse(event: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(event.get("data"), separators=(",", ":")), event=event.get("event"))


def add_json_operation_route(api: FastAPI, ingress: "Ingress", family: str, operation: Operation) -> None:
    """``POST /v1/<family>/<route>`` (and ``/stream`` when the operation streams)."""
    path = f"/v1/{family}" + (f"/{operation.route}" if operation.route else "")
    limit = ingress.config.limits.max_body_bytes

    async def endpoint(request: Request, model: str | None = MODEL_QUERY) -> JSONResponse:
        images, values = await read_operation_body(request, operation, limit)
        answer = await ingress.infer(family, operation.name, images, values, model=model, caller=caller_of(request))
        return JSONResponse(answer.result.content, headers={VARIANT_HEADER: f"{family}/{answer.variant}"})

    body = request_body_schema(operation)
    api.add_api_route(
        path, endpoint, methods=["POST"], summary=operation.summary, tags=[family], name=f"{family}.{operation.name}",
        openapi_extra=body, response_class=JSONResponse,
    )  # fmt: skip
    if not operation.stream:
        return

    async def stream_endpoint(request: Request, model: str | None = MODEL_QUERY) -> StreamingResponse:
        images, values = await read_operation_body(request, operation, limit)
        label, events = await ingress.open_stream(family, operation.name, images, values, model=model, caller=caller_of(request))

        async def encoded():
            async for event in events:
                yield _sse(event)

        headers = {VARIANT_HEADER: f"{family}/{label}", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(encoded(), media_type="text/event-stream", headers=headers)

    api.add_api_route(
        f"{path}/stream", stream_endpoint, methods=["POST"], tags=[family], name=f"{family}.{operation.stream_method}",
        summary=f"{operation.summary}, streamed: server-sent events (progress, then the result)",
        openapi_extra=body, response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}, "description": "SSE events"}},
    )  # fmt: skip


def add_listing_route(api: FastAPI, ingress: "Ingress", family: str, listing: Listing) -> None:
    """``GET /v1/<family>/<route>``: the listing of the chosen variant (default: the family's)."""

    async def endpoint(model: str | None = Query(None, description="variant id; default: the family's default variant")) -> JSONResponse:
        return JSONResponse(await ingress.listing(family, listing.route, model))

    api.add_api_route(f"/v1/{family}/{listing.route}", endpoint, methods=["GET"], summary=listing.summary, tags=[family], name=f"{family}.{listing.route}")
