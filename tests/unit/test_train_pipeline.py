"""The SRGAN training pieces without Ray: run configs, the discriminator and losses, one step of
each phase on a real (tiny) generator, early stopping, resume checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from pixelfleet.models.modelcard import SRArchitecture
from pixelfleet.models.srnet import SRResNet
from pixelfleet.train.srgan.config import GanConfig, load_config, parse_assignment
from pixelfleet.train.srgan.gan import VGG_LAYERS, Discriminator, VGGFeatureLoss, discriminator_loss, vgg19_features
from pixelfleet.train.srgan.run import RunStateError, changed_training_fields, check_run_dir, cpus_per_worker, scaling_config
from pixelfleet.models.metrics import rgb_to_y
from pixelfleet.train.srgan.steps import EarlyStopper, GanParts, Precision, gan_step, luma, pixel_loss, psnr_step, resolve_precision, weight_average

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"output": "out", "data": {"train": ["a"], "val": "b"}}


def write_yaml(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def sr_run_configs() -> list[Path]:
    """The shipped ``train srgan`` configs (``lora*.yaml`` are ``train lora``'s)."""
    return sorted(p for p in (REPO / "train" / "configs").glob("*.yaml") if not p.stem.startswith("lora"))


def test_shipped_run_configs_validate():
    paths = sr_run_configs()
    assert {p.stem for p in paths} >= {"srresnet-x4-stage1", "srresnet-x4-stage2", "srresnet-x4", "srresnet-x2", "srgan-x4"}
    for path in paths:
        cfg = load_config(path, {})
        assert cfg.output in (Path("models/weights") / cfg.name, Path("runs") / cfg.name / "model")

def test_each_stage_starts_from_a_stage_that_has_a_config():
    configs = [load_config(path, {}) for path in sr_run_configs()]
    outputs = {cfg.output: cfg for cfg in configs}
    for cfg in configs:
        if cfg.init_from is not None and cfg.init_from.parts[0] == "runs":
            parent = outputs[cfg.init_from]  # KeyError: a stage nobody can reproduce
            assert parent.architecture.scale == cfg.architecture.scale and parent.architecture.blocks <= cfg.architecture.blocks


def test_overrides_beat_the_file(tmp_path):
    path = write_yaml(tmp_path, {**MINIMAL, "optim": {"steps": 10, "batch_size": 8}})
    cfg = load_config(path, dict([parse_assignment("optim.steps=25"), parse_assignment("architecture.scale=2"), ("name", "x")]))
    assert cfg.optim.steps == 25 and cfg.optim.batch_size == 8 and cfg.architecture.scale == 2 and cfg.name == "x"
    assert parse_assignment("data.train=[p, q]") == ("data.train", ["p", "q"])
    with pytest.raises(ValueError):
        parse_assignment("steps")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"optim.stpes": 5}, "stpes"),  # typo: unknown field
        ({"data.hr_patch": 30}, "hr_patch"),  # not a multiple of the scale (4)
        ({"optim.batch_size": 5}, "batch_size"),  # does not divide among 2 workers
        ({"phase": "gan"}, "init_from"),  # gan needs a generator to start from
        ({"precision": "int4"}, "precision"),
        ({"optim.luma_weight": 1.5}, "luma_weight"),
        ({"data.hr_rescale": [0.0, 1.0]}, "hr_rescale"),  # a factor of 0
        ({"data.hr_rescale": [0.9, 0.7]}, "hr_rescale"),  # low above high
        ({"data.hr_rescale": [0.5, 1.5]}, "hr_rescale"),  # enlarging is not a new HR photo
        ({"name": "../escape"}, "name"),
    ],
)
def test_bad_fields_are_named(tmp_path, override, field):
    with pytest.raises(ValidationError) as err:
        load_config(write_yaml(tmp_path, MINIMAL), override)
    assert field in str(err.value)


def test_config_must_be_a_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError):
        load_config(path, {})


