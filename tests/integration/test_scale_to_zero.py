"""Scale to zero: a variant whose deployment has ``autoscaling_config.min_replicas: 0`` (as
``srresnet-x2``, ``srgan-x4`` and ``rapidocr`` in ``serve/configs/local.yaml``) starts without a
replica; ``/readyz`` and ``/v1/models`` answer without starting one (its card comes from its
config: ``FamilySpec.describe``); its first request starts one (Serve's cold start) and is
answered; without requests it goes back to zero.

An app of its own beside the session's (the session's variants at zero may have been woken by
other tests already), built by the real ``build_app`` from a config as an operator writes it.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import open_image, png_bytes
from tests.integration.polling import until

pytestmark = pytest.mark.integration

APP = "zero"
ZERO = "superres-srresnet-x2"
#: Serve's cold-start path scales 0 -> 1 at the first request; back to zero within seconds here
#: (local.yaml waits 300 s).
TO_ZERO = {
    "min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "downscale_to_zero_delay_s": 1.0, "downscale_delay_s": 1.0,
    "look_back_period_s": 1.0, "metrics_interval_s": 0.5,
}  # fmt: skip


def running(deployment: str) -> int:
    """RUNNING replicas of ``deployment`` of the app, from ``serve.status()``."""
    from ray import serve

    states = serve.status().applications[APP].deployments[deployment].replica_states
    return sum(count for state, count in states.items() if getattr(state, "value", state) == "RUNNING")


def test_a_variant_at_zero_is_ready_and_listed_without_a_replica_and_its_first_request_starts_one(app_url, tmp_path):
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}},
        args={
            "families": {
                "superres": {"kind": "superres", "default": "srresnet-x2", "variants": {
                    "srresnet-x2": {"weights": "builtin:srresnet-x2", "tile_size": 64, "overlap": 16, "max_batch_size": 2, "num_threads": 1}}},
                "invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {}}},
            },
            "jobs": {"enabled": False},
            "state": {"path": str(tmp_path / "state.json")},
        },
        deployments=[
            {"name": "Ingress", "ray_actor_options": {"num_cpus": 0}},
            {"name": ZERO, "autoscaling_config": TO_ZERO, "ray_actor_options": {"num_cpus": 0}},
            {"name": "invert-a", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
        ],
    )  # fmt: skip

    with beside_session(app), httpx.Client(base_url=f"{app_url}/{APP}", timeout=120) as http:
        assert running(ZERO) == 0  # initial_replicas 0: the app runs without it
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["variants"] == {"superres/srresnet-x2": True, "invert/a": True}
        assert ready.json()["scaled_to_zero"] == ["superres/srresnet-x2"]
        card = http.get("/v1/models").json()["families"]["superres"]["variants"]["srresnet-x2"]
        assert card["scale"] == 2 and card["weights"] == "builtin:srresnet-x2" and card["scaled_to_zero"] is True
        assert running(ZERO) == 0  # neither the probe nor the listing started a replica

        answer = http.post("/v1/superres", content=png_bytes(synthetic_photo(24, 16)), headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text  # the cold start: Serve started a replica for it
        assert open_image(answer.content).size == (32, 48)
        assert answer.headers["x-pixelfleet-variant"] == "superres/srresnet-x2"
        assert running(ZERO) == 1
        ready = http.get("/readyz").json()
        assert ready["ready"] and ready["scaled_to_zero"] == []  # now asked, and it answers
        card = http.get("/v1/models").json()["families"]["superres"]["variants"]["srresnet-x2"]
        assert card["scale"] == 2 and "scaled_to_zero" not in card and "load_seconds" in card  # the replica's own card

        until(lambda: running(ZERO) == 0, 90, f"{ZERO} back to zero replicas without requests")
        assert http.get("/readyz").json()["scaled_to_zero"] == ["superres/srresnet-x2"]
