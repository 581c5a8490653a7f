"""A family's ``timeout_s``: a request that takes longer answers 504 JSON and its work in the
replica is cancelled, not left running."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import png_bytes

pytestmark = pytest.mark.integration

APP = "timeout"


def test_a_request_over_the_family_timeout_is_504_and_cancelled_in_the_replica(app_url, tmp_path):
    from ray import serve
    from ray.serve.schema import ServeApplicationSchema

    state = tmp_path / "state.json"
    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        args={"families": {"invert": {"kind": INVERT_KIND, "default": "a", "timeout_s": 1.0,
                                      "variants": {"a": {}, "slow": {"delay_s": 20.0}}}},
              "state": {"path": str(state)}},
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "invert-a", "invert-slow")],
    )  # fmt: skip
    image = png_bytes(synthetic_photo(8, 8))
    with beside_session(app), httpx.Client(base_url=f"{app_url}/{APP}", timeout=60) as client:
        slow = client.post("/v1/invert", content=image, headers={"Content-Type": "image/png", "X-Request-Id": "late-1"}, params={"model": "slow"})
        assert slow.status_code == 504, slow.text
        error = slow.json()["error"]
        assert error["code"] == "timeout" and error["request_id"] == "late-1" and "1 s" in error["message"]
        replica = serve.get_deployment_handle("invert-slow", app_name=APP)
        deadline = time.monotonic() + 30
        while replica.info.remote().result()["cancelled"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        info = replica.info.remote().result()
        assert info["cancelled"] == 1 and info["finished"] == 0, info  # the 20 s of work did not go on
        assert client.post("/v1/invert", content=image, headers={"Content-Type": "image/png"}).status_code == 200
