"""One real local Ray and the real pixelfleet Serve app for the whole test session.

The app is deployed from ``serve/configs/local.yaml`` exactly as ``pixelfleet up`` deploys it,
on a free port, with the request limits lowered so that the 413 paths are cheap to reach, and
two variants more: the shipped x4 model on the ONNX Runtime backend (``ONNX_VARIANT``), exported
when its replica starts, and the same model with the x8 self-ensemble (``ENSEMBLE_VARIANT``).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pixelfleet.serve.cli import DEFAULT_CONFIG
from tests.conftest import REPO
from pixelfleet.serve.runner import load_serve_config, start_local
from tests.integration.otlp_receiver import OtlpReceiver

APP_NAME = "pixelfleet"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000
MAX_OUTPUT_PIXELS = 1_000_000
INVERT_KIND = "tests.families.invert:SPEC"
ONNX_VARIANT = "srresnet-x4-onnx"
SESSION_CPUS = 4  # logical CPUs of the session's Ray; local.yaml's replicas reserve 2 of them
ENSEMBLE_VARIANT = "srresnet-x4-ensemble"
S3_INPUTS = "pixelfleet-inputs"  # a bucket of the session's S3 server (moto), a storage root of its jobs
WEBHOOK_SECRET = "whsec_cGl4ZWxmbGVldC10ZXN0LXdlYmhvb2stc2VjcmV0LTMyYg=="  # signs the session's job webhooks


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
def s3_options() -> Iterator[dict]:
    """A local S3 server (moto's server mode, in this process) holding bucket :data:`S3_INPUTS`:
    the fsspec ``s3`` options that reach it (the session's job storage reads inputs from it)."""
    from tests.s3_server import s3_server

    with s3_server(S3_INPUTS) as options:
        yield options


@pytest.fixture(scope="session")
def app_url(tmp_path_factory, otlp_receiver, s3_options) -> Iterator[str]:
    import ray
    from ray import serve
    from ray.serve.schema import DeploymentSchema

    schema = load_serve_config(DEFAULT_CONFIG, host="127.0.0.1", port=_free_port())
    app = schema.applications[0]
    app.args["limits"] = {"max_body_bytes": MAX_BODY_BYTES, "max_pixels": MAX_PIXELS, "max_output_pixels": MAX_OUTPUT_PIXELS}
    app.args["tracing"] = {"otlp_endpoint": otlp_receiver.endpoint}
    app.args["state"] = {"path": str(tmp_path_factory.mktemp("state") / "state.json")}
    jobs_folder = Path(app.args["state"]["path"]).parent / "jobs"  # jobs' default storage, plus an S3 root and webhooks to 127.0.0.1
    app.args["jobs"] = {
        **app.args.get("jobs", {}),
        "storage": {"roots": [str(jobs_folder / "files"), f"s3://{S3_INPUTS}"], "results": str(jobs_folder / "results"), "options": {"s3": s3_options}},
        "webhooks": {"allowed_hosts": ["127.0.0.1"], "secrets": [WEBHOOK_SECRET], "backoff_s": 0.2},
    }  # fmt: skip
    app.args["families"]["superres"]["variants"][ONNX_VARIANT] = {
        "weights": "builtin:srresnet-x4", "backend": "onnx", "tile_size": 64, "overlap": 16, "max_batch_size": 2, "num_threads": 1,
    }  # fmt: skip
    app.args["families"]["superres"]["variants"][ENSEMBLE_VARIANT] = {
        "weights": "builtin:srresnet-x4", "ensemble": True, "tile_size": 64, "overlap": 16, "max_batch_size": 2, "num_threads": 1,
    }  # fmt: skip
    # the test-only plug-in family (tests/families/invert.py): served without a line of serve/ naming it
    app.args["families"]["invert"] = {
        "kind": INVERT_KIND, "default": "a",
        "variants": {"a": {}, "b": {"mode": "identity"}, "slow": {"delay_s": 2.0}},
    }  # fmt: skip
    app.runtime_env.setdefault("env_vars", {})["PYTHONPATH"] = str(REPO)  # replicas import tests.families
    # local.yaml hands out both CPUs; these extra replicas reserve none (they are idle but for their tests)
    for variant in (ONNX_VARIANT, ENSEMBLE_VARIANT):
        app.deployments.append(DeploymentSchema(name=f"superres-{variant}", num_replicas=1, ray_actor_options={"num_cpus": 0}))
    for variant in ("a", "b", "slow"):
        app.deployments.append(DeploymentSchema(name=f"invert-{variant}", num_replicas=1, ray_actor_options={"num_cpus": 0}))
    try:
        # more logical CPUs than the replicas reserve: the rest is free for a training run that joins
        yield start_local(schema, timeout_s=600, num_cpus=SESSION_CPUS, announce=session_cluster_file(tmp_path_factory))
    finally:
        serve.shutdown()
        ray.shutdown()


def session_cluster_file(tmp_path_factory) -> Path:
    """Where the session's Ray is announced, as ``pixelfleet up`` announces its own (not in the
    default place, so no other process on this machine joins the test session)."""
    return tmp_path_factory.getbasetemp() / "ray-cluster.json"


def joining_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a command that should find the session's cluster by itself, as from a
    fresh shell: no RAY_ADDRESS, no RAY_AUTH_MODE (Ray set it in this process when it started
    the session's cluster), and the session's announcement file."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PIXELFLEET_CLUSTER_FILE"] = str(session_cluster_file(tmp_path_factory))
    return env


@pytest.fixture(scope="session")
def trained_x4_model(app_url: str, tmp_path_factory) -> Path:
    """A tiny x4 model trained by ``pixelfleet train srgan`` in a subprocess that finds and joins
    the session's cluster by itself (no RAY_ADDRESS; the announcement file as ``pixelfleet up``
    writes it); returns the run's model folder. Beside it: ``train.log`` (the command's stdout and
    stderr) and ``runs/`` (the Ray Train storage).

    Trains 2 residual blocks of 16 channels for 30 steps on ``../shared/datasets/sr/train/t91``
    when present, else on synthetic photos; validates on synthetic photos.
    """
    from tests.conftest import DATASETS, REPO, synthetic_photo

    work = tmp_path_factory.mktemp("trained-x4")
    val = work / "val"
    val.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_photo(96, 128, seed=100 + i)).save(val / f"{i}.png")
    train = DATASETS / "sr" / "train" / "t91"
    if not train.is_dir():
        train = work / "train"
        train.mkdir()
        for i in range(8):
            Image.fromarray(synthetic_photo(96, 128, seed=i)).save(train / f"{i}.png")
    model = work / "model"
    command = [
        sys.executable, "-m", "pixelfleet.serve.cli", "train", "srgan",
        "--output", str(model), "--train-data", str(train), "--val-data", str(val), "--name", "joined-x4",
        "--scale", "4", "--channels", "16", "--blocks", "2", "--steps", "30", "--checkpoint-every", "15",
        "--batch-size", "4", "--hr-patch", "32", "--num-workers", "1", "--storage-path", str(work / "runs"),
        "--set", "data.patches_per_image=4",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=joining_env(tmp_path_factory), cwd=REPO)
    (work / "train.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return model


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
