"""`pixelfleet train lora` end to end: a real (tiny) Ray Train run in a subprocess that joins the
test session's cluster by itself, trains an adapter for the tiny pipeline of tests/tinysd.py on
captioned images made here, and writes it into the adapters folder of a diffusion variant that
already runs (an app beside the session's, deployed while the run trains); the app then serves
it by id without a restart. A run that does not fit beside the replicas is refused."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from tests.conftest import REPO, synthetic_photo
from tests.integration.conftest import SESSION_CPUS, joining_env

pytestmark = pytest.mark.integration
EXAMPLE_CONFIG = "train/configs/lora.yaml"
ADAPTER = "blob-style"
PROMPT = "a photo of blob number 1"
SERVE_APP = "loraapp"


def write_captioned(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(synthetic_photo(24, 32, seed=i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a photo of blob number {i}")
    return folder


def overrides(tiny_folder: Path, data: Path, output: Path, storage: Path) -> list[str]:
    """The --set overrides that turn train/configs/lora.yaml (a real SD 1.5 run) into the tiny test run."""
    pairs = {
        "name": ADAPTER, "base_model": tiny_folder, "output": output, "data.train": f"[{data}]", "data.resolution": 16,
        "optim.steps": 4, "optim.batch_size": 2, "optim.learning_rate": 1e-2, "optim.lr_scheduler": "constant",
        "optim.snr_gamma": "null", "validation.prompts": f"[{PROMPT}]", "validation.seeds": "[0]", "validation.every": 2,
        "validation.num_inference_steps": 2, "checkpoint_every": 2, "precision": "fp32", "storage_path": storage,
    }  # fmt: skip
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]


def diffusion_family_present() -> bool:
    """Whether this tree holds the diffusion family (deployments/diffusion exports a SPEC)."""
    try:
        from pixelfleet.deployments.diffusion import SPEC  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def diffusion_app(tiny_folder: Path, adapters: Path, state: Path) -> Iterator[str | None]:
    """App ``loraapp`` beside the session's (route prefix ``/loraapp``): one diffusion variant
    ``tiny`` on the tiny pipeline whose adapters come from ``adapters``; yields its base URL path,
    or None where the tree has no diffusion family."""
    if not diffusion_family_present():
        yield None
        return
    from ray.serve.schema import ServeApplicationSchema

    from tests.integration.apps import beside_session

    variant = {"model": str(tiny_folder), "adapters": [str(adapters)], "max_width": 64, "max_height": 64, "num_threads": 1, "warmup": False}
    app = ServeApplicationSchema(
        name=SERVE_APP, route_prefix=f"/{SERVE_APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
        args={"families": {"diffusion": {"kind": "diffusion", "default": "tiny", "variants": {"tiny": variant}}}, "state": {"path": str(state)}},
        deployments=[{"name": "Ingress", "ray_actor_options": {"num_cpus": 0}}, {"name": "diffusion-tiny", "ray_actor_options": {"num_cpus": 0}}],
    )  # fmt: skip
    with beside_session(app):
        yield f"/{SERVE_APP}"


@pytest.fixture(scope="module")
def trained_lora(app_url: str, tiny_sd, tmp_path_factory) -> Iterator[dict]:
    """`pixelfleet train lora train/configs/lora.yaml --set ...` in a subprocess that finds and
    joins the session's cluster (no RAY_ADDRESS; the announcement file): 4 steps on 4 captioned
    16x16 images, written into the adapters folder of a diffusion app deployed beside the
    session's while it trains (so the app runs before the adapter exists). Yields the adapter and
    card paths, the run folder, the command's log, and the app's path (None without the family)."""
    work = tmp_path_factory.mktemp("lora-train")
    data = write_captioned(work / "data", 4)
    adapters = work / "adapters"
    adapters.mkdir()
    command = [sys.executable, "-m", "pixelfleet.serve.cli", "train", "lora", EXAMPLE_CONFIG,
               *overrides(tiny_sd["folder"], data, adapters, work / "runs")]  # fmt: skip
    log_path = work / "train.log"
    with log_path.open("w") as log_file:
        training = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=joining_env(tmp_path_factory), cwd=REPO)
    try:
        with diffusion_app(tiny_sd["folder"], adapters, work / "state.json") as app_path:
            returncode = training.wait(timeout=600)
            log = log_path.read_text()
            assert returncode == 0, log[-4000:]
            yield {"adapter": adapters / f"{ADAPTER}.safetensors", "card": adapters / f"{ADAPTER}.json", "run": work / "runs" / ADAPTER,
                   "log": log, "app": app_path}  # fmt: skip
    finally:
        if training.poll() is None:
            training.kill()
            training.wait()


def test_training_joins_the_serving_cluster_and_writes_an_adapter_with_its_card(trained_lora, tiny_sd):
    session = ray.get_runtime_context().gcs_address
    log = trained_lora["log"]
    assert f"joined the Ray cluster at {session} (announced in " in log
    assert "Started a local Ray instance" not in log
    assert f"of {SESSION_CPUS:g} CPUs free at {session}: workers 1 x 1 CPU" in log and "4 captioned images" in log

    card = json.loads(trained_lora["card"].read_text())
    assert card["name"] == ADAPTER and card["weights"] == f"{ADAPTER}.safetensors" and card["steps"] == 4
    assert card["base_model"] == str(tiny_sd["folder"]) and card["base_pipeline"] == "StableDiffusionPipeline"
    assert card["rank"] == 4 and card["cross_attention_dim"] == 32 and card["images"] == 4
    assert card["command"].startswith(f"pixelfleet train lora {EXAMPLE_CONFIG} --set name={ADAPTER} ")
    from pixelfleet.train.lora.card import sha256_file

    assert card["sha256"] == sha256_file(trained_lora["adapter"])
    with safe_open(str(trained_lora["adapter"]), "pt") as f:
        assert all(key.startswith("unet.") and ".lora." in key for key in f.keys())  # noqa: SIM118 (safe_open has no __iter__)

    run = trained_lora["run"]
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-000002", "step-000004"]
    assert Image.open(run / "validation" / "step-000004" / "prompt0-seed0.png").size == (16, 16)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("train/loss")) == [1, 2, 3, 4]
    # the last checkpoint holds the full state at step 4
    snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    latest = max(snapshot["checkpoint_results"], key=lambda r: r["metrics"]["step"])
    state = torch.load(run / latest["checkpoint_dir_name"] / "train_state.pt", weights_only=False)
    assert state["step"] == 4 and state["lr_scheduler"]["last_epoch"] == 4 and len(state["rng"]) == 1


def served_image(client, app_path: str, loras: list[dict]) -> np.ndarray:
    """The app's diffusion output for a fixed prompt and seed, ``(H, W, 3)`` float32 in [0, 255]."""
    body = {"prompt": PROMPT, "steps": 4, "guidance_scale": 7.5, "width": 16, "height": 16, "seed": 0, "loras": loras}
    response = client.post(f"{app_path}/v1/diffusion/txt2img", json=body)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB"), dtype=np.float32)


