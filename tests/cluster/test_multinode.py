"""A worker node lost under load, on a real multi-node Ray cluster: a head and two worker nodes,
each its own raylet on this machine (``ray.cluster_utils.Cluster``), serving the pixelfleet app
with the test family's two replicas on two different nodes (``max_replicas_per_node: 1``).
Killing a node that holds a replica fails no request (the ingress sends a call whose replica
died once more, to the other replica: ``Operation.idempotent``), and Serve starts the lost
replica again on a node that is left."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.conftest import png_bytes
from tests.integration.load import background_load
from tests.integration.polling import until

APP = "pixelfleet"
IMAGE = png_bytes(synthetic_photo(8, 8))
#: GCS marks a silent node dead after 3 missed checks 0.5 s apart (Ray's default: 5 x 3 s)
FAST_NODE_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A head (the Serve controller, the HTTP proxy and the ingress: custom resource ``head``)
    and two worker nodes, 1 logical CPU each, in a temp dir of their own (so no other Ray on the
    machine finds this one as ``address="auto"``)."""
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="pfc-", dir="/tmp")  # short: raylet socket paths are limited
    os.environ["RAY_TMPDIR"] = temp
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")  # as pixelfleet up does
    cluster = Cluster(
        initialize_head=True, connect=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False, "_system_config": FAST_NODE_HEALTH},
    )  # fmt: skip
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def base_url(cluster, tmp_path_factory) -> str:
    from pixelfleet.serve import control
    from pixelfleet.serve.runner import wait_until_running
    from ray.serve.schema import ServeDeploySchema

    port = _free_port()
    schema = ServeDeploySchema.model_validate({
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": APP, "route_prefix": "/", "import_path": "pixelfleet.serve.app:build_app",
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}},
            "args": {"families": {"invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {"delay_s": 0.2}}}},
                     "state": {"path": str(tmp_path_factory.mktemp("state") / "state.json")}},
            "deployments": [
                {"name": "Ingress", "ray_actor_options": {"num_cpus": 0, "resources": {"head": 0.01}}},
                {"name": "invert-a", "num_replicas": 2, "max_replicas_per_node": 1,
                 "health_check_period_s": 1, "health_check_timeout_s": 5, "ray_actor_options": {"num_cpus": 0}},
            ],
        }],
    })  # fmt: skip
    control.start_and_deploy(schema)
    wait_until_running(APP, 180)
    return f"http://127.0.0.1:{port}"


def test_a_worker_node_lost_under_load_fails_no_request_and_its_replica_comes_back(cluster, base_url):
    import ray

    from pixelfleet.ray_private import ongoing_requests, replica_actor, running_replicas

    replicas = running_replicas(APP, "invert-a")
    assert len({r.node_id for r in replicas}) == 2, replicas  # one replica per node
    workers = {node.node_id: node for node in cluster.worker_nodes}
    lost = next(r for r in replicas if r.node_id in workers)  # a replica on a worker node
    victim, lost_replica = workers[lost.node_id], replica_actor(lost.actor_name)

    def send(client: httpx.Client, i: int) -> httpx.Response:
        return client.post("/v1/invert", content=IMAGE, headers={"Content-Type": "image/png"})

    with background_load(base_url, send, threads=4) as load:
        until(lambda: sum(load.served.values()) >= 8, 60, "the stream is flowing")
        in_flight = until(lambda: ongoing_requests(lost_replica), 10, "requests in flight on the node's replica")
        cluster.remove_node(victim, allow_graceful=False)  # its raylet and every process on it
        at_loss = sum(load.served.values())
        until(lambda: sum(load.served.values()) >= at_loss + 20, 60, "20 more requests answered after the loss")

        def back() -> bool:
            nodes = {r.node_id for r in running_replicas(APP, "invert-a")}
            return len(nodes) == 2 and victim.node_id not in nodes

        until(back, 90, "two replicas again, on the nodes that are left")
        at_back = sum(load.served.values())
        until(lambda: sum(load.served.values()) >= at_back + 8, 30, "requests answered with the replica back")
    assert not next(n for n in ray.nodes() if n["NodeID"] == victim.node_id)["Alive"]  # the node is really gone
    assert in_flight >= 1  # the node took calls down with it ...
    assert load.failures == [], load.failures[:3]  # ... and none of them failed
