"""`pixelfleet eval superres` and `pixelfleet models list` (no Ray needed)."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from pixelfleet.serve.cli import app
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS
from tests.conftest import synthetic_photo

runner = CliRunner()


def test_eval_superres_prints_model_and_bicubic_and_writes_comparisons(tmp_path):
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_photo(64, 80, seed=i)).save(data / f"img{i}.png")
    compare = tmp_path / "compare"
    result = runner.invoke(app, ["eval", "superres", "--model", str(BUILTIN_WEIGHTS / "srresnet-x4"), "--data", str(data), "--compare", str(compare)])
    assert result.exit_code == 0, result.output
    assert "img0.png" in result.output and "img1.png" in result.output and "mean" in result.output
    side = Image.open(compare / "img0.png")
    assert side.size == (4 * 80, 64)  # LR | bicubic | model | HR, each 80x64


def test_eval_superres_with_the_self_ensemble(tmp_path):
    data = tmp_path / "hr"
    data.mkdir()
    Image.fromarray(synthetic_photo(64, 80, seed=7)).save(data / "img.png")
    args = ["eval", "superres", "--model", str(BUILTIN_WEIGHTS / "srresnet-x4"), "--data", str(data)]
    single, ensembled = runner.invoke(app, args), runner.invoke(app, [*args, "--ensemble"])
    assert single.exit_code == 0 and ensembled.exit_code == 0, ensembled.output
    assert "self-ensemble" in ensembled.output and "self-ensemble" not in single.output
    mean_row = lambda output: next(line for line in output.splitlines() if "mean" in line)  # noqa: E731
    assert mean_row(single.output) != mean_row(ensembled.output)  # a different upscale, other figures


def test_eval_superres_refuses_a_scale_the_model_does_not_have(tmp_path):
    result = runner.invoke(app, ["eval", "superres", "--model", str(BUILTIN_WEIGHTS / "srresnet-x4"), "--data", str(tmp_path), "--scale", "2"])
    assert result.exit_code != 0 and "x4" in result.output


def test_models_list_shows_builtin_and_extra_folders(tmp_path):
    extra = tmp_path / "runs" / "mine"
    extra.mkdir(parents=True)
    (extra / "model.json").write_text((BUILTIN_WEIGHTS / "srresnet-x4" / "model.json").read_text())
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "model.json").write_text("{}")
    result = runner.invoke(app, ["models", "list", "--folder", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    card = json.loads((BUILTIN_WEIGHTS / "srresnet-x4" / "model.json").read_text())
    assert f"builtin:srresnet-x4: superres x4 SRResNet, PSNR-Y {card['metrics']['psnr_y']:.2f} dB" in result.output
    assert f"{extra}: superres x4" in result.output
    assert "not a model card" in result.output


def test_train_srgan_names_bad_fields_before_starting_ray(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output: out\ndata: {train: [a], val: b, hr_patch: 30}\noptim: {stpes: 5}\n")
    result = runner.invoke(app, ["train", "srgan", str(config), "--set", "architecture.blocks=0"])
    assert result.exit_code == 2
    for field in ("optim.stpes", "architecture.blocks"):
        assert field in result.output
    missing = runner.invoke(app, ["train", "srgan", str(tmp_path / "missing.yaml")])
    assert missing.exit_code == 2 and "missing.yaml" in missing.output
    bad_set = runner.invoke(app, ["train", "srgan", str(config), "--set", "steps"])
    assert bad_set.exit_code == 2 and "KEY=VALUE" in bad_set.output