def test_the_running_app_serves_the_trained_adapter_by_id_and_it_changes_the_output(trained_lora, client):
    app_path = trained_lora["app"]
    if app_path is None:
        pytest.skip("this tree has no diffusion family (deployments/diffusion)")
    listing = client.get(f"{app_path}/v1/diffusion/loras")
    assert listing.status_code == 200, listing.text
    listed = {a["id"]: a for a in listing.json()["adapters"]}[ADAPTER]
    assert listed["rank"] == 4 and listed["fits"] is True and listed["cross_attention_dim"] == 32
    base = served_image(client, app_path, [])
    adapted = served_image(client, app_path, [{"id": ADAPTER, "scale": 1}])
    assert np.abs(adapted - base).mean() > 2.0  # on average over 2 of 255 levels
    np.testing.assert_array_equal(served_image(client, app_path, [{"id": ADAPTER, "scale": 1}]), adapted)  # same seed, same image
    np.testing.assert_array_equal(served_image(client, app_path, [{"id": ADAPTER, "scale": 0}]), base)  # scale 0: the base


def test_the_trained_adapter_changes_the_tiny_pipeline_s_output_in_diffusers(trained_lora):
    from tests.tinysd import SIZE, build_pipeline

    def generate(pipe) -> np.ndarray:
        out = pipe(PROMPT, num_inference_steps=4, guidance_scale=7.5, height=SIZE, width=SIZE,
                   generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
        return out.images[0]

    pipe = build_pipeline(0)
    base = generate(pipe)
    pipe.load_lora_weights(str(trained_lora["adapter"]), adapter_name=ADAPTER)
    assert np.abs(generate(pipe) - base).mean() > 2 / 255


def test_a_run_that_does_not_fit_beside_the_replicas_is_refused(app_url: str, tiny_sd, tmp_path: Path):
    from pixelfleet.serve.cli import app

    data = write_captioned(tmp_path / "data", 2)
    free = ray.available_resources().get("CPU", 0.0)
    args = ["train", "lora", EXAMPLE_CONFIG, *overrides(tiny_sd["folder"], data, tmp_path / "out", tmp_path / "runs"),
            "--set", f"scaling.cpus_per_worker={SESSION_CPUS + 1}"]  # fmt: skip
    # in this process, already a driver of the session's cluster: the command takes that cluster
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = re.search(rf"has (\S+) CPUs free of {SESSION_CPUS:g}", result.output)
    assert said and float(said.group(1)) >= free - 1e-6  # more if a variant went back to zero meanwhile
    assert "scaling.cpus_per_worker" in result.output
    assert not (tmp_path / "runs" / ADAPTER).exists() and not (tmp_path / "out").exists()
