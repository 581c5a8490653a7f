"""Open Inference Protocol v2 (KServe "predict protocol v2") REST bodies, with Triton's binary
tensor data extension, as pure functions: bytes in, tensors out, and back. No HTTP, no Ray.

Sources (the spec these functions follow):

- KServe OIP REST, ``$inference_request`` / ``$inference_response``:
  https://github.com/kserve/kserve/blob/master/docs/predict-api/v2/required_api.md
- Triton's binary tensor data extension:
  https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/protocol/extension_binary_data.html

A request body is a JSON object, optionally followed by the raw bytes of the inputs that carry
``parameters.binary_data_size``; then the HTTP header ``Inference-Header-Content-Length`` gives
the JSON's length in bytes. Binary tensors are little-endian, row-major, without padding; a BYTES
element is a 4-byte little-endian unsigned length followed by that many bytes. A response is
built the same way: outputs asked for with ``parameters.binary_data: true`` (or every output,
with the request parameter ``binary_data_output: true``) go after the JSON.

JSON-mode BYTES elements are strings. ``tritonclient`` sends a ``bytes`` element as its UTF-8
text and refuses bytes that are not UTF-8 (an encoded image never is), so binary content in JSON
mode travels as base64 text, marked with the parameter ``content_type: "base64"`` (the
convention of MLServer and KServe's runtimes): on an input, or on the request for every BYTES
input; a response output holding non-UTF-8 bytes is base64 with that parameter set.

Every malformed body raises :class:`~pixelfleet.models.errors.InvalidInput` (HTTP 400), an
over-long decompressed body :class:`~pixelfleet.models.errors.PayloadTooLarge` (413) and an
unknown ``Content-Encoding`` :class:`~pixelfleet.models.errors.UnsupportedMediaType` (415).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelfleet.models.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

#: HTTP header (request and response): length in bytes of the JSON part of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Parameter: an input's / output's binary data size in bytes (int64 >= 0).
BINARY_DATA_SIZE = "binary_data_size"
#: Parameter of a requested output: return it as binary data.
BINARY_DATA = "binary_data"
#: Request parameter: return every output as binary data (``tritonclient`` sets it when it names no outputs).
BINARY_DATA_OUTPUT = "binary_data_output"
#: Parameter: how a JSON-mode BYTES element is written (``"base64"``, else UTF-8 text).
CONTENT_TYPE = "content_type"
BASE64 = "base64"

#: OIP tensor data types -> numpy dtypes (little-endian). BF16 has no numpy type and is refused.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}  # fmt: skip
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """One input or output tensor.

    ``data`` holds ``prod(shape)`` elements in row-major order, reshaped to ``shape``: a numpy
    array of the datatype's dtype, or for BYTES an object array of ``bytes``.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``: its name and whether to send it as binary data."""

    name: str
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded ``$inference_request``; ``outputs`` is None when the request names none."""

    id: str | None
    parameters: dict[str, Any]
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None

    @property
    def binary_outputs(self) -> bool:
        """Whether outputs the request does not name go out as binary (``binary_data_output``)."""
        return self.parameters.get(BINARY_DATA_OUTPUT) is True


# ---- BYTES elements ----


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    """BYTES elements as binary tensor data: per element a uint32 little-endian length, then
    the bytes. Raises InvalidInput for an element of 4 GiB or more."""
    parts = []
    for element in elements:
        if len(element) > 0xFFFFFFFF:
            raise InvalidInput("a BYTES element is 4 GiB or longer")
        parts += [_LENGTH.pack(len(element)), bytes(element)]
    return b"".join(parts)


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """The BYTES elements of binary tensor data (the inverse of :func:`serialize_bytes`).

    Raises:
        InvalidInput: a length prefix cut short, or a length running past the buffer's end.
    """
    view, elements, offset = memoryview(buffer), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"BYTES tensor data is truncated: {len(view) - offset} bytes left where a 4-byte length was expected")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"BYTES element of {length} bytes runs past the end of its tensor data ({len(view) - offset} bytes left)")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


# ---- request ----


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body under its ``Content-Encoding`` (``gzip``, ``deflate`` as zlib, ``identity`` or
    none), decompressed to at most ``max_bytes`` bytes.

    Raises:
        UnsupportedMediaType: another encoding.
        PayloadTooLarge: the decompressed body is over ``max_bytes``.
        InvalidInput: a corrupt or truncated compressed body.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted: send gzip, deflate or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as err:
        raise InvalidInput(f"the {encoding} body is corrupt: {err}") from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise InvalidInput(f"the {encoding} body is truncated")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON object at the head of ``body`` and the binary data after it.

    Args:
        body: the whole (decompressed) request body.
        header_length: the ``Inference-Header-Content-Length`` header, or None when the whole
            body is JSON.

    Raises:
        InvalidInput: a header that is not a decimal number of bytes within the body, JSON that
            does not parse, or JSON that is not an object.
    """
    if header_length is None:
        head, tail = body, b""
    else:
        text = header_length.strip()
        if not text.isascii() or not text.isdigit():
            raise InvalidInput(f"{HEADER_LENGTH} must be a number of bytes, not {header_length!r}")
        length = int(text)
        if length > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {length} bytes but the body has only {len(body)}")
        head, tail = body[:length], body[length:]
    if not head:
        raise InvalidInput("the request body has no inference request JSON")
    try:
        header = json.loads(head)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidInput(f"the inference request is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return header, tail


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}.parameters must be an object")
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise InvalidInput(f"{where}.parameters.{key} must be a string, number or boolean")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"{where}.shape must be a list of integers >= 0, not {str(value)[:80]}")
    return tuple(value)


