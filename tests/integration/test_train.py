"""`pixelfleet train srgan` end to end: a real (tiny) Ray Train run in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from deployments.srnet import load_model, upscale_whole
from tests.conftest import synthetic_photo

pytestmark = pytest.mark.integration


def write_images(folder, count, seed):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(synthetic_photo(72, 88, seed=seed + i)).save(folder / f"{i}.png")


def test_train_srgan_writes_a_servable_model_folder(tmp_path):
    write_images(tmp_path / "train", 4, seed=0)
    write_images(tmp_path / "val", 2, seed=100)
    output = tmp_path / "model"
    command = [
        sys.executable, "-m", "serve.cli", "train", "srgan",
        "--output", str(output), "--train-data", str(tmp_path / "train"), "--val-data", str(tmp_path / "val"),
        "--name", "tiny-x2", "--scale", "2", "--channels", "8", "--blocks", "1",
        "--steps", "6", "--val-every", "3", "--batch-size", "4", "--hr-patch", "32",
        "--num-workers", "2", "--storage-path", str(tmp_path / "runs"),
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the test session's
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    card = json.loads((output / "model.json").read_text())
    assert card["name"] == "tiny-x2" and card["architecture"]["scale"] == 2
    assert card["training"]["steps"] == 6 and card["training"]["workers"] == 2
    assert card["training"]["command"].startswith("pixelfleet train srgan")
    assert card["metrics"]["images"] == 2 and card["metrics"]["border"] == 2
    assert card["metrics"]["bicubic_psnr_y"] > 20

    model, loaded = load_model(output)
    assert loaded.name == "tiny-x2"
    assert upscale_whole(model, synthetic_photo(10, 12)).shape == (20, 24, 3)
