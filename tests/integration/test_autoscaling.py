"""Autoscaling by config: a variant's ``autoscaling_config`` in the Serve config's ``deployments``
list scales its replicas with the load (Serve's own autoscaler), as ``serve/configs/gpu.yaml``
sets it for every variant."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import png_bytes
from tests.integration.load import background_load
from tests.integration.polling import until

pytestmark = pytest.mark.integration

APP = "autoscale"
IMAGE = png_bytes(synthetic_photo(8, 8))
#: Serve's defaults wait 30 s to scale up and 600 s to scale down, on metrics pushed every 10 s;
#: here everything is short, so a burst of a few seconds is enough.
AUTOSCALING = {
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
    "metrics_interval_s": 0.5, "look_back_period_s": 1.0, "upscale_delay_s": 0.5, "downscale_delay_s": 1.0,
}  # fmt: skip


def test_a_burst_scales_a_variant_from_one_replica_to_two_and_back(app_url, tmp_path):
    from ray.serve.schema import ServeApplicationSchema

    from pixelfleet.ray_private import running_replicas

    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        args={"families": {"invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {"delay_s": 0.5}}}},
              "state": {"path": str(tmp_path / "state.json")}},
        deployments=[
            {"name": "Ingress", "ray_actor_options": {"num_cpus": 0}},
            {"name": "invert-a", "max_ongoing_requests": 4, "autoscaling_config": AUTOSCALING, "ray_actor_options": {"num_cpus": 0}},
        ],
    )  # fmt: skip

    def replicas() -> int:
        return len(running_replicas(APP, "invert-a"))

    def send(client: httpx.Client, i: int) -> httpx.Response:
        return client.post("/v1/invert", content=IMAGE, headers={"Content-Type": "image/png"})

    with beside_session(app):
        assert replicas() == 1  # min_replicas while idle
        with background_load(f"{app_url}/{APP}", send, threads=6) as load:  # ~6 ongoing against a target of 1
            until(lambda: replicas() == 2, 60, "the burst scaled invert-a to 2 replicas")
            served_by_two = sum(load.served.values())
            until(lambda: sum(load.served.values()) >= served_by_two + 6, 30, "requests answered with 2 replicas")
        until(lambda: replicas() == 1, 60, "idle again, invert-a is back to 1 replica")
        assert load.failures == [], load.failures[:3]