def _flatten(data: Any, where: str) -> list:
    """The leaves of nested JSON arrays in row-major order (iterative: no recursion limit)."""
    if not isinstance(data, list):
        return [data]
    leaves: list = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            leaves.append(item)
    return leaves


_END = object()


def _json_elements(flat: list, datatype: str, content_type: str | None, where: str) -> np.ndarray:
    """JSON-mode data (already flattened) as a 1-D array of ``datatype``."""
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise InvalidInput(f"{where}.data of a BYTES tensor must hold strings")
        if content_type == BASE64:
            try:
                elements = [base64.b64decode(item, validate=True) for item in flat]
            except (binascii.Error, ValueError):
                raise InvalidInput(f"{where}.data is not valid base64 ({CONTENT_TYPE}: {BASE64})") from None
        else:
            elements = [item.encode("utf-8", "surrogatepass") for item in flat]
        array = np.empty(len(elements), dtype=object)
        array[:] = elements
        return array
    if datatype == "BOOL":
        if not all(isinstance(item, bool) for item in flat):
            raise InvalidInput(f"{where}.data of a BOOL tensor must hold true/false")
        return np.array(flat, dtype=dtype)
    if dtype.kind in "iu":
        if not all(isinstance(item, int) and not isinstance(item, bool) for item in flat):
            raise InvalidInput(f"{where}.data of a {datatype} tensor must hold integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidInput(f"{where}.data holds values outside {datatype}'s range [{info.min}, {info.max}]")
        return np.array(flat, dtype=dtype)
    if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in flat):
        raise InvalidInput(f"{where}.data of a {datatype} tensor must hold numbers")
    return np.array(flat, dtype=dtype)


def _binary_elements(raw: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    """Binary tensor data as a 1-D array of ``count`` elements of ``datatype``."""
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        elements = deserialize_bytes(raw)
        if len(elements) != count:
            raise InvalidInput(f"{where} holds {len(elements)} BYTES elements but its shape has {count}")
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"{where} has {len(raw)} bytes of data but shape and {datatype} need {count * dtype.itemsize}")
    if datatype == "BOOL" and raw and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise InvalidInput(f"{where}: BOOL elements must be bytes 0 or 1")
    return np.frombuffer(raw, dtype=dtype)


def decode_input(value: Any, index: int, tail: bytes, offset: int, request_content_type: str | None) -> tuple[Tensor, int]:
    """One ``$request_input``; its binary data (if any) starts at ``tail[offset]``.

    Returns:
        The tensor and the offset after its binary data.

    Raises:
        InvalidInput: a missing or mistyped field, an unknown datatype, data that does not fit
            the shape, binary data past the end of the body, shared memory (not supported).
    """
    where = f"inputs[{index}]"
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object")
    name, datatype = value.get("name"), value.get("datatype")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = _shape(value.get("shape"), where)
    parameters = _parameters(value.get("parameters"), where)
    count = math.prod(shape)
    if "shared_memory_region" in parameters:
        raise InvalidInput(f"{where}: shared memory is not supported; send the data in the body")
    if BINARY_DATA_SIZE in parameters:
        size = parameters[BINARY_DATA_SIZE]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where}: {BINARY_DATA_SIZE} must be an integer >= 0")
        if "data" in value:
            raise InvalidInput(f"{where} has both {BINARY_DATA_SIZE} and data")
        if offset + size > len(tail):
            raise InvalidInput(
                f"{where}: {BINARY_DATA_SIZE} is {size} bytes but only {len(tail) - offset} bytes of binary data are left "
                f"(is {HEADER_LENGTH} right?)"
            )
        flat = _binary_elements(tail[offset : offset + size], datatype, count, where)
        offset += size
    else:
        if "data" not in value:
            raise InvalidInput(f"{where} has neither data nor {BINARY_DATA_SIZE}")
        leaves = _flatten(value["data"], where)
        if len(leaves) != count:
            raise InvalidInput(f"{where} holds {len(leaves)} elements but its shape {list(shape)} has {count}")
        flat = _json_elements(leaves, datatype, parameters.get(CONTENT_TYPE, request_content_type), where)
    return Tensor(name, datatype, shape, flat.reshape(shape), parameters), offset


