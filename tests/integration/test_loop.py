"""The loop the product exists for, on one cluster: a model trained by ``pixelfleet train srgan``
(joining the session's cluster) is added to a running app as a new super-resolution variant at
weight 0, shadowed, given 10%, promoted to 100%, and the old variant is removed; a stream of
requests meanwhile sees no failure.

It runs on an app of its own (``loop``: the shipped x4 model as the only variant) so that the
session app's variants stay as the other tests expect them.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import synthetic_photo
from tests.integration.conftest import open_image, png_bytes
from tests.integration.apps import beside_session
from tests.integration.load import background_load

pytestmark = pytest.mark.integration

LR = synthetic_photo(24, 32, seed=5)


@pytest.fixture
def loop_app(app_url: str, tmp_path: Path):
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name="loop", route_prefix="/loop", import_path="pixelfleet.serve.app:build_app",
        args={"families": {"superres": {"kind": "superres", "default": "srresnet-x4", "variants": {
                  "srresnet-x4": {"weights": "builtin:srresnet-x4", "tile_size": 64, "overlap": 16, "max_batch_size": 4, "num_threads": 1}}}},
              "state": {"path": str(tmp_path / "state.json")}},
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "superres-srresnet-x4")],
    )  # fmt: skip
    with beside_session(app):
        yield f"{app_url}/loop"


def upscale(client: httpx.Client, caller: str) -> httpx.Response:
    return client.post("/v1/superres", content=png_bytes(LR), headers={"Content-Type": "image/png", "X-Client-Id": caller})


def test_trained_model_is_added_shadowed_promoted_and_the_old_one_removed_under_load(loop_app: str, trained_x4_model: Path):
    def send(own: httpx.Client, i: int) -> httpx.Response:
        response = upscale(own, f"user-{i % 30}")
        if response.status_code == 200:
            assert np.asarray(open_image(response.content)).shape == (96, 128, 3)
        return response

    with httpx.Client(base_url=loop_app, timeout=600) as admin:
        with background_load(loop_app, send, threads=2) as load:
            added = admin.post("/v1/variants/superres", json={
                "name": "joined", "config": {"weights": str(trained_x4_model), "tile_size": 64, "overlap": 16, "num_threads": 1},
                "deployment": {"ray_actor_options": {"num_cpus": 0}},
            })  # fmt: skip
            assert added.status_code == 201, added.text
            card = admin.get("/v1/models").json()["families"]["superres"]["variants"]["joined"]
            assert card["scale"] == 4 and card["training"]["command"].startswith("pixelfleet train srgan")
            assert card["weights"] == str(trained_x4_model)
            for change in (
                {"shadow": {"joined": 1.0}},
                {"weights": {"srresnet-x4": 0.9, "joined": 0.1}, "shadow": {}},
                {"weights": {"joined": 1.0}},
            ):
                assert admin.put("/v1/traffic/superres", json=change).status_code == 200
                time.sleep(2.0)
            removed = admin.delete("/v1/variants/superres/srresnet-x4")
            assert removed.status_code == 200, removed.text
            time.sleep(2.0)
        assert not load.failures, load.failures[:3]
        assert load.served["superres/joined"] > 0 and load.served["superres/srresnet-x4"] > 0, load.served
        traffic = admin.get("/v1/traffic").json()["families"]["superres"]
        assert traffic["variants"] == ["joined"] and traffic["weights"] == {"joined": 1.0}
        assert admin.post("/v1/superres", content=png_bytes(LR), headers={"Content-Type": "image/png"}, params={"model": "srresnet-x4"}).status_code == 404
        assert upscale(admin, "after").headers["x-pixelfleet-variant"] == "superres/joined"
