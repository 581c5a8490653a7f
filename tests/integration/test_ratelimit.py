"""Rate limits through the running app: a second small app (the test family ``invert`` only) with
TWO ingress replicas and one RateLimiter beside the session's (unlimited) app. One caller's
requests, spread over both replicas, are admitted within burst + rate x elapsed in total (the
shared limit; a limit per replica would admit about twice as many), the rest are 429s in both
error forms with Retry-After and RateLimit-* headers; another caller is not limited; health is
never limited."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import png_bytes

pytestmark = pytest.mark.integration

APP = "ratelimitapp"
PNG = png_bytes(synthetic_photo(8, 8))
BURST, RATE_PER_S = 10, 1.0
REQUESTS = 40
CALLER, OTHER = "203.0.113.7", "203.0.113.8"  # first X-Forwarded-For hops (trust_forwarded_for)


@pytest.fixture(scope="module")
def limited_url(app_url, tmp_path_factory):
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        args={
            "families": {"invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {}}}},
            "state": {"path": str(tmp_path_factory.mktemp("ratelimit-state") / "state.json")},
            "rate_limits": {"enabled": True, "trust_forwarded_for": True,
                            "groups": {"infer": {"rate_per_s": RATE_PER_S, "burst": BURST}, "admin": {"rate_per_s": 1, "burst": 2}}},
        },
        deployments=[
            {"name": "Ingress", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
            {"name": "RateLimiter", "ray_actor_options": {"num_cpus": 0}},
            {"name": "invert-a", "ray_actor_options": {"num_cpus": 0}},
        ],
    )  # fmt: skip
    with beside_session(app):
        yield f"{app_url}/{APP}"


def invert(client: httpx.Client, caller: str) -> httpx.Response:
    return client.post("/v1/invert", content=PNG, headers={"Content-Type": "image/png", "X-Forwarded-For": f"{caller}, 10.0.0.1"})


def test_one_shared_limit_across_two_ingress_replicas(limited_url):
    from ray import serve

    ingress = serve.status().applications[APP].deployments["Ingress"]
    states = {getattr(state, "value", state): count for state, count in ingress.replica_states.items()}
    assert states.get("RUNNING") == 2, states  # the requests below spread over both
    statuses, admitted, refused = [], [], []
    started = time.monotonic()
    for _ in range(REQUESTS):
        # a new connection per request, so Serve's proxy spreads them over both ingress replicas
        with httpx.Client(base_url=limited_url, timeout=120) as client:
            response = invert(client, CALLER)
        statuses.append(response.status_code)
        (admitted if response.status_code == 200 else refused).append(response)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}, statuses
    assert BURST <= len(admitted) <= BURST + RATE_PER_S * elapsed + 1, (len(admitted), elapsed)
    assert refused, f"nothing refused in {elapsed:.1f} s"
    for response in admitted:
        assert response.headers["ratelimit-limit"] == str(BURST)
        assert 0 <= int(response.headers["ratelimit-remaining"]) < BURST
        assert int(response.headers["ratelimit-reset"]) >= 1
    for response in refused:
        error = response.json()["error"]
        assert error["code"] == "rate_limited" and error["request_id"], error
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["ratelimit-limit"] == str(BURST)
        assert response.headers["ratelimit-remaining"] == "0"
        assert int(response.headers["ratelimit-reset"]) >= 1
    with httpx.Client(base_url=limited_url, timeout=120) as client:
        oip = client.post(
            "/v2/models/invert/infer", headers={"X-Forwarded-For": CALLER},
            json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, 3]}]},
        )  # fmt: skip
        if oip.status_code == 429:  # the same bucket (infer); a token may have come back meanwhile
            assert set(oip.json()) == {"error"} and isinstance(oip.json()["error"], str)  # OIP's form below /v2
            assert "retry-after" in oip.headers and "ratelimit-remaining" in oip.headers
        else:
            assert oip.status_code == 200, oip.text
        # another caller has its own bucket; health and metadata are never limited
        assert invert(client, OTHER).status_code == 200
        for _ in range(3):
            for path in ("/healthz", "/v2/health/live", "/v1/models"):
                response = client.get(path, headers={"X-Forwarded-For": CALLER})
                assert response.status_code == 200, path
                assert "ratelimit-limit" not in response.headers, path


def test_admin_routes_have_their_own_group(limited_url):
    with httpx.Client(base_url=limited_url, timeout=120) as client:
        statuses = [client.get("/v1/traffic", headers={"X-Forwarded-For": "203.0.113.9"}).status_code for _ in range(6)]
    assert statuses[:2] == [200, 200] and 429 in statuses, statuses


def test_limiter_hop_latency(limited_url):
    """Not an assertion on time: prints the round trip of one limiter call by handle (what each
    limited request adds), for the README."""
    from ray import serve

    limiter = serve.get_deployment_handle("RateLimiter", APP)
    limiter.take.remote("probe", "jobs").result()  # warm up
    samples = []
    for _ in range(50):
        started = time.perf_counter()
        limiter.take.remote("probe", "jobs").result()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    print(f"\nlimiter hop by handle: median {samples[len(samples) // 2]:.2f} ms, p90 {samples[int(len(samples) * 0.9)]:.2f} ms")
