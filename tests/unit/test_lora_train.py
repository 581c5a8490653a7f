"""LoRA training without Ray: the config, the data order, the training state and its exact resume,
and the adapter file a real diffusers pipeline loads (on the tiny pipeline of tests/tinysd.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors import safe_open

from pixelfleet.train.lora.config import LoraTrainConfig, load_config
from pixelfleet.train.lora.data import list_captioned, square_crop
from pixelfleet.train.lora.sampler import batch_indices, steps_per_epoch
from pixelfleet.train.lora.loop import read_checkpoint, write_checkpoint
from pixelfleet.train.lora.model import BaseModelError, read_model_index
from pixelfleet.train.lora.run import RunStateError, check_run_dir
from pixelfleet.train.lora.steps import LoraTraining, rng_seed
from tests.conftest import REPO, synthetic_photo
from tests.tinysd import SIZE, build_pipeline

EXAMPLE_CONFIG = REPO / "train" / "configs" / "lora.yaml"


def test_the_example_config_validates_and_set_overrides_any_field(tmp_path: Path):
    cfg = load_config(EXAMPLE_CONFIG, {"optim.steps": 7, "lora.text_encoder": True, "data.resolution": 64})
    assert cfg.optim.steps == 7 and cfg.lora.text_encoder and cfg.data.resolution == 64
    assert cfg.lora.target_modules == ["to_k", "to_q", "to_v", "to_out.0"] and cfg.lora.lora_alpha == cfg.lora.rank
    with pytest.raises(ValidationError, match="optim.stepz"):
        load_config(EXAMPLE_CONFIG, {"optim.stepz": 7})
    with pytest.raises(ValidationError, match="multiple of 8"):
        load_config(EXAMPLE_CONFIG, {"data.resolution": 60})
    with pytest.raises(ValidationError, match="must divide among 2 workers"):
        load_config(EXAMPLE_CONFIG, {"scaling.num_workers": 2, "optim.batch_size": 3})


def write_captioned(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (24, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_photo(*size, seed=seed + i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a photo of blob number {i}\n")
    return folder


def test_captions_come_from_txt_files_and_a_missing_one_is_named(tmp_path: Path):
    folder = write_captioned(tmp_path / "data", 3)
    captions = list_captioned([folder])
    assert list(captions.values()) == [f"a photo of blob number {i}" for i in range(3)]
    (folder / "1.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 images have no caption file .*1\.png"):
        list_captioned([folder])


def test_square_crop_resizes_the_short_side_and_cuts_the_centre():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 255  # the centre half is white
    out = square_crop(image, 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[:, 1:9].min() > 200 and out.mean() > 200  # the centre, not the black left edge


def test_each_epoch_deals_every_image_once_and_the_order_is_a_function_of_the_step():
    examples, world, per_worker = 10, 2, 2
    per_epoch = steps_per_epoch(examples, world, per_worker)
    assert per_epoch == 2  # 5 images per rank, partial batches dropped
    for epoch in range(3):
        seen = [i for step in range(epoch * per_epoch, (epoch + 1) * per_epoch) for rank in range(world)
                for i in batch_indices(step, examples, rank, world, per_worker, seed=7)]  # fmt: skip
        assert len(seen) == len(set(seen)) == world * per_worker * per_epoch  # no image twice in an epoch
    again = [batch_indices(step, examples, 1, world, per_worker, seed=7) for step in range(6)]
    assert again == [batch_indices(step, examples, 1, world, per_worker, seed=7) for step in range(6)]
    assert again != [batch_indices(step, examples, 1, world, per_worker, seed=8) for step in range(6)]
    with pytest.raises(ValueError, match="cannot fill one step"):
        steps_per_epoch(3, 2, 3)  # 2 images per rank (one repeated), 3 needed


def test_the_base_must_be_an_sd1_or_sd2_diffusers_folder(tmp_path: Path, tiny_sd):
    assert read_model_index(tiny_sd["folder"])["_class_name"] == "StableDiffusionPipeline"
    with pytest.raises(BaseModelError, match="not a diffusers folder"):
        read_model_index(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(BaseModelError, match="StableDiffusionXLPipeline"):
        read_model_index(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"in_channels": 9}))
    with pytest.raises(BaseModelError, match="takes 9 latent channels"):
        read_model_index(tmp_path)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[dict]:
    """Four captioned images as the Ray Data pipeline gives them (sorted rows)."""
    captions = list_captioned([write_captioned(tmp_path_factory.mktemp("lora-data"), 4)])
    return [{"path": p, "caption": c, "pixels": square_crop(np.asarray(Image.open(p).convert("RGB")), SIZE)} for p, c in captions.items()]


def tiny_config(tiny_sd, tmp_path: Path) -> LoraTrainConfig:
    return LoraTrainConfig.model_validate({
        "name": "unit-lora", "base_model": str(tiny_sd["folder"]), "output": str(tmp_path / "adapters"),
        "data": {"train": [str(tmp_path)], "resolution": SIZE},
        "lora": {"rank": 4, "text_encoder": True},
        # warm-up then cosine: the schedule's position matters; weight decay and clipping on
        "optim": {"steps": 4, "batch_size": 2, "learning_rate": 1e-2, "lr_scheduler": "cosine", "warmup_steps": 1},
        "precision": "fp32", "storage_path": str(tmp_path / "runs"),
    })  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_sd, examples, tmp_path_factory) -> dict:
    """The same tiny run (text encoder adapted too) taken 3 steps straight, and 1 step, then a
    checkpoint, then 2 steps by a fresh state restored from that checkpoint."""
    tmp_path = tmp_path_factory.mktemp("lora-runs")
    cfg = tiny_config(tiny_sd, tmp_path)
    cpu = torch.device("cpu")
    straight = LoraTraining(cfg, cpu)
    straight_losses = [straight.train_step(examples)["loss"] for _ in range(3)]
    first = LoraTraining(cfg, cpu)
    first_losses = [first.train_step(examples)["loss"]]
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    write_checkpoint(first, folder, [first.rng_state()])  # as a worker writes it at step 1
    del first
    torch.manual_seed(12345)  # the new process's global RNG is elsewhere; the checkpoint restores it
    resumed = LoraTraining(cfg, cpu)
    read_checkpoint(resumed, folder)
    restored_step = resumed.step
    resumed_losses = [resumed.train_step(examples)["loss"] for _ in range(2)]
    return {"straight": straight, "resumed": resumed, "straight_losses": straight_losses, "restored_step": restored_step,
            "resumed_losses": first_losses + resumed_losses, "checkpoint": folder, "tmp": tmp_path}  # fmt: skip


def test_a_run_resumed_from_a_checkpoint_reaches_the_uninterrupted_run_s_weights(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert runs["restored_step"] == 1 and resumed.step == straight.step == 3
    assert runs["resumed_losses"] == runs["straight_losses"]
    want, got = straight.adapter_state(), resumed.adapter_state()
    assert set(want) == {"unet", "text_encoder"} and set(want["unet"]) == set(got["unet"])
    for part in want:
        for key, value in want[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=0, atol=1e-7)
    assert any(v.abs().max() > 1e-3 for k, v in want["unet"].items() if "lora_B" in k)  # it did learn (B starts at 0)
    assert resumed.lr_scheduler.state_dict()["last_epoch"] == straight.lr_scheduler.state_dict()["last_epoch"] == 3
    assert {float(s["step"]) for s in resumed.optimizer.state_dict()["state"].values()} == {3.0}  # Adam's moments went on
    # the checkpoint holds the generator as it was after step 1, not as seeded: the restore is what kept the noise in step
    saved = torch.load(runs["checkpoint"] / "train_state.pt", weights_only=False)["rng"][0]["generator"]
    assert not torch.equal(saved, torch.Generator().manual_seed(rng_seed(0, 0)).get_state())


def generate(pipe, seed: int = 0) -> np.ndarray:
    """``(H, W, 3)`` float32 in [0, 1]: the tiny pipeline's image for a fixed prompt and seed."""
    out = pipe("a photo of blob number 1", num_inference_steps=4, guidance_scale=7.5, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(seed), output_type="np")  # fmt: skip
    return out.images[0]


