"""`pixelfleet train srgan` end to end: real (tiny) Ray Train runs, each in its own process with
its own local Ray: the psnr phase with early stopping, then the gan phase from its model,
stopped by Ctrl-C and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pixelfleet.models.srnet import load_model, upscale_whole
from tests.conftest import synthetic_photo

pytestmark = pytest.mark.integration
PIXELFLEET = [sys.executable, "-m", "pixelfleet.serve.cli"]
ENV = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the test session's


def write_images(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(synthetic_photo(72, 88, seed=seed + i)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    write_images(root / "train", 4, seed=0)
    write_images(root / "val", 2, seed=100)
    return root


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """TensorBoard scalars of a run: tag -> {step: value}, read the way TensorBoard reads them."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def psnr_run(work) -> tuple[subprocess.CompletedProcess, Path]:
    """A psnr run by the named flags, told to stop early: any validation after the first must gain 100 dB."""
    output = work / "psnr-model"
    command = [
        *PIXELFLEET, "train", "srgan",
        "--output", str(output), "--train-data", str(work / "train"), "--val-data", str(work / "val"),
        "--name", "tiny-x2", "--scale", "2", "--channels", "8", "--blocks", "1", "--upsampler", "single",
        "--steps", "12", "--checkpoint-every", "3", "--batch-size", "4", "--hr-patch", "32",
        "--num-workers", "2", "--storage-path", str(work / "runs"),
        "--set", "early_stopping.patience=1", "--set", "early_stopping.min_delta=100", "--set", "data.patches_per_image=8",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, output


def test_psnr_run_stops_early_and_writes_a_servable_model_folder(psnr_run, work):
    done, output = psnr_run
    card = json.loads((output / "model.json").read_text())
    assert card["name"] == "tiny-x2" and card["architecture"]["scale"] == 2 and card["architecture"]["upsampler"] == "single"
    training = card["training"]
    assert training["steps"] == 6 and training["stopped_early"] and training["phase"] == "psnr"
    assert training["workers"] == 2 and training["command"].startswith("pixelfleet train srgan --output")
    assert card["metrics"]["images"] == 2 and card["metrics"]["border"] == 2 and card["metrics"]["bicubic_psnr_y"] > 20

    tb = scalars(work / "runs" / "tiny-x2")
    assert sorted(tb["train/loss"]) == [1, 2, 3, 4, 5, 6]  # every step, and none after the stop
    assert sorted(tb["val/psnr_y"]) == [3, 6]
    best_step = max(tb["val/psnr_y"], key=tb["val/psnr_y"].get)
    assert training["checkpoint_step"] == best_step  # the folder holds the best validation, not the last
    assert card["metrics"]["psnr_y"] == pytest.approx(tb["val/psnr_y"][best_step], abs=1e-4)

    model, loaded = load_model(output)
    assert loaded.name == "tiny-x2"
    assert upscale_whole(model, synthetic_photo(10, 12)).shape == (20, 24, 3)


def latest_state(run_dir: Path) -> dict:
    """The training state in the run's latest checkpoint, as Ray Train's run snapshot names it."""
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    latest = max(result["metrics"]["step"] for result in snapshot["checkpoint_results"])
    folder = next(r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"] if r["metrics"]["step"] == latest)
    return torch.load(run_dir / folder / "train_state.pt", weights_only=False)


def test_gan_run_stopped_by_ctrl_c_resumes_exactly(psnr_run, work):
    _, psnr_model = psnr_run
    run_dir = work / "runs" / "tiny-gan"
    config = {
        "name": "tiny-gan",
        "output": str(work / "gan-model"),
        "phase": "gan",
        "init_from": str(psnr_model),
        "architecture": {"scale": 2, "channels": 8, "blocks": 1, "upsampler": "single"},
        "data": {"train": [str(work / "train")], "val": str(work / "val"), "hr_patch": 32, "patches_per_image": 8},
        "optim": {"steps": 60, "batch_size": 4, "ema_decay": 0.9},
        "gan": {"discriminator_channels": 8},
        "checkpoint_every": 4,
        "storage_path": str(work / "runs"),
    }
    config_path = work / "gan.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [*PIXELFLEET, "train", "srgan", str(config_path)]

    first_log = work / "first-run.log"
    with first_log.open("wb") as log:
        first = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint_manager_snapshot.json").exists():
            ended = first.poll() is not None or time.monotonic() > deadline
            assert not ended, "no checkpoint before the run ended:\n" + first_log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
        assert first.wait(timeout=120) != 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    stopped_at = latest_state(run_dir)["step"]
    assert 0 < stopped_at < 60

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently over an existing run
    changed = subprocess.run([*command, "--resume", "--steps", "80"], capture_output=True, text=True, timeout=120, env=ENV)
    assert changed.returncode == 2 and "optim" in changed.stderr

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed at step {stopped_at}" in resumed.stdout + resumed.stderr

    state = latest_state(run_dir)
    assert state["step"] == 60
    assert state["scheduler"]["last_epoch"] == 60 and state["d_scheduler"]["last_epoch"] == 60
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {60.0}  # Adam's moments went on from the checkpoint, not from zero
    assert {float(s["step"]) for s in state["d_optimizer"]["state"].values()} == {60.0}
    assert int(state["ema"]["n_averaged"]) == 60  # the weight average went on from the checkpoint too
    tb = scalars(run_dir)
    assert set(range(1, 61)) <= set(tb["train/discriminator_loss"])
    served, _ = load_model(work / "gan-model")
    for key, value in served.state_dict().items():  # the model folder holds the average, not the last weights
        assert torch.equal(value, state["ema"][f"module.{key}"])
    assert any(not torch.equal(value, state["generator"][key]) for key, value in served.state_dict().items())

    card = json.loads((work / "gan-model" / "model.json").read_text())
    assert card["training"]["phase"] == "gan" and card["training"]["resumed"] and card["training"]["steps"] == 60
    assert card["training"]["init_from"] == str(psnr_model)
