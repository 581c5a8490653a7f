"""Graceful drain before ``pixelfleet up`` stops: the requests in flight finish, then Serve stops.

``serve.shutdown()`` kills Serve's HTTP proxy at once (Ray 2.60, ``ProxyStateManager.shutdown``)
and only then lets the replicas finish within their ``graceful_shutdown_timeout_s``: a request in
flight is answered by its replica but never reaches its client. So on SIGTERM the runner first
waits until no ingress replica holds a request (Serve's own count, the one its router uses), for
at most ``timeout_s``, and then shuts Serve down, which closes the port.
"""

from __future__ import annotations

import time

from ray.exceptions import GetTimeoutError, RayActorError

from pixelfleet.ray_private import ongoing_requests, replica_actor, running_replicas

INGRESS = "Ingress"
POLL_S = 0.05
MIN_CALL_S = 0.5
"""The shortest limit of one call to the controller or a replica (a 2-core machine under load
answers in tens of milliseconds, not in one)."""
SETTLE_S = 0.2
"""After the ingress replicas are idle: time for the proxy to write the last responses out."""


def in_flight(app_names: list[str], deployment: str = INGRESS, deadline: float | None = None) -> int:
    """Requests that the running replicas of ``deployment`` in the apps hold now (handling or
    queued); replicas that cannot answer by ``deadline`` (``time.monotonic()`` seconds; None: no
    limit) count as 0.

    Raises:
        GetTimeoutError: the controller did not list the replicas by ``deadline`` (its GCS may be
            gone: a SIGTERM to the whole process group stops Ray's own processes too).
        RayActorError: the controller is dead.
    """

    def left() -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), MIN_CALL_S)

    total = 0
    for app in app_names:
        for replica in running_replicas(app, deployment, timeout_s=left()):
            try:
                total += ongoing_requests(replica_actor(replica.actor_name), timeout_s=left())
            except Exception:  # a replica that is gone (or mute) holds nothing we can wait for
                continue
    return total


def drain(app_names: list[str], timeout_s: float) -> tuple[bool, float, int]:
    """Wait until the apps' ingress replicas hold no request, or ``timeout_s`` seconds.

    Returns:
        ``(drained, seconds waited, requests still held)``; when the controller stops answering
        after the first poll, the last count it gave.

    Raises:
        GetTimeoutError, RayActorError: the controller did not answer the first poll in time (see
            :func:`in_flight`): Ray is going or gone, there is nothing to wait for.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    held = in_flight(app_names, deadline=deadline)
    while held and time.monotonic() < deadline:
        time.sleep(POLL_S)
        try:
            held = in_flight(app_names, deadline=deadline)
        except (GetTimeoutError, RayActorError):
            break
    if not held:
        time.sleep(SETTLE_S)
    return held == 0, time.monotonic() - started, held
