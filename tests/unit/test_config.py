"""The app config schema and the shipped Serve config files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve.config import AppConfig, SuperResVariant

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "serve" / "configs").glob("*.yaml"))


def minimal(**superres) -> dict:
    variant = {"weights": "builtin:srresnet-x4", **superres}
    return {"superres": {"default": "a", "variants": {"a": variant}}, "ocr": {"default": "r", "variants": {"r": {"engine": "rapidocr"}}}}


def test_minimal_config_gets_defaults():
    config = AppConfig.model_validate(minimal())
    assert config.limits.max_pixels > 0
    assert config.superres.variants["a"].weights_path().name == "srresnet-x4"


@pytest.mark.parametrize(
    "bad",
    [
        {"overlap": 128, "tile_size": 128},
        {"precision": "float16", "device": "cpu"},
        {"tile_size": 4},
        {"colour": "blue"},
    ],
)
def test_bad_variant_fields_are_refused(bad):
    with pytest.raises(ValidationError):
        AppConfig.model_validate(minimal(**bad))


def test_default_must_be_a_variant():
    config = minimal()
    config["ocr"]["default"] = "tesseract"
    with pytest.raises(ValidationError, match="not among the variants"):
        AppConfig.model_validate(config)


def test_local_paths_stay_paths(tmp_path):
    assert SuperResVariant(weights=str(tmp_path)).weights_path() == tmp_path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid_serve_configs(path):
    """Each file validates against Ray's Serve schema, and its args against ours."""
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for application in schema.applications:
        config = AppConfig.model_validate(application.args)
        for variant in config.superres.variants.values():
            assert (variant.weights_path() / "model.json").is_file()
        names = {d.name for d in application.deployments}
        expected = {"Ingress"} | {f"superres-{v}" for v in config.superres.variants} | {f"ocr-{v}" for v in config.ocr.variants}
        assert names == expected, "every deployment of the graph has its resources set in the config"
