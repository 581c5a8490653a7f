"""Graceful drain before ``pixelfleet up`` stops: the requests in flight finish, then Serve stops.

``serve.shutdown()`` kills Serve's HTTP proxy at once (Ray 2.60, ``ProxyStateManager.shutdown``)
and only then lets the replicas finish within their ``graceful_shutdown_timeout_s``: a request in
flight is answered by its replica but never reaches its client. So on SIGTERM the runner first
waits until no ingress replica holds a request (Serve's own count, the one its router uses), for
at most ``timeout_s``, and then shuts Serve down, which closes the port.
"""

from __future__ import annotations

import time

from pixelfleet.ray_private import ongoing_requests, replica_actor, running_replicas

INGRESS = "Ingress"
POLL_S = 0.05
SETTLE_S = 0.2
"""After the ingress replicas are idle: time for the proxy to write the last responses out."""


def in_flight(app_names: list[str], deployment: str = INGRESS, timeout_s: float = 2.0) -> int:
    """Requests that the running replicas of ``deployment`` in the apps hold now (handling or
    queued); replicas that cannot answer within ``timeout_s`` seconds count as 0.

    Raises:
        GetTimeoutError: the controller did not list the replicas within ``timeout_s`` (its GCS
            may be gone: a SIGTERM to the whole process group stops Ray's own processes too).
    """
    total = 0
    for app in app_names:
        for replica in running_replicas(app, deployment, timeout_s=timeout_s):
            try:
                total += ongoing_requests(replica_actor(replica.actor_name), timeout_s=timeout_s)
            except Exception:  # a replica that is gone holds nothing
                continue
    return total


def drain(app_names: list[str], timeout_s: float) -> tuple[bool, float, int]:
    """Wait until the apps' ingress replicas hold no request, or ``timeout_s`` seconds.

    Returns:
        ``(drained, seconds waited, requests still held)``.

    Raises:
        GetTimeoutError: the controller did not answer before ``timeout_s`` ran out.
    """
    started = time.monotonic()

    def left() -> float:
        return max(timeout_s - (time.monotonic() - started), POLL_S)

    held = in_flight(app_names, timeout_s=left())
    while held and time.monotonic() - started < timeout_s:
        time.sleep(POLL_S)
        held = in_flight(app_names, timeout_s=left())
    if not held:
        time.sleep(SETTLE_S)
    return held == 0, time.monotonic() - started, held
