"""One real local Ray and the real pixelfleet Serve app for the whole test session.

The app is deployed from ``serve/configs/local.yaml`` exactly as ``pixelfleet up`` deploys it,
on a free port, with the request limits lowered so that the 413 paths are cheap to reach, and
two variants more: the shipped x4 model on the ONNX Runtime backend (``ONNX_VARIANT``), exported
when its replica starts, and the same model with the x8 self-ensemble (``ENSEMBLE_VARIANT``).
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from pixelfleet.serve.cli import DEFAULT_CONFIG
from pixelfleet.serve.runner import load_serve_config, start_local
from tests.integration.otlp_receiver import OtlpReceiver

APP_NAME = "pixelfleet"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000
MAX_OUTPUT_PIXELS = 1_000_000
ONNX_VARIANT = "srresnet-x4-onnx"
ENSEMBLE_VARIANT = "srresnet-x4-ensemble"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Where the app exports its spans (``tracing.otlp_endpoint``): an OTLP/HTTP receiver here."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def app_url(tmp_path_factory, otlp_receiver) -> Iterator[str]:
    import ray
    from ray import serve
    from ray.serve.schema import DeploymentSchema

    schema = load_serve_config(DEFAULT_CONFIG, host="127.0.0.1", port=_free_port())
    app = schema.applications[0]
    app.args["limits"] = {"max_body_bytes": MAX_BODY_BYTES, "max_pixels": MAX_PIXELS, "max_output_pixels": MAX_OUTPUT_PIXELS}
    app.args["tracing"] = {"otlp_endpoint": otlp_receiver.endpoint}
    app.args["state"] = {"path": str(tmp_path_factory.mktemp("state") / "state.json")}
    app.args["families"]["superres"]["variants"][ONNX_VARIANT] = {
        "weights": "builtin:srresnet-x4", "backend": "onnx", "tile_size": 64, "overlap": 16, "max_batch_size": 2, "num_threads": 1,
    }  # fmt: skip
    app.args["families"]["superres"]["variants"][ENSEMBLE_VARIANT] = {
        "weights": "builtin:srresnet-x4", "ensemble": True, "tile_size": 64, "overlap": 16, "max_batch_size": 2, "num_threads": 1,
    }  # fmt: skip
    # local.yaml hands out both CPUs; these extra replicas reserve none (they are idle but for their tests)
    for variant in (ONNX_VARIANT, ENSEMBLE_VARIANT):
        app.deployments.append(DeploymentSchema(name=f"superres-{variant}", num_replicas=1, ray_actor_options={"num_cpus": 0}))
    try:
        yield start_local(schema, timeout_s=600)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def client(app_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_url, timeout=120) as http:
        yield http


@pytest.fixture(scope="session")
def handle(app_url: str):
    from ray import serve

    return serve.get_app_handle(APP_NAME)


def png_bytes(array: np.ndarray) -> bytes:
    """``(H, W, C)`` uint8 -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
