"""`pixelfleet inspect PATH [--json] [--allow-pickle]`: tables, JSON, and one exit code per kind of
bad file, each with a one-line error and no traceback (files made here; no Ray)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from pixelfleet.models.modelcard import BUILTIN_WEIGHTS
from pixelfleet.models.modelfiles import ModelFileInfo, inspect
from pixelfleet.serve.cli import app
from pixelfleet.serve.inspect_cli import EXIT_CODES
from tests.modelfile_samples import kohya_lora, onnx_model, sd_checkpoint, synthetic_diffusers_folder

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, ["inspect", *args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def test_table_for_a_diffusers_folder(tmp_path):
    synthetic_diffusers_folder(tmp_path / "pipe")
    result = run(str(tmp_path / "pipe"))
    assert result.exit_code == 0, result.output
    for words in ("diffusers (folder)", "StableDiffusionInpaintPipeline", "SD 2.x", "1024", "UNet input channels", "text_encoder", "fp16", "not read"):
        assert words in result.output, words


def test_json_is_the_model_file_info(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file(sd_checkpoint("sdxl"), str(path))
    result = run(str(path), "--json")
    assert result.exit_code == 0, result.output
    parsed = ModelFileInfo.model_validate_json(result.stdout)
    assert parsed == inspect(path)
    assert json.loads(result.stdout)["base"] == "sdxl"


def test_table_for_a_lora_onnx_and_builtin_sr(tmp_path):
    lora = tmp_path / "k.safetensors"
    save_file(kohya_lora(1024), str(lora))
    result = run(str(lora))
    assert result.exit_code == 0 and "kohya" in result.output and "SD 2.x" in result.output and "to_k" in result.output
    result = run(str(onnx_model(tmp_path / "conv.onnx")))
    assert result.exit_code == 0
    assert "image" in result.output and "[batch, 3, height, width]" in result.output and "features" in result.output
    result = run("builtin:srresnet-x4")
    assert result.exit_code == 0 and "superres" in result.output and "x4" in result.output


def _pickle(path):
    torch.save({"w": torch.ones(2, 2)}, path)
    return path


@pytest.mark.parametrize(
    "make, code, words",
    [
        (lambda d: d / "missing.safetensors", 3, "no such file"),
        (lambda d: d, 4, "folder without model_index.json"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", 4, "no known model format"),
        (lambda d: (d / "bomb.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}") and d / "bomb.safetensors", 5, "header claims"),
        (lambda d: _pickle(d / "renamed.safetensors"), 5, "PyTorch zip checkpoint"),
        (lambda d: _pickle(d / "model.ckpt"), 6, "--allow-pickle"),
    ],
)
def test_bad_paths_exit_with_their_code_and_one_line(tmp_path, make, code, words):
    path = make(tmp_path)
    result = run(str(path))
    assert result.exit_code == code, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and words in result.stderr


def test_truncated_copy_of_shipped_weights_exits_5(tmp_path):
    weights = (BUILTIN_WEIGHTS / "srresnet-x2" / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights[: len(weights) - 1000])
    result = run(str(cut))
    assert result.exit_code == 5 and "truncated" in result.stderr


def test_allow_pickle_reads_a_pickle(tmp_path):
    result = run(str(_pickle(tmp_path / "model.ckpt")), "--allow-pickle", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parameters"] == 4


def test_exit_codes_are_distinct():
    codes = list(EXIT_CODES.values())
    assert len(set(codes)) == len(codes) and not {0, 1, 2} & set(codes)
