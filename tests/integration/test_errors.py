"""Every error on every route is JSON with its status and the request id, including unknown
routes, wrong methods and an unexpected exception inside a replica; the replica keeps serving."""

from __future__ import annotations

import numpy as np
import pytest

from pixelfleet.models.errors import InternalError, UnknownModel
from tests.conftest import synthetic_photo
from tests.integration.conftest import open_image, png_bytes

pytestmark = pytest.mark.integration

IMAGE = synthetic_photo(10, 12)


def assert_error(response, status: int, code: str, request_id: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    if request_id is not None:
        assert error["request_id"] == request_id
    return error


def test_unknown_route_and_wrong_method_are_json(client):
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.get("/v1/superres"), 405, "method_not_allowed")
    assert_error(client.delete("/v1/models"), 405, "method_not_allowed")
    oip = client.get("/v2/models/nope")
    assert oip.status_code == 404 and isinstance(oip.json()["error"], str)


def test_an_unexpected_exception_in_a_replica_is_a_500_without_internals(client):
    response = client.post("/v1/invert", content=png_bytes(IMAGE), headers={"Content-Type": "image/png", "X-Request-Id": "req-42"}, params={"fail": "true", "model": "a"})
    error = assert_error(response, 500, "internal_error", request_id="req-42")
    assert "secret" not in error["message"] and "line" not in error["message"] and "Traceback" not in response.text
    again = client.post("/v1/invert", content=png_bytes(IMAGE), headers={"Content-Type": "image/png"}, params={"model": "a"})
    assert again.status_code == 200  # the replica still serves
    assert np.array_equal(np.asarray(open_image(again.content)), 255 - IMAGE)


def test_request_ids_are_kept_or_made(client):
    given = client.get("/healthz", headers={"X-Request-Id": "trace-me-7"})
    assert given.headers["x-request-id"] == "trace-me-7"
    made = client.get("/healthz").headers["x-request-id"]
    assert made and made != client.get("/healthz").headers["x-request-id"]


def test_the_plugin_family_by_handle(handle):
    """The test-only family's operation is a method of the app's handle, like the built-in ones."""
    data = handle.invert.remote(png_bytes(IMAGE), model="b").result()
    assert np.array_equal(np.asarray(open_image(data)), IMAGE)
    pixels = handle.invert.remote(IMAGE, model="a").result()
    assert np.array_equal(pixels, 255 - IMAGE)
    with pytest.raises(InternalError):
        handle.invert.remote(png_bytes(IMAGE), model="a", fail=True).result()
    with pytest.raises(UnknownModel):
        handle.invert.remote(png_bytes(IMAGE), model="zz").result()
