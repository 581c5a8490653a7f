"""A/B traffic through the running app: proportions and stickiness (checked statistically),
shadows, live weight changes, variants added, promoted and removed under load, and a restart.

The test-only family ``invert`` (tests/families/invert.py) carries these tests: variant ``a``
inverts, ``b`` returns the image unchanged, ``slow`` inverts after 2 s, so the answer itself
shows which variant served it, and hundreds of requests cost little.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from scipy.stats import chisquare

from tests.conftest import synthetic_photo
from tests.integration.conftest import APP_NAME, INVERT_KIND, open_image, png_bytes
from tests.integration.apps import beside_session
from tests.integration.load import background_load

pytestmark = pytest.mark.integration

IMAGE = synthetic_photo(12, 16)
PNG = png_bytes(IMAGE)


def invert(client: httpx.Client, caller: str | None = None, **params) -> httpx.Response:
    headers = {"Content-Type": "image/png", **({"X-Client-Id": caller} if caller else {})}
    return client.post("/v1/invert", content=PNG, headers=headers, params=params)


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    variant = response.headers["x-pixelfleet-variant"].removeprefix("invert/")
    pixels = np.asarray(open_image(response.content))
    expected = IMAGE if variant == "b" else 255 - IMAGE
    assert np.array_equal(pixels, expected), f"{variant} answered another variant's image"
    return variant


def set_traffic(client: httpx.Client, family: str = "invert", **body) -> dict:
    response = client.put(f"/v1/traffic/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def restore_invert(client):
    yield
    set_traffic(client, weights={"a": 1.0}, shadow={})


def many(client: httpx.Client, callers: list[str | None], **params) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda caller: served_by(invert(client, caller, **params)), callers))


def test_ab_split_follows_the_weights_and_sticks_to_each_caller(client, restore_invert):
    set_traffic(client, weights={"a": 0.7, "b": 0.3})
    callers = [f"caller-{i}" for i in range(400)]
    first = many(client, callers)
    counts = Counter(first)
    assert chisquare([counts["a"], counts["b"]], [280, 120]).pvalue > 1e-3, counts
    assert many(client, callers) == first, "a caller must reach the same variant while the weights stand"
    anonymous = Counter(many(client, [None] * 400))
    assert chisquare([anonymous["a"], anonymous["b"]], [280, 120]).pvalue > 1e-3, anonymous
    assert set(many(client, callers[:40], model="b")) == {"b"}, "an explicit model overrides the split"


def test_traffic_is_listed_and_bad_changes_are_422(client):
    listing = client.get("/v1/traffic").json()["families"]
    assert set(listing) >= {"superres", "ocr", "invert"}
    assert listing["invert"]["variants"] == ["a", "b", "slow"]
    for body, message in [
        ({"weights": {"a": 1, "zz": 1}}, "unknown variant 'zz'"),
        ({"weights": {"a": -1}}, ">= 0"),
        ({"weights": {"a": 0}}, "more than 0"),
        ({"shadow": {"b": 2}}, "(0, 1]"),
        ({"weights": {"a": "lots"}}, "valid number"),
        ({"weights": {"a": float("nan")}}, "finite"),
        ({"weights": {"a": float("inf"), "b": 1}}, "finite"),
    ]:
        # json.dumps writes NaN and Infinity as JavaScript does; JSON parsers (Python's too) read them
        response = client.put("/v1/traffic/invert", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert message in response.json()["error"]["message"]
    response = client.put("/v1/traffic/nope", json={"weights": {"a": 1}})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/traffic").json()["families"]["invert"]["weights"] == {"a": 1.0}


def test_shadow_copies_never_change_the_callers_answer_or_wait_for_the_shadow(client, restore_invert):
    """``slow`` answers after 2 s; with every request shadowed to it (and to ``b``), each caller
    gets ``a``'s answer while its copy is still running in ``slow``, and the copies do run."""
    from ray import serve

    slow = serve.get_deployment_handle("invert-slow", app_name=APP_NAME)

    def finished() -> int:
        return slow.info.remote().result()["finished"]

    set_traffic(client, weights={"a": 1.0}, shadow={"slow": 1.0, "b": 1.0})
    before = finished()
    for i in range(3):
        assert served_by(invert(client, f"shadowed-{i}")) == "a"
    assert finished() == before, "a caller's answer came after its shadow copy had finished"
    deadline = time.monotonic() + 60
    while finished() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert finished() == before + 3, "the shadow copies did not run"


def test_live_weight_changes_under_load_fail_no_request(client, restore_invert):
    with background_load(str(client.base_url), lambda own, i: invert(own, f"load-{i % 50}"), threads=4) as load:
        for weights in ({"a": 0.5, "b": 0.5}, {"b": 1.0}, {"a": 0.9, "b": 0.1}, {"a": 1.0}):
            set_traffic(client, weights=weights)
            time.sleep(1.0)
    assert not load.failures, load.failures[:3]
    assert load.served["invert/a"] > 0 and load.served["invert/b"] > 0


