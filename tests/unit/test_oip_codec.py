"""The OIP v2 body codec (``serve/oip_codec.py``) and the model mapping's pure helpers
(``serve/oip.py``), checked against the real ``tritonclient`` encoder and decoder, without a server."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from pixelfleet.deployments.ocr import SPEC as OCR_SPEC
from pixelfleet.deployments.superres import SPEC as SUPERRES_SPEC
from pixelfleet.models.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from pixelfleet.serve.oip import model_input, operation_options, output_modes, output_tensor
from pixelfleet.serve.oip_codec import (
    HEADER_LENGTH,
    InferenceRequest,
    Tensor,
    bytes_tensor,
    decode_request,
    decompress,
    deserialize_bytes,
    encode_response,
    serialize_bytes,
    split_body,
)

ELEMENTS = [b"", b"a", "héllo".encode(), b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"\x00" * 70000]


def client_body(inputs, outputs=None, parameters=None) -> tuple[bytes, str | None]:
    """The request body ``tritonclient`` sends, and its ``Inference-Header-Content-Length``."""
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, parameters=parameters)
    return body, None if json_size is None else str(json_size)


def image_input(data: bytes, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object), binary_data=binary)
    return tensor


# ---- BYTES elements ----


def test_bytes_elements_round_trip_and_match_tritonclient():
    serialized = serialize_bytes(ELEMENTS)
    assert serialized == serialize_byte_tensor(np.array(ELEMENTS, dtype=object)).item()
    assert deserialize_bytes(serialized) == ELEMENTS
    assert list(deserialize_bytes_tensor(serialized)) == ELEMENTS
    assert deserialize_bytes(b"") == []


@pytest.mark.parametrize(
    "buffer",
    [b"\x05\x00\x00", b"\x05\x00\x00\x00abcd", b"\x01\x00\x00\x00a\x02", b"\xff\xff\xff\xff"],
    ids=["short length", "element past the end", "second length cut", "4 GiB length"],
)
def test_truncated_bytes_elements_are_400(buffer):
    with pytest.raises(InvalidInput):
        deserialize_bytes(buffer)


# ---- requests as tritonclient sends them ----


def test_binary_bytes_input_from_tritonclient():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    outputs = [triton.InferRequestedOutput("image", binary_data=True)]
    body, length = client_body([image_input(png)], outputs, parameters={"scale": 4, "format": "webp"})
    assert length is not None
    request = decode_request(body, length)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("image", "BYTES", (1,))
    assert tensor.data[0] == png
    assert request.parameters == {"scale": 4, "format": "webp"}
    assert [(o.name, o.binary) for o in request.outputs] == [("image", True)]
    assert model_input(request) == png


@pytest.mark.parametrize("binary", [True, False])
def test_uint8_pixels_from_tritonclient(binary):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    body, length = client_body([tensor])
    assert (length is not None) == binary
    request = decode_request(body, length)
    assert request.binary_outputs  # tritonclient asks for binary outputs when it names none
    array = model_input(request)
    assert array.dtype == np.uint8 and array.shape == (5, 7, 3)
    np.testing.assert_array_equal(array, pixels)


def test_json_mode_bytes_are_utf8_text_or_base64():
    text = decode_request(*client_body([image_input("héllo".encode(), binary=False)]))
    assert text.inputs[0].data[0] == "héllo".encode()
    png = b"\x89PNG\r\n\x1a\nbinary"
    with pytest.raises(Exception, match="UTF-8"):  # the real client refuses non-UTF-8 bytes in JSON mode
        image_input(png, binary=False)
    encoded = image_input(base64.b64encode(png), binary=False)
    request = decode_request(*client_body([encoded], parameters={"content_type": "base64"}))
    assert model_input(request) == png
    input_level = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"}, "data": [base64.b64encode(png).decode()]}]}
    assert model_input(decode_request(json.dumps(input_level).encode(), None)) == png


def test_nested_json_data_is_row_major():
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [4, 5]]}]}
    (tensor,) = decode_request(json.dumps(body).encode(), None).inputs
    np.testing.assert_array_equal(tensor.data, np.array([[1, 2], [4, 5]], dtype=np.int32))


def test_several_binary_inputs_split_in_order():
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False])
    inputs = [triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [2], "BOOL"), image_input(b"xyz")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    request = decode_request(*client_body(inputs))
    np.testing.assert_array_equal(request.inputs[0].data, a)
    np.testing.assert_array_equal(request.inputs[1].data, b)
    assert request.inputs[2].data[0] == b"xyz"


# ---- malformed requests: 400 ----


def _binary_request(size_declared: int, tail: bytes, header_length: str | None = "auto") -> tuple[bytes, str | None]:
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size_declared}}]}).encode()
    return head + tail, str(len(head)) if header_length == "auto" else header_length


@pytest.mark.parametrize(
    "body, length, message",
    [
        (*_binary_request(9, b"\x05\x00\x00\x00hel"), "only 7 bytes"),
        (*_binary_request(9, b"\x05\x00\x00\x00hello!!"), "follow the inputs"),
        (*_binary_request(9, b"\x09\x00\x00\x00hello"), "runs past the end"),
        (*_binary_request(9, b"\x05\x00\x00\x00hello", header_length="-3"), "number of bytes"),
        (*_binary_request(9, b"\x05\x00\x00\x00hello", header_length="12x"), "number of bytes"),
        (*_binary_request(9, b"\x05\x00\x00\x00hello", header_length="100000"), "has only"),
        (*_binary_request(9, b"\x05\x00\x00\x00hello", header_length="10"), "not valid JSON"),
        (*_binary_request(9, b"\x05\x00\x00\x00hello", header_length=None), "not valid JSON"),
        (*_binary_request(-1, b""), "binary_data_size"),
        (b"", None, "no inference request"),
        (b"\xff\xfe{", None, "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, None, "not valid JSON"),
        (b'["inputs"]', None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (b'{"inputs": [{"name": "image", "datatype": "BF16", "shape": [1], "data": [1]}]}', None, "datatype"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 2], "data": [1, 2, 3]}]}', None, "holds 3 elements"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": [256]}]}', None, "range"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": [1.5]}]}', None, "integers"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1], "data": []}]}', None, "shape"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [3]}]}', None, "strings"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}', None, "neither data"),
        (b'{"parameters": {"content_type": "base64"}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', None, "base64"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": [{"name": "image", "parameters": {"binary_data": "yes"}}]}', None, "binary_data"),
    ],
)
def test_malformed_requests_are_400(body, length, message):
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, length)


def test_binary_bool_elements_are_0_or_1():
    head = json.dumps({"inputs": [{"name": "b", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}}]}).encode()
    with pytest.raises(InvalidInput, match="0 or 1"):
        decode_request(head + b"\x01\x02", str(len(head)))


def test_uint8_binary_size_must_match_the_shape():
    head = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 2, 3], "parameters": {"binary_data_size": 11}}]}).encode()
    with pytest.raises(InvalidInput, match="need 12"):
        decode_request(head + bytes(11), str(len(head)))


def test_split_body_without_binary_data():
    assert split_body(b'{"a": 1}', None) == ({"a": 1}, b"")
    assert split_body(b'{"a": 1}xyz', "8") == ({"a": 1}, b"xyz")


# ---- Content-Encoding ----


def test_decompress_gzip_and_deflate_within_the_limit():
    data = b'{"inputs": []}' * 10
    assert decompress(gzip.compress(data), "gzip", 1000) == data
    assert decompress(zlib.compress(data), "deflate", 1000) == data
    assert decompress(data, None, 1000) == data
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b" " * 10_000_000), "gzip", 1000)  # a decompression bomb stops at the limit
    with pytest.raises(InvalidInput):
        decompress(gzip.compress(data)[:-12], "gzip", 1000)
    with pytest.raises(InvalidInput):
        decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(UnsupportedMediaType):
        decompress(data, "br", 1000)


# ---- responses, read back by tritonclient ----


def test_binary_response_read_by_tritonclient():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    outputs = [(Tensor("pixels", "UINT8", pixels.shape, pixels), True), (bytes_tensor("image", [b"\x89PNG..."]), True)]
    body, length = encode_response("superres", "srresnet-x4", "42", outputs)
    assert json.loads(body[:length])["model_version"] == "srresnet-x4"
    result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("pixels"), pixels)
    assert result.as_numpy("image")[0] == b"\x89PNG..."
    assert result.get_response()["id"] == "42"


def test_json_response_read_by_tritonclient():
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    text = bytes_tensor("json", ['{"text": "héllo"}'.encode()])
    image = bytes_tensor("image", [b"\x89PNG\x00"])  # not UTF-8: base64, marked
    body, length = encode_response("m", None, None, [(Tensor("pixels", "UINT8", pixels.shape, pixels), False), (text, False), (image, False)])
    assert length is None and "model_version" not in json.loads(body)
    result = triton.InferenceServerClient.parse_response_body(body)
    np.testing.assert_array_equal(result.as_numpy("pixels"), pixels)
    assert json.loads(result.as_numpy("json")[0]) == {"text": "héllo"}
    assert result.get_output("image")["parameters"] == {"content_type": "base64"}
    assert base64.b64decode(result.as_numpy("image")[0]) == b"\x89PNG\x00"


# ---- the model mapping (serve/oip.py) ----


def _request(inputs, outputs=None, parameters=None) -> InferenceRequest:
    return decode_request(*client_body(inputs, outputs, parameters))


@pytest.mark.parametrize(
    "datatype, shape, message",
    [("FP32", [1], "not FP32"), ("UINT8", [4, 4], "not UINT8"), ("UINT8", [0, 4, 3], "H, W >= 1"), ("UINT8", [2, 2, 5], "C in 1..4"), ("BYTES", [2], "not BYTES")],
)
def test_model_input_refuses_other_tensors(datatype, shape, message):
    tensor = triton.InferInput("image", shape, datatype)
    dtype = {"FP32": np.float32, "UINT8": np.uint8, "BYTES": object}[datatype]
    tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype) if dtype is not object else np.array([b"a"] * shape[0], dtype=object))
    with pytest.raises(InvalidInput, match=message):
        model_input(_request([tensor]))


def test_model_input_refuses_other_names_and_empty_images():
    other = triton.InferInput("input0", [1], "BYTES")
    other.set_data_from_numpy(np.array([b"x"], dtype=object))
    with pytest.raises(InvalidInput, match="one input"):
        model_input(_request([other]))
    with pytest.raises(InvalidInput, match="empty"):
        model_input(_request([image_input(b"")]))


def test_operation_options_leave_out_reserved_parameters():
    parameters = {"scale": 4, "format": "png", "binary_data_output": True, "priority": 1, "triton_x": 1, "operation": "upscale", "content_type": "base64"}
    assert operation_options(parameters) == {"scale": 4, "format": "png"}


def test_outputs_in_kind_and_in_the_mode_asked():
    upscale, ocr = SUPERRES_SPEC.operations[0], OCR_SPEC.operations[0]
    pixels = output_tensor(upscale, np.zeros((8, 4, 3), dtype=np.uint8), "application/octet-stream")
    assert (pixels.name, pixels.datatype, pixels.shape) == ("image", "UINT8", (8, 4, 3))
    encoded = output_tensor(upscale, b"\x89PNG", "image/png")
    assert (encoded.datatype, encoded.shape, encoded.parameters["media_type"]) == ("BYTES", (1,), "image/png")
    result = output_tensor(ocr, {"text": "hi"}, "application/json")
    assert (result.name, json.loads(result.data[0])) == ("json", {"text": "hi"})
    request = _request([image_input(b"x")], [triton.InferRequestedOutput("json", binary_data=False)])
    assert output_modes(request, result) == [(result, False)]
    with pytest.raises(InvalidInput, match="unknown output"):
        output_modes(_request([image_input(b"x")], [triton.InferRequestedOutput("other")]), result)
    assert output_modes(_request([image_input(b"x")]), result) == [(result, True)]


def test_header_name_is_tritons():
    assert HEADER_LENGTH == "Inference-Header-Content-Length"
