"""Reading an image upload from a request: raw body or multipart, with the byte limit applied.

The body is read as a stream and refused (413) as soon as it passes the limit, so an oversized
upload is never held whole in memory. Multipart bodies are parsed by Starlette's parser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from pixelfleet.models.errors import InvalidInput, PayloadTooLarge, Unprocessable, UnsupportedMediaType

#: The multipart field that carries the image.
IMAGE_FIELD = "image"
#: Content types taken as a raw image body besides ``image/*``.
RAW_TYPES = ("application/octet-stream",)


@dataclass
class Upload:
    """An uploaded image's bytes and the other form fields (empty for a raw body)."""

    data: bytes
    fields: dict[str, str] = field(default_factory=dict)


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The whole body, or :class:`PayloadTooLarge` once it passes ``max_bytes`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The image of a request: ``image/*`` (or octet-stream) body, or multipart field ``image``.

    Raises:
        PayloadTooLarge: the body is over ``max_bytes``.
        UnsupportedMediaType: another content type.
        Unprocessable: no image in the request (empty body, or no ``image`` field).
        InvalidInput: a malformed multipart body.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_multipart = content_type == "multipart/form-data"
    if not (is_multipart or content_type.startswith("image/") or content_type in RAW_TYPES):
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not accepted: send the image as the body with "
            "Content-Type image/png, image/jpeg, ... or as multipart/form-data with a field 'image'"
        )
    body = await read_limited(request, max_bytes)
    if not is_multipart:
        if not body:
            raise Unprocessable("the request has no image: the body is empty")
        return Upload(body)
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=16).parse()
    except MultiPartException as err:
        raise InvalidInput(f"malformed multipart body: {err.message}") from None
    image = form.get(IMAGE_FIELD)
    if not isinstance(image, UploadFile):
        raise Unprocessable(f"multipart body has no file field {IMAGE_FIELD!r}")
    data = await image.read()
    if not data:
        raise Unprocessable(f"the file field {IMAGE_FIELD!r} is empty")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return Upload(data, fields)
