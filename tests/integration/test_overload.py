"""Overload of the ingress itself answers JSON 503 with Retry-After, never Ray's plain text.

A small app beside the session's (the test family ``invert``, one variant that takes 2 s a call)
whose ingress admits 2 requests at once (``admission.max_in_flight``); its ``Ingress`` keeps
Serve's default ``max_ongoing_requests`` (64), so every request reaches the replica and the
admission middleware (``serve/admission.py``) refuses, not Ray's proxy. A flood of concurrent
REST and OIP v2 requests: 2 are served, every other one is a JSON 503 in its API's error form
with ``Retry-After``; health routes answer during the flood, and the app serves again after it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import png_bytes

pytestmark = pytest.mark.integration

APP = "overloadapp"
MAX_IN_FLIGHT = 2
DELAY_S = 2.0
FLOOD = 12
PNG = png_bytes(synthetic_photo(8, 8))
OIP_BODY = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, 3]}]}


@pytest.fixture(scope="module")
def overload_url(app_url, tmp_path_factory):
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        args={
            "families": {"invert": {"kind": INVERT_KIND, "default": "slow", "variants": {"slow": {"delay_s": DELAY_S}}}},
            "state": {"path": str(tmp_path_factory.mktemp("overload-state") / "state.json")},
            "admission": {"max_in_flight": MAX_IN_FLIGHT, "retry_after_s": 3},
        },
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "invert-slow")],
    )  # fmt: skip
    with beside_session(app):
        yield f"{app_url}/{APP}"


def _send(url: str, index: int) -> tuple[str, float, httpx.Response]:
    """Even ``index``: REST; odd: OIP v2. Returns (api, send time, response)."""
    started = time.monotonic()
    if index % 2:
        return "oip", started, httpx.post(f"{url}/v2/models/invert/infer", json=OIP_BODY, timeout=60)
    return "rest", started, httpx.post(f"{url}/v1/invert", content=PNG, headers={"Content-Type": "image/png"}, timeout=60)


def test_flood_beyond_max_in_flight_answers_json_503(overload_url, client):
    with ThreadPoolExecutor(FLOOD) as pool:
        futures = [pool.submit(_send, overload_url, i) for i in range(FLOOD)]
        time.sleep(0.5)  # the flood is in: the 2 admitted requests hold the ingress for 2 s
        health = [httpx.get(f"{overload_url}{path}", timeout=30) for path in ("/healthz", "/readyz", "/v2/health/ready")]
        results = [f.result() for f in futures]

    assert [r.status_code for r in health] == [200, 200, 200], [r.text for r in health]
    statuses = [r.status_code for _, _, r in results]
    assert set(statuses) <= {200, 503}, statuses
    refused = [(api, r) for api, _, r in results if r.status_code == 503]
    assert statuses.count(200) >= MAX_IN_FLIGHT and refused, statuses
    sent_within = max(t for _, t, _ in results) - min(t for _, t, _ in results)
    if sent_within < DELAY_S / 2:  # every request arrived while the first two were in flight
        assert statuses.count(200) == MAX_IN_FLIGHT, statuses
    for api, response in refused:
        assert response.headers["content-type"] == "application/json", response.text
        assert response.headers["retry-after"] == "3"
        body = response.json()
        if api == "rest":
            assert body["error"]["code"] == "overloaded"
            assert body["error"]["request_id"]
        else:  # OIP's error form
            assert isinstance(body["error"], str) and "capacity" in body["error"]

    # nothing broke: the same app serves again, and so does the session's
    assert _send(overload_url, 0)[2].status_code == 200
    assert client.get("/readyz").status_code == 200