def test_a_few_steps_give_an_adapter_file_that_diffusers_loads_and_that_changes_the_output(runs, tmp_path: Path):
    training = runs["straight"]  # 3 steps
    write_checkpoint(training, tmp_path, [training.rng_state()])
    adapter = tmp_path / "unit-lora.safetensors"
    with safe_open(str(adapter), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    # diffusers' key style, as save_lora_weights writes it: 4 transformer blocks (down 1, up 2, mid 1) x 2 attentions x 4 projections x (down, up)
    unet_keys = {k for k in keys if k.startswith("unet.")}
    assert len(unet_keys) == 64 and all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in unet_keys)
    assert any(".attn2.to_out.0.lora.up.weight" in k for k in unet_keys)
    assert {k for k in keys if k.startswith("text_encoder.")} and keys == unet_keys | {k for k in keys if k.startswith("text_encoder.")}
    config_header = json.loads(metadata["lora_adapter_metadata"])
    assert config_header["unet.r"] == 4 and set(config_header["unet.target_modules"]) == {"to_q", "to_k", "to_v", "to_out.0"}

    pipe = build_pipeline(0)  # the same weights as the folder trained on
    base = generate(pipe)
    pipe.load_lora_weights(str(adapter), adapter_name="trained")
    adapted = generate(pipe)
    assert np.abs(adapted - base).mean() > 2 / 255  # measurably different: on average over 2 of 255 levels
    pipe.set_adapters(["trained"], adapter_weights=[0.0])
    np.testing.assert_allclose(generate(pipe), base, atol=1e-5)  # scale 0 is the base again: the change is the adapter's


def test_a_fresh_run_over_an_existing_one_and_a_resume_with_changed_training_fields_are_refused(tiny_sd, tmp_path: Path):
    cfg = tiny_config(tiny_sd, tmp_path)
    with pytest.raises(RunStateError, match="nothing to resume"):
        check_run_dir(cfg, resume=True)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    (cfg.run_dir / "config.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    with pytest.raises(RunStateError, match="pass --resume"):
        check_run_dir(cfg, resume=False)
    check_run_dir(cfg, resume=True)
    changed = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"steps": 8}), "checkpoint_every": 2})
    with pytest.raises(RunStateError, match="differ from .*: optim$"):
        check_run_dir(changed, resume=True)


def test_the_command_refuses_a_bad_config_base_or_data_with_exit_2_before_ray_starts(tiny_sd, tmp_path: Path):
    import ray
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    data = write_captioned(tmp_path / "data", 1)
    args = ["train", "lora", str(EXAMPLE_CONFIG), "--set", f"data.train=[{data}]", "--set", f"storage_path={tmp_path / 'runs'}"]
    cases = [
        (["--set", "optim.stepz=3"], "invalid run config:\n  optim.stepz: Extra inputs are not permitted"),
        (["--set", f"base_model={tmp_path}"], f"base_model {tmp_path} is not a diffusers folder"),
        (["--set", f"base_model={tiny_sd['folder']}", "--set", "optim.batch_size=2"], "1 images cannot fill one step of 2 images"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()
