"""Faults under load, through a real app beside the session's: a replica killed (the ingress
re-sends an idempotent call once, so no caller sees it), the Serve controller killed (traffic
keeps flowing, Serve recovers), and an HTTP client that goes away (its work is cancelled in the
replica instead of running on for nobody)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import png_bytes
from tests.integration.load import background_load
from tests.integration.polling import until

pytestmark = pytest.mark.integration

APP = "faults"
DELAY_S = 0.2  # each call of variant a: long enough that a stream always has calls in flight
SLOW_S = 30.0  # variant slow: a call that no test waits out
IMAGE = png_bytes(synthetic_photo(8, 8))
ONCE_KIND = "tests.families.invert:ONCE_SPEC"  # the same family, its operation not idempotent


def send_a(client: httpx.Client, i: int) -> httpx.Response:
    return client.post("/v1/invert", content=IMAGE, headers={"Content-Type": "image/png"}, params={"model": "a"})


def send_once(client: httpx.Client, i: int) -> httpx.Response:
    return client.post("/v1/once", content=IMAGE, headers={"Content-Type": "image/png"})


@pytest.fixture(scope="module")
def base_url(app_url: str, tmp_path_factory) -> Iterator[str]:
    """An app with variant ``a`` on two replicas and ``slow`` on one, and family ``once`` (not
    idempotent) on two; every replica reserves no CPU."""
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        args={"families": {"invert": {"kind": INVERT_KIND, "default": "a",
                                      "variants": {"a": {"delay_s": DELAY_S}, "slow": {"delay_s": SLOW_S}}},
                           "once": {"kind": ONCE_KIND, "default": "a", "variants": {"a": {"delay_s": DELAY_S}}}},
              "state": {"path": str(tmp_path_factory.mktemp("faults") / "state.json")}},
        deployments=[
            {"name": "Ingress", "ray_actor_options": {"num_cpus": 0}},
            {"name": "invert-a", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
            {"name": "invert-slow", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
            {"name": "once-a", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
        ],
    )  # fmt: skip
    with beside_session(app):
        yield f"{app_url}/{APP}"


def served(load) -> int:
    return sum(load.served.values())


def test_a_replica_killed_under_load_fails_no_request(base_url):
    """ray.kill one of two replicas while it holds requests: the ingress re-sends each of them
    once (``Operation.idempotent``), Serve routes them to the other replica, 0 fail."""
    import ray

    from pixelfleet.ray_private import ongoing_requests, replica_actor, running_replicas

    replicas = running_replicas(APP, "invert-a")
    assert len(replicas) == 2, replicas
    victim = replica_actor(replicas[0].actor_name)
    with background_load(base_url, send_a, threads=4) as load:
        until(lambda: served(load) >= 8, 60, "the stream is flowing")
        in_flight = until(lambda: ongoing_requests(victim), 10, "requests in flight on the victim")
        ray.kill(victim, no_restart=True)
        at_kill = served(load)
        until(lambda: served(load) >= at_kill + 20, 60, "20 more requests answered after the kill")
    assert in_flight >= 1  # the kill took requests down with it ...
    assert load.failures == [], load.failures[:3]  # ... and none of them failed
    with pytest.raises(ray.exceptions.RayActorError):  # the replica is really gone
        ongoing_requests(victim)


def test_a_call_that_is_not_idempotent_is_not_sent_again(base_url):
    """The control: the same kill with ``idempotent=False`` fails the calls the replica held
    (503 model_unavailable, JSON), at most as many as it held, and no others."""
    import ray

    from pixelfleet.ray_private import ongoing_requests, replica_actor, running_replicas

    replicas = running_replicas(APP, "once-a")
    assert len(replicas) == 2, replicas
    victim = replica_actor(replicas[0].actor_name)
    with background_load(base_url, send_once, threads=4) as load:
        until(lambda: served(load) >= 8, 60, "the stream is flowing")
        in_flight = until(lambda: ongoing_requests(victim), 10, "requests in flight on the victim")
        ray.kill(victim, no_restart=True)
        at_kill = served(load)
        until(lambda: served(load) >= at_kill + 20, 60, "20 more requests answered after the kill")
    assert in_flight >= 1 and 1 <= len(load.failures) <= 4, load.failures  # 4 threads: 4 calls in flight at most
    assert all(f.startswith("503 ") and '"model_unavailable"' in f for f in load.failures), load.failures


def test_the_serve_controller_killed_under_load_keeps_traffic_flowing(base_url):
    """Kill the controller (Ray restarts it): requests keep being answered meanwhile (the proxy
    and the ingress route from the replica lists they hold), none fails, and the restarted
    controller takes over the app again (the killed replica of the test above is replaced)."""
    import ray
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from pixelfleet.ray_private import running_replicas, serve_controller

    controller = serve_controller()
    pid = ray.get(controller.get_pid.remote(), timeout=30)
    with background_load(base_url, send_a, threads=4) as load:
        until(lambda: served(load) >= 8, 60, "the stream is flowing")
        ray.kill(controller, no_restart=False)
        at_kill = served(load)
        until(lambda: served(load) >= at_kill + 20, 60, "20 more requests answered after the kill")

        def restarted() -> int | None:
            try:
                return ray.get(controller.get_pid.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return None

        new_pid = until(restarted, 60, "the controller answers again")
    assert load.failures == [], load.failures[:3]
    assert new_pid != pid  # a new controller process
    until(lambda: serve.status().applications[APP].status == ApplicationStatus.RUNNING, 60, "the app runs")
    until(lambda: len(running_replicas(APP, "invert-a")) == 2, 60, "invert-a has its two replicas")


def test_a_client_that_disconnects_cancels_its_work_in_the_replica(base_url):
    """An HTTP client gives up on a 30 s call after 1.5 s and closes its connection: Serve's
    proxy cancels the ingress's request, the ingress cancels its call, and the replica's
    ``CancelledError`` ends the work (seen within 10 s of a 30 s call); the replica holds nothing."""
    from ray import serve

    from pixelfleet.ray_private import ongoing_requests, replica_actor, running_replicas

    slow = serve.get_deployment_handle("invert-slow", app_name=APP)
    [details] = running_replicas(APP, "invert-slow")
    replica = replica_actor(details.actor_name)
    before = slow.info.remote().result()
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(30, read=1.5)) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/invert", content=IMAGE, headers={"Content-Type": "image/png"}, params={"model": "slow"})
    until(lambda: slow.info.remote().result()["cancelled"] > before["cancelled"], 10, "the replica saw the cancellation")
    after = slow.info.remote().result()
    assert after["cancelled"] == before["cancelled"] + 1 and after["finished"] == before["finished"], after
    until(lambda: ongoing_requests(replica) == 0, 10, "the replica holds no request")