def test_resume_refuses_changed_training_fields(tmp_path):
    base = load_config(None, {**{"output": "o", "data.train": ["a"], "data.val": "b"}, "storage_path": str(tmp_path)})
    changed = base.model_copy(update={"optim": base.optim.model_copy(update={"steps": 7}), "output": Path("elsewhere")})
    assert changed_training_fields(base, changed) == ["optim"]  # output may change, the schedule may not
    with pytest.raises(RunStateError, match="nothing to resume"):
        check_run_dir(base, resume=True)
    check_run_dir(base, resume=False)
    base.run_dir.mkdir(parents=True)
    (base.run_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    with pytest.raises(RunStateError, match="--resume"):
        check_run_dir(base, resume=False)


def test_discriminator_takes_any_patch_size():
    discriminator = Discriminator(channels=8)
    for side in (16, 40):
        logits = discriminator(torch.rand(3, 3, side, side))
        assert logits.shape == (3,) and logits.dtype == torch.float32
    confident = discriminator_loss(torch.full((4,), 9.0), torch.full((4,), -9.0))
    fooled = discriminator_loss(torch.full((4,), -9.0), torch.full((4,), 9.0))
    assert confident < 0.01 < 9 < fooled


def vgg_file(tmp_path: Path, layer: str = "relu2_2") -> Path:
    """A torchvision-layout VGG19 state dict (random, truncated at ``layer``), as a user's file would be."""
    features = vgg19_features(VGG_LAYERS[layer])
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_vgg_loss_loads_local_weights_only(tmp_path):
    loss = VGGFeatureLoss(vgg_file(tmp_path), "relu2_2")
    image = torch.rand(2, 3, 24, 24)
    assert loss(image, image).item() == 0
    assert loss(image, image.flip(3)).item() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    with pytest.raises(KeyError):
        VGGFeatureLoss(vgg_file(tmp_path), "relu3_4")  # the file stops before that layer
    with pytest.raises(FileNotFoundError):
        VGGFeatureLoss(tmp_path / "missing.pth")


def tiny_batch():
    torch.manual_seed(0)
    hr = torch.rand(4, 3, 32, 32)
    return torch.nn.functional.avg_pool2d(hr, 2), hr


def test_psnr_step_lowers_the_loss():
    generator = SRResNet(scale=2, channels=8, blocks=1, upsampler="single")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    precision = Precision("fp32", torch.device("cpu"))
    lr, hr = tiny_batch()
    losses = [psnr_step(generator, optimizer, precision, "l1", lr, hr)["loss"] for _ in range(20)]
    assert losses[-1] < losses[0]


def test_luma_matches_the_metric_and_luma_weight_mixes_the_loss():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    # the metric's Y in [16, 235] is 16 + 219 * luma
    assert np.allclose(16 + 219 * luma(as_tensor)[0, 0].numpy(), rgb_to_y(image), atol=1e-3)
    hr = torch.rand(2, 3, 8, 8)
    grey = hr + 0.1  # the same error in every channel: the same error in luma
    chroma = hr + torch.tensor([128.553, -65.481, 0.0]).view(1, 3, 1, 1) * 1e-4  # luma unchanged
    assert torch.isclose(pixel_loss("mse", grey, hr, 1.0), torch.tensor(0.01))
    assert pixel_loss("mse", chroma, hr, 1.0) < 1e-12 < pixel_loss("mse", chroma, hr, 0.0)
    assert torch.isclose(pixel_loss("l1", chroma, hr, 0.75), 0.25 * pixel_loss("l1", chroma, hr))
    assert torch.equal(pixel_loss("mse", grey, hr), torch.nn.functional.mse_loss(grey, hr))


def test_weight_average_follows_the_training_weights():
    generator = SRResNet(scale=2, channels=8, blocks=1, upsampler="single")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    precision = Precision("fp32", torch.device("cpu"))
    average = weight_average(generator, 0.5)
    assert weight_average(generator, None) is None
    lr, hr = tiny_batch()
    history = []
    for _ in range(3):
        psnr_step(generator, optimizer, precision, "mse", lr, hr)
        average.update_parameters(generator)
        history.append(generator.head.weight.detach().clone())
    expected = 0.25 * history[0] + 0.25 * history[1] + 0.5 * history[2]  # first update copies, then halves
    assert torch.allclose(average.module.head.weight, expected, atol=1e-6)
    assert not torch.allclose(average.module.head.weight, generator.head.weight)
    assert average.module(lr).shape == hr.shape


@pytest.mark.parametrize("with_vgg", [False, True])
def test_gan_step_trains_both_networks(tmp_path, with_vgg):
    generator = SRResNet(scale=2, channels=8, blocks=1)
    discriminator = Discriminator(channels=8)
    config = GanConfig(vgg19_weights=vgg_file(tmp_path) if with_vgg else None, vgg_layer="relu2_2")
    gan = GanParts(discriminator, torch.optim.Adam(discriminator.parameters(), lr=1e-3), config, VGGFeatureLoss(config.vgg19_weights, "relu2_2") if with_vgg else None)
    g_before = [p.detach().clone() for p in generator.parameters()]
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    lr, hr = tiny_batch()
    out = gan_step(generator, torch.optim.Adam(generator.parameters(), lr=1e-3), gan, Precision("bf16", torch.device("cpu")), "l1", lr, hr)
    assert set(out) >= {"loss", "pixel_loss", "perceptual_loss", "adversarial_loss", "discriminator_loss"}
    assert (out["perceptual_loss"] > 0) == with_vgg
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters()))


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp16", cpu) == "fp32"  # fp16 autocast is a CUDA feature here
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", cpu) in {"bf16", "fp32"}
    assert not Precision("bf16", cpu).scaler.is_enabled()


