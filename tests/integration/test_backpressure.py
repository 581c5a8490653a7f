"""Overload: a full deployment queue answers 503 with Retry-After, and nothing breaks.

A second, deliberately tiny app (one request in flight and one queued at the super-resolution
variant, no CPUs reserved) runs beside the session's app on the same local Ray.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from pixelfleet.deployments.superres.deployment import SuperResolution
from pixelfleet.serve.config import AppConfig
from pixelfleet.serve.ingress import Ingress
from tests.conftest import synthetic_photo
from tests.integration.conftest import png_bytes

pytestmark = pytest.mark.integration

NO_CPU = {"num_cpus": 0}


@pytest.fixture(scope="module")
def tiny_app_url(app_url: str, tmp_path_factory):
    args = {
        "families": {"superres": {"default": "x4", "variants": {"x4": {"weights": "builtin:srresnet-x4", "tile_size": 64, "overlap": 16, "num_threads": 1}}}},
        "state": {"path": str(tmp_path_factory.mktemp("backpressure") / "state.json")},
    }
    config = AppConfig.model_validate(args)
    variant = config.families["superres"].variants["x4"]
    superres = SuperResolution.options(name="superres-x4", max_ongoing_requests=1, max_queued_requests=1, ray_actor_options=NO_CPU).bind(
        variant="x4", **variant.model_dump()
    )
    ingress = Ingress.options(ray_actor_options=NO_CPU).bind(config=config.model_dump(mode="json"), variants={"superres": {"x4": superres}})
    serve.run(ingress, name="backpressure", route_prefix="/backpressure")
    yield f"{app_url}/backpressure"
    serve.delete("backpressure")


def test_full_queue_answers_503_with_retry_after(tiny_app_url):
    image = png_bytes(synthetic_photo(200, 200))

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{tiny_app_url}/v1/superres", content=image, headers={"Content-Type": "image/png"}, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}
    overloaded = next(r for r in responses if r.status_code == 503)
    assert overloaded.headers["retry-after"] == "1"
    assert overloaded.json()["error"]["code"] == "overloaded"
    # once the burst is over, the same app serves again
    assert post(0).status_code == 200
