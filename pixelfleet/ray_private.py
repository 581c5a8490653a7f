"""Every private Ray call of pixelfleet, in one module below all the layers.

Ray Serve keeps three things we need private in Ray 2.60: the controller client that deploys a
*config* (what ``serve deploy``, ``serve run CONFIG``, the dashboard's REST API and KubeRay use;
the public ``serve.run`` deploys only ``Application`` objects), ``serve_start`` with a config's
HTTP options, and the current request's context (its id); Ray core, the switch to token
authentication that a process joining a cluster by address needs. A Ray upgrade has this one file to
check; ``tests/unit/test_layers.py`` keeps every other module off ``ray.serve._private`` and
the private context functions.
"""

from __future__ import annotations

from typing import Any


def controller_client():
    """The Serve controller client (``deploy_apps``, ``get_serve_details``).

    Raises:
        RayServeException: Serve is not running on the connected cluster.
    """
    from ray.serve.context import _get_global_client

    return _get_global_client()


def serve_start(http_options: dict[str, Any], proxy_location: Any):
    """Start Serve with a config file's HTTP options; returns the controller client."""
    from ray.serve._private import api as serve_api

    return serve_api.serve_start(http_options=http_options, proxy_location=proxy_location)


def current_request_id() -> str:
    """The id of the Serve request being handled (the ``X-Request-Id`` header, or the one Ray
    made); ``""`` outside a request."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:  # not inside a Serve request
        return ""


def enable_token_auth() -> None:
    """Turn on Ray's token authentication in this process before ``ray.init(address=...)``.

    A cluster that ``ray.init()`` starts uses token authentication, but a process joining it by
    an explicit address (not ``None`` or ``"auto"``) does not enable it by itself. This sets
    ``RAY_AUTH_MODE=token`` and reloads Ray's cached config, as ``ray.init`` does for the
    cluster it starts; Ray then reads the token from its token file, as for any cluster.
    """
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def serve_controller():
    """The Serve controller's actor handle: a detached actor that Ray restarts when it dies
    (the fault tests kill it under load). Its name and namespace are Serve's private constants.

    Raises:
        ValueError: Serve is not running on the connected cluster.
    """
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def replica_actor(actor_name: str):
    """The actor handle of a Serve replica, by the ``actor_name`` that the controller's details
    (``ServeInstanceDetails``: ``applications.<app>.deployments.<name>.replicas``) list."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    return ray.get_actor(actor_name, namespace=SERVE_NAMESPACE)


def ongoing_requests(replica, timeout_s: float = 30.0) -> int:
    """Requests a replica actor is handling or holds queued right now (what Serve's router
    asks it; answered on a thread of its own, so a busy replica answers too).

    Raises:
        GetTimeoutError: no answer within ``timeout_s`` seconds.
    """
    import ray

    return ray.get(replica.get_num_ongoing_requests.remote(), timeout=timeout_s)


def running_replicas(app: str, deployment: str, timeout_s: float | None = None) -> list:
    """The RUNNING replicas of a deployment as the controller lists them
    (``ray.serve.schema.ReplicaDetails``: ``replica_id``, ``actor_name``, ``node_id``, ``pid``);
    ``[]`` when the application or deployment is not (yet) there.

    Raises:
        GetTimeoutError: the controller did not answer within ``timeout_s`` seconds (None: wait
            as long as it takes; a controller whose GCS is gone never answers).
    """
    import ray
    from ray.serve.schema import ReplicaState, ServeInstanceDetails

    # the client's get_serve_details() waits without a limit; its controller handle, with one
    controller = controller_client()._controller
    details = ServeInstanceDetails(**ray.get(controller.get_serve_instance_details.remote(), timeout=timeout_s))
    application = details.applications.get(app)
    found = application.deployments.get(deployment) if application is not None else None
    return [r for r in found.replicas if r.state == ReplicaState.RUNNING] if found is not None else []


def print_worker_lines(select) -> None:
    """Make this driver print only the lines of its Ray workers' output that ``select`` (a
    function: line -> text or None) maps to text, as that text, without Ray's ``(pid=...)``
    prefix; the others stay in the workers' log files only. Needs ``ray.init(log_to_driver=True)``;
    it replaces that printer (the dispatcher handler ``ray_print_logs``, which ``ray.shutdown``
    removes again).
    """
    import sys

    from ray._private.worker import global_worker_stdstream_dispatcher

    def print_selected(data: dict) -> None:
        for line in data.get("lines", ()):
            text = select(line)
            if text is not None:
                print(text, file=sys.stdout, flush=True)

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.add_handler("ray_print_logs", print_selected)


def allow_batching_outside_serve() -> None:
    """Let a ``@serve.batch`` method run in a plain asyncio program (benchmarks of a replica's
    class without Ray): Ray 2.60's batch queue asks the replica context for a warning only, and
    that raises outside a replica. This skips the warning."""
    from ray.serve import batching

    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