def decode_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """A whole ``$inference_request`` body: JSON, then the binary data of its inputs in order.

    Args:
        body: the request body, decompressed.
        header_length: the ``Inference-Header-Content-Length`` header or None.

    Raises:
        InvalidInput: anything malformed (see :func:`split_body`, :func:`decode_input`), and
            binary data left over after the last input.
    """
    header, tail = split_body(body, header_length)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string")
    parameters = _parameters(header.get("parameters"), "request")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list")
    tensors, offset = [], 0
    for index, value in enumerate(inputs):
        tensor, offset = decode_input(value, index, tail, offset, parameters.get(CONTENT_TYPE))
        tensors.append(tensor)
    if offset != len(tail):
        raise InvalidInput(f"{len(tail) - offset} bytes of binary data follow the inputs' {offset} (is {HEADER_LENGTH} right?)")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise InvalidInput("input names must be unique")
    return InferenceRequest(request_id, parameters, tensors, decode_outputs(header.get("outputs")))


def decode_outputs(value: Any) -> list[RequestedOutput] | None:
    """The request's ``outputs`` (None when absent or empty). Raises InvalidInput."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise InvalidInput("outputs must be a list")
    outputs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a name")
        parameters = _parameters(item.get("parameters"), f"outputs[{index}]")
        if "shared_memory_region" in parameters:
            raise InvalidInput(f"output {item['name']!r}: shared memory is not supported")
        binary = parameters.get(BINARY_DATA, False)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {item['name']!r}: {BINARY_DATA} must be true or false")
        outputs.append(RequestedOutput(item["name"], binary, parameters))
    return outputs


# ---- response ----


def _json_data(tensor: Tensor) -> tuple[list, dict[str, Any]]:
    """A tensor's elements for JSON (flattened, row-major) and parameters to add."""
    flat = np.asarray(tensor.data).reshape(-1)
    if tensor.datatype != "BYTES":
        return flat.tolist(), {}
    elements = [bytes(e) for e in flat]
    if tensor.parameters.get(CONTENT_TYPE) != BASE64:
        try:
            return [e.decode("utf-8") for e in elements], {}
        except UnicodeDecodeError:
            pass
    return [base64.b64encode(e).decode("ascii") for e in elements], {CONTENT_TYPE: BASE64}


def _binary_data(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(bytes(e) for e in np.asarray(tensor.data).reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype]).tobytes()


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[tuple[Tensor, bool]],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """An ``$inference_response`` body.

    Args:
        outputs: each output tensor and whether it goes as binary data (after the JSON, with
            ``parameters.binary_data_size``) or inline as JSON ``data``.

    Returns:
        The body and, when any output is binary, the length of its JSON part in bytes (the
        response's ``Inference-Header-Content-Length``); else None (the body is all JSON).
    """
    entries, tails = [], []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        extra = {k: v for k, v in tensor.parameters.items() if k != CONTENT_TYPE}
        if binary:
            raw = _binary_data(tensor)
            entry["parameters"] = {**extra, BINARY_DATA_SIZE: len(raw)}
            tails.append(raw)
        else:
            data, added = _json_data(tensor)
            if extra or added:
                entry["parameters"] = {**extra, **added}
            entry["data"] = data
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = entries
    head = json.dumps(response, separators=(",", ":")).encode()
    if not tails:
        return head, None
    return head + b"".join(tails), len(head)


def bytes_tensor(name: str, elements: Sequence[bytes], parameters: dict[str, Any] | None = None) -> Tensor:
    """A 1-D BYTES tensor of ``elements`` (shape ``[len(elements)]``)."""
    array = np.empty(len(elements), dtype=object)
    array[:] = list(elements)
    return Tensor(name, "BYTES", (len(elements),), array, dict(parameters or {}))