def test_early_stopping():
    stopper = EarlyStopper(patience=2, min_delta=0.05)
    assert [stopper.update(v) for v in (25.0, 25.3, 25.32, 25.31)] == [False, False, False, True]
    assert stopper.best == 25.3
    restored = EarlyStopper(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.bad_checks == 2 and restored.best == 25.3
    never = EarlyStopper(patience=None)
    assert not any(never.update(20.0) for _ in range(10))


def test_architecture_rejects_unknown_upsampler():
    with pytest.raises(ValidationError):
        SRArchitecture(upsampler="deconv")


def test_cpus_per_worker_leaves_room_for_ray_data():
    cfg = load_config(None, {"output": "o", "data.train": ["a"], "data.val": "b"})
    assert cpus_per_worker(cfg, cluster_cpus=2) == 0.75  # 2 workers on a 2-core machine
    assert cpus_per_worker(cfg, cluster_cpus=64) == 1.0
    fixed = load_config(None, {"output": "o", "data.train": ["a"], "data.val": "b", "scaling.cpus_per_worker": 4})
    assert cpus_per_worker(fixed, cluster_cpus=2) == 4
    gpu = scaling_config(load_config(None, {"output": "o", "data.train": ["a"], "data.val": "b", "scaling.use_gpu": True}), 8)
    assert gpu.use_gpu and gpu.num_workers == 2 and gpu.resources_per_worker == {"CPU": 1.0, "GPU": 1}


def test_grown_generator_computes_the_same_then_trains_deeper():
    from pixelfleet.train.srgan.loop import grow_blocks

    torch.manual_seed(0)
    small = SRResNet(scale=2, channels=8, blocks=2, upsampler="single").eval()
    for p in small.parameters():
        p.data.normal_(0, 0.1)
    grown = grow_blocks(small, 4).eval()
    assert len(grown.body) == 4 and grown.upsampler_kind == "single"
    image = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(grown(image), small(image))
    with pytest.raises(ValueError):
        grow_blocks(small, 2)
