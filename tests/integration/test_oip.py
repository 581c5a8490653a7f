"""The Open Inference Protocol v2 front end (``serve/oip.py``) over HTTP, called with the real
``tritonclient.http`` client in binary (Triton's binary tensor data extension) and JSON modes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from pixelfleet.deployments.ocr.lines import render_text
from pixelfleet.models.metrics import character_error_rate
from tests.conftest import synthetic_photo
from tests.integration.conftest import MAX_BODY_BYTES, open_image, png_bytes

pytestmark = pytest.mark.integration

X4 = "srresnet-x4"


@pytest.fixture(scope="module")
def triton_client(app_url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(app_url.split("://", 1)[-1], connection_timeout=60, network_timeout=600) as client:
        yield client


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A ``(24, 32, 3)`` uint8 test photo."""
    return synthetic_photo(24, 32, seed=3)


def encoded_input(data: bytes, binary: bool) -> triton.InferInput:
    """The ``image`` input as BYTES [1]: raw in binary mode, base64 text in JSON mode (the real
    client refuses non-UTF-8 bytes in JSON; the request then carries ``content_type: base64``)."""
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data if binary else base64.b64encode(data)], dtype=object), binary_data=binary)
    return tensor


def pixel_input(pixels: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def infer_encoded(client, model: str, data: bytes, binary: bool, output: str = "image", version: str = "", **parameters) -> triton.InferResult:
    params = dict(parameters) if binary else {**parameters, "content_type": "base64"}
    outputs = [triton.InferRequestedOutput(output, binary_data=binary)]
    return client.infer(model, [encoded_input(data, binary)], model_version=version, outputs=outputs, parameters=params or None)


def output_bytes(result: triton.InferResult, name: str) -> bytes:
    """A BYTES [1] output's bytes (base64-decoded when the server marked it so, in JSON mode)."""
    (element,) = result.as_numpy(name)
    if (result.get_output(name).get("parameters") or {}).get("content_type") == "base64":
        return base64.b64decode(element)
    return element if isinstance(element, bytes) else element.encode()


def assert_oip_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# ---- health and metadata ----


def test_server_live_ready_and_metadata(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    metadata = triton_client.get_server_metadata()
    assert metadata["name"] == "pixelfleet" and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_readiness(triton_client, client):
    families = client.get("/v1/models").json()["families"]
    for name, family in families.items():
        metadata = triton_client.get_model_metadata(name)
        assert metadata["name"] == name and metadata["platform"] == "pixelfleet"
        assert set(metadata["versions"]) == set(family["variants"])
        assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
        assert [o["name"] for o in metadata["outputs"]] == ["json" if family["operations"] == ["ocr"] else "image"]
        assert triton_client.is_model_ready(name)
        for variant in family["variants"]:
            assert triton_client.is_model_ready(name, variant)
    versioned = triton_client.get_model_metadata("superres", X4)
    assert versioned["pixelfleet"]["card"]["scale"] == 4
    signatures = versioned["pixelfleet"]["operations"][0]["signatures"]
    assert {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1]} in [s["input"] for s in signatures]
    assert not triton_client.is_model_ready("nope")
    assert not triton_client.is_model_ready("superres", "nope")
    assert "unknown family" in assert_oip_error(client.get("/v2/models/nope"), 404)
    assert "no version" in assert_oip_error(client.get("/v2/models/superres/versions/nope"), 404)
    assert "no version" in assert_oip_error(client.get("/v2/models/superres/versions/nope/ready"), 404)


# ---- super-resolution ----


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_superres_encoded_image_in_and_out(triton_client, photo, binary):
    result = infer_encoded(triton_client, "superres", png_bytes(photo), binary, version=X4, format="png")
    response = result.get_response()
    assert response["model_name"] == "superres" and response["model_version"] == X4
    output = result.get_output("image")
    assert (output["datatype"], output["shape"]) == ("BYTES", [1])
    image = open_image(output_bytes(result, "image"))
    assert image.format == "PNG" and image.size == (32 * 4, 24 * 4)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_superres_pixels_in_and_out_match_the_encoded_path(triton_client, photo, binary):
    outputs = [triton.InferRequestedOutput("image", binary_data=binary)]
    result = triton_client.infer("superres", [pixel_input(photo, binary)], model_version=X4, outputs=outputs)
    output = result.get_output("image")
    assert (output["datatype"], output["shape"]) == ("UINT8", [96, 128, 3])
    pixels = result.as_numpy("image")
    assert pixels.dtype == np.uint8 and pixels.shape == (96, 128, 3)
    encoded = infer_encoded(triton_client, "superres", png_bytes(photo), True, version=X4)
    reference = np.asarray(open_image(output_bytes(encoded, "image")).convert("RGB"))
    assert np.abs(pixels.astype(int) - reference.astype(int)).max() <= 1


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests(triton_client, photo, compression):
    result = triton_client.infer("superres", [pixel_input(photo, True)], model_version=X4, request_compression_algorithm=compression)
    assert result.as_numpy("image").shape == (96, 128, 3)


def test_superres_through_the_ab_split_names_its_variant(client, triton_client, photo):
    result = infer_encoded(triton_client, "superres", png_bytes(photo), True, scale=4, format="webp")
    assert open_image(output_bytes(result, "image")).size == (128, 96)
    assert result.get_output("image")["parameters"]["media_type"] == "image/webp"
    variants = set(client.get("/v1/models").json()["families"]["superres"]["variants"])
    assert set(result.get_response()["model_version"].split("+")) <= variants
    body = json.dumps(
        {"id": "req-7", "parameters": {"scale": 4, "content_type": "base64"},
         "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png_bytes(photo)).decode()]}]}
    )  # fmt: skip
    response = client.post("/v2/models/superres/infer", content=body, headers={"X-Client-Id": "oip-caller"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-7" and "Inference-Header-Content-Length" not in response.headers
    assert response.headers["x-pixelfleet-variant"] == f"superres/{answer['model_version']}"
    versioned = client.post(f"/v2/models/superres/versions/{X4}/infer", content=body)
    assert versioned.headers["x-pixelfleet-variant"] == f"superres/{X4}" and versioned.json()["model_version"] == X4


# ---- OCR: a JSON operation ----


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_ocr_answers_json_text(triton_client, binary):
    text = "Inference protocol v2"
    result = infer_encoded(triton_client, "ocr", png_bytes(render_text(text)), binary, output="json", version="tesseract")
    output = result.get_output("json")
    assert (output["datatype"], output["shape"]) == ("BYTES", [1])
    answer = json.loads(output_bytes(result, "json"))
    assert character_error_rate(answer["text"], text) < 0.1
    assert len(answer["lines"][0]["box"]) == 4


def test_ocr_takes_pixels(triton_client):
    result = triton_client.infer("ocr", [pixel_input(render_text("pixels too"), True)], model_version="tesseract")
    assert character_error_rate(json.loads(result.as_numpy("json")[0])["text"], "pixels too") < 0.2


# ---- the test-only plug-in family, where the session serves it ----


def test_invert_family_over_oip(client, triton_client, photo):
    families = client.get("/v1/models").json()["families"]
    if "invert" not in families:
        pytest.skip("the session config does not serve the invert family")
    for binary in (True, False):
        inverted = triton_client.infer("invert", [pixel_input(photo, binary)], model_version="a",
                                       outputs=[triton.InferRequestedOutput("image", binary_data=binary)])  # fmt: skip
        np.testing.assert_array_equal(inverted.as_numpy("image"), 255 - photo)
        same = infer_encoded(triton_client, "invert", png_bytes(photo), binary, version="b")
        np.testing.assert_array_equal(np.asarray(open_image(output_bytes(same, "image"))), photo)
    assert triton_client.get_model_metadata("invert")["versions"] == list(families["invert"]["variants"])


# ---- errors: {"error": "..."} with a 4xx ----


def test_client_errors_carry_the_status(triton_client, photo):
    with pytest.raises(InferenceServerException) as unknown_model:
        infer_encoded(triton_client, "nope", b"x", True)
    assert unknown_model.value.status() == "404"
    with pytest.raises(InferenceServerException) as unknown_version:
        infer_encoded(triton_client, "superres", png_bytes(photo), True, version="nope")
    assert unknown_version.value.status() == "404"
    bad_type = triton.InferInput("image", [2, 2, 3], "FP32")
    bad_type.set_data_from_numpy(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="BYTES") as bad_datatype:
        triton_client.infer("superres", [bad_type])
    assert bad_datatype.value.status() == "400"
    with pytest.raises(InferenceServerException, match="scale") as bad_scale:
        infer_encoded(triton_client, "superres", png_bytes(photo), True, version=X4, scale=99)
    assert bad_scale.value.status() == "400"
    with pytest.raises(InferenceServerException, match="operation") as bad_operation:
        infer_encoded(triton_client, "superres", png_bytes(photo), True, operation="paint")
    assert bad_operation.value.status() == "400"
    with pytest.raises(InferenceServerException) as not_an_image:
        infer_encoded(triton_client, "superres", b"definitely not an image", True, version=X4)
    assert not_an_image.value.status() == "400"


def _binary_body(declared: int, tail: bytes) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": declared}}]}).encode()
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


def test_malformed_bodies_are_400_json(client, photo):
    png = png_bytes(photo)
    element = len(png).to_bytes(4, "little") + png
    truncated, headers = _binary_body(len(element), element[:-100])
    assert "binary data" in assert_oip_error(client.post(f"/v2/models/superres/versions/{X4}/infer", content=truncated, headers=headers), 400)
    whole, headers = _binary_body(len(element), element)
    for length in ("abc", "-1", str(len(whole) + 1), "5"):
        response = client.post("/v2/models/superres/infer", content=whole, headers={"Inference-Header-Content-Length": length})
        assert_oip_error(response, 400)
    assert_oip_error(client.post("/v2/models/superres/infer", content=b"{not json"), 400)
    shape_mismatch = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [4, 4, 3], "data": [0] * 47}]}
    assert "elements" in assert_oip_error(client.post("/v2/models/superres/infer", json=shape_mismatch), 400)
    unknown_datatype = {"inputs": [{"name": "image", "datatype": "COMPLEX", "shape": [1], "data": ["x"]}]}
    assert "datatype" in assert_oip_error(client.post("/v2/models/superres/infer", json=unknown_datatype), 400)


def test_limits_are_413_json(client):
    oversized, headers = _binary_body(MAX_BODY_BYTES + 4, (MAX_BODY_BYTES).to_bytes(4, "little") + b"\x00" * MAX_BODY_BYTES)
    assert_oip_error(client.post("/v2/models/superres/infer", content=oversized, headers=headers), 413)
    too_many_pixels = np.zeros((1000, 1000, 1), dtype=np.uint8)  # 1 MB body; x4 output over the session's pixel limit
    head = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1000, 1000, 1], "parameters": {"binary_data_size": too_many_pixels.size}}]}).encode()
    response = client.post(f"/v2/models/superres/versions/{X4}/infer", content=head + too_many_pixels.tobytes(), headers={"Inference-Header-Content-Length": str(len(head))})
    assert_oip_error(response, 413)
    assert_oip_error(client.get("/v2/no/such/route"), 404)
