"""What the ingress reads of a family without loading its models: ``SPEC`` names its deployment by
path (imported only where ``build_app`` binds a variant), and ``describe`` gives a variant's card
from its config, so routing to a variant scaled to zero needs neither torch nor ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from ray.serve import Deployment

from pixelfleet.deployments.ocr import SPEC as OCR_SPEC
from pixelfleet.deployments.superres import SPEC as SUPERRES_SPEC
from pixelfleet.serve.cli import DEFAULT_CONFIG
from pixelfleet.serve.config import AppConfig
from tests.conftest import REPO

ROUTING_ONLY = """
import json, sys, yaml
from pixelfleet.serve.config import AppConfig
from pixelfleet.serve.ingress import Ingress
from pixelfleet.serve.rest import build_api
config = AppConfig.model_validate(yaml.safe_load(open(sys.argv[1]))["applications"][0]["args"])
cards = {f: {v: config.spec(f).describe(v, b) for v, b in block.variants.items()} for f, block in config.families.items()}
print(json.dumps({"cards": cards, "loaded": [m for m in ("torch", "onnxruntime", "rapidocr", "tesserocr", "skimage") if m in sys.modules]}))
"""


def app_config() -> AppConfig:
    return AppConfig.model_validate(yaml.safe_load(DEFAULT_CONFIG.read_text())["applications"][0]["args"])


def test_the_ingress_layer_describes_every_variant_without_importing_a_model_runtime():
    done = subprocess.run([sys.executable, "-c", ROUTING_ONLY, str(DEFAULT_CONFIG)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["loaded"] == []
    superres = answer["cards"]["superres"]
    assert {name: card["scale"] for name, card in superres.items()} == {"srresnet-x4": 4, "srresnet-x2": 2, "srgan-x4": 4}
    assert superres["srgan-x4"]["weights"] == "builtin:srgan-x4" and superres["srgan-x4"]["metrics"]["psnr_y"] > 0
    rapidocr = answer["cards"]["ocr"]["rapidocr"]
    assert (rapidocr["variant"], rapidocr["engine"]) == ("rapidocr", "rapidocr")


def test_the_described_card_agrees_with_the_model_card_the_replica_loads():
    from pixelfleet.models.srnet import load_model

    config = app_config().families["superres"].variants["srresnet-x2"]
    _, card = load_model(config.weights_path())
    described = SUPERRES_SPEC.describe("srresnet-x2", config)
    assert described["scale"] == card.scale == 2
    assert described["architecture"] == card.architecture.model_dump()


def test_a_deployment_named_by_path_is_imported_where_it_is_bound():
    for spec in (SUPERRES_SPEC, OCR_SPEC):
        assert isinstance(spec.deployment, str)
        assert isinstance(spec.deployment_class(), Deployment)


BUILD_ONLY = """
import json, sys, yaml
from pixelfleet.serve.app import build_app
build_app(yaml.safe_load(open(sys.argv[1]))["applications"][0]["args"])
print(json.dumps([m for m in ("torch", "onnxruntime", "rapidocr", "tesserocr", "skimage", "diffusers", "transformers", "av") if m in sys.modules]))
"""


def test_building_the_app_binds_every_family_without_importing_a_model_runtime():
    """Serve's build task (a fresh worker that imports the app and binds its graph) runs before
    any replica starts: each runtime it imports there adds to start to ready (torch: 1.7 s)."""
    done = subprocess.run([sys.executable, "-c", BUILD_ONLY, str(DEFAULT_CONFIG)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
