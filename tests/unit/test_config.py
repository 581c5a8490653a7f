"""The app config schema and the shipped Serve config files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from pixelfleet.serve.config import AppConfig
from pixelfleet.deployments.superres.config import SuperResVariant

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "serve" / "configs").glob("*.yaml"))


def minimal(**superres) -> dict:
    variant = {"weights": "builtin:srresnet-x4", **superres}
    return {"families": {
        "superres": {"kind": "superres", "default": "a", "variants": {"a": variant}},
        "ocr": {"kind": "ocr", "default": "r", "variants": {"r": {"engine": "rapidocr"}}},
    }}  # fmt: skip


def test_minimal_config_gets_defaults():
    config = AppConfig.model_validate(minimal())
    assert config.limits.max_pixels > 0
    assert config.families["superres"].variants["a"].weights_path().name == "srresnet-x4"


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
    config["families"]["ocr"]["default"] = "tesseract"
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
        for variant in (config.families["superres"].variants.values() if "superres" in config.families else ()):
            assert (variant.weights_path() / "model.json").is_file()
        names = {d.name for d in application.deployments}
        expected = {"Ingress"} | {f"{family}-{v}" for family, block in config.families.items() for v in block.variants}
        expected |= {"JobWorker"} if config.jobs.enabled and config.jobs.worker == "deployment" else set()
        assert names == expected, "every deployment of the graph has its resources set in the config"


def test_family_kind_defaults_to_its_name_and_unknown_kinds_are_named():
    config = minimal()
    del config["families"]["ocr"]["kind"]
    assert AppConfig.model_validate(config).families["ocr"].kind == "ocr"
    config["families"]["paint"] = {"default": "a", "variants": {"a": {}}}
    with pytest.raises(ValidationError, match="unknown family kind 'paint'; installed: .*ocr.*superres"):
        AppConfig.model_validate(config)


@pytest.mark.parametrize(
    "traffic,shadow,message",
    [
        ({"a": 1, "b": 1}, {}, "unknown variant 'b'"),
        ({"a": -1}, {}, ">= 0"),
        ({"a": 0}, {}, "more than 0"),
        (None, {"a": 1.5}, r"\(0, 1\]"),
    ],
)
def test_traffic_and_shadow_are_checked(traffic, shadow, message):
    config = minimal()
    config["families"]["superres"].update(traffic=traffic, shadow=shadow)
    with pytest.raises(ValidationError, match=message):
        AppConfig.model_validate(config)


def test_a_family_config_round_trips_through_the_ingress_args():
    """build_app hands the ingress ``model_dump(mode="json")``; every family field must survive it."""
    config = AppConfig.model_validate(minimal(tile_size=96))
    again = AppConfig.model_validate(config.model_dump(mode="json"))
    assert again.families["superres"].variants["a"].tile_size == 96
    assert again == config