def test_variant_requests_are_checked_before_anything_deploys(client):
    """Names that routes and application names cannot hold, deployment options beyond replicas
    and resources (a runtime_env would run code on the cluster), and unknown families."""
    for body, status, message in [
        ({"name": "A/b", "config": {}}, 422, "variant name"),
        ({"name": "ok", "config": {}, "deployment": {"ray_actor_options": {"runtime_env": {"pip": ["x"]}}}}, 422, "runtime_env"),
        ({"name": "ok", "config": {}, "deployment": {"user_config": {}}}, 422, "user_config"),
        ({"name": "ok", "config": {"mode": "sideways"}}, 422, "mode"),
        ({"name": "a", "config": {}}, 409, "already has"),
    ]:
        response = client.post("/v1/variants/invert", json=body)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]["message"]
    assert client.post("/v1/variants/nope", json={"name": "x", "config": {}}).status_code == 404
    assert client.get("/v1/traffic").json()["families"]["invert"]["variants"] == ["a", "b", "slow"]


def _replica_names(family_prefix: str) -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{family_prefix}" in a["name"]}


def test_variant_added_shadowed_promoted_and_removed_under_load(client, app_url):
    """A new variant joins at weight 0 as its own deployment (no other replica restarts), is
    shadowed, takes 10%, then 100%, and is removed after the traffic moves back; a stream of
    requests meanwhile sees no failure."""
    before = _replica_names("invert-") | _replica_names("Ingress")
    try:
        with background_load(app_url, lambda own, i: invert(own, f"promote-{i % 40}")) as load:
            added = client.post("/v1/variants/invert", json={"name": "c", "config": {"mode": "invert"}, "deployment": {"ray_actor_options": {"num_cpus": 0}}}, timeout=300)
            assert added.status_code == 201, added.text
            assert added.json()["traffic"]["weights"]["c"] == 0.0
            assert client.post("/v1/variants/invert", json={"name": "c", "config": {}}).status_code == 409
            set_traffic(client, shadow={"c": 1.0})
            time.sleep(1.0)
            set_traffic(client, weights={"a": 0.9, "c": 0.1}, shadow={})
            time.sleep(1.0)
            set_traffic(client, weights={"c": 1.0})
            time.sleep(1.0)
            assert {served_by(invert(client, f"after-{i}")) for i in range(20)} == {"c"}
            set_traffic(client, weights={"a": 1.0})
            assert client.delete("/v1/variants/invert/a").status_code == 422  # still has all the traffic
            removed = client.delete("/v1/variants/invert/c", timeout=120)
            assert removed.status_code == 200, removed.text
    finally:
        set_traffic(client, weights={"a": 1.0}, shadow={})
    assert not load.failures, load.failures[:3]
    assert load.served["invert/c"] > 0 and load.served["invert/a"] > 0
    assert "c" not in client.get("/v1/traffic").json()["families"]["invert"]["variants"]
    assert before <= _replica_names("invert-") | _replica_names("Ingress"), "a replica of the app restarted"


def test_traffic_and_added_variants_survive_a_restart_of_the_app(app_url, tmp_path):
    """A second app with its own state file: change its weights and add a variant, delete the
    app, deploy the same config again as ``pixelfleet up`` does: both come back."""
    from ray import serve
    from ray.serve.schema import ServeApplicationSchema

    from pixelfleet.serve import control
    from pixelfleet.serve.runner import wait_until_running, with_added_variants

    app = ServeApplicationSchema(
        name="persist", route_prefix="/persist", import_path="pixelfleet.serve.app:build_app",
        args={"families": {"invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {}, "b": {"mode": "identity"}}}},
              "state": {"path": str(tmp_path / "state.json")}},
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "invert-a", "invert-b")],
    )  # fmt: skip
    with beside_session(app) as original, httpx.Client(base_url=f"{app_url}/persist", timeout=300) as persist:
        deploy = control.deployed_config()  # the config with the app, as pixelfleet up would deploy it
        set_traffic(persist, weights={"a": 0.25, "b": 0.75})
        assert persist.post("/v1/variants/invert", json={"name": "extra", "config": {}, "deployment": {"ray_actor_options": {"num_cpus": 0}}}).status_code == 201
        control.submit(original)  # the app and its added variant are gone
        deadline = time.monotonic() + 120
        while "persist" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "persist" not in serve.status().applications
        control.submit(with_added_variants(deploy))  # what pixelfleet up does with the config
        wait_until_running("persist", 300)
        wait_until_running("persist-invert-extra", 300)
        traffic = persist.get("/v1/traffic").json()["families"]["invert"]
        assert traffic["weights"] == {"a": 0.25, "b": 0.75, "extra": 0.0}
        assert traffic["variants"] == ["a", "b", "extra"]
        assert persist.post("/v1/invert", content=PNG, headers={"Content-Type": "image/png"}, params={"model": "extra"}).status_code == 200


def test_traffic_by_handle(handle, client, restore_invert):
    """The admin operations are handle methods too (inside the cluster, keyless)."""
    from pixelfleet.models.errors import Unprocessable

    handle.set_traffic.remote("invert", weights={"a": 0.5, "b": 0.5}).result()
    assert handle.traffic.remote().result()["families"]["invert"]["weights"] == {"a": 0.5, "b": 0.5}
    assert client.get("/v1/traffic").json()["families"]["invert"]["weights"] == {"a": 0.5, "b": 0.5}
    with pytest.raises(Unprocessable):
        handle.set_traffic.remote("invert", weights={"zz": 1.0}).result()
