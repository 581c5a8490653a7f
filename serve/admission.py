"""Admission control of the ingress's HTTP routes: how many requests one ingress replica takes at
once, and how many body bytes any request may send. Both answer with the JSON errors of
``serve/errors.py`` before a route runs.

**Why the ingress counts its own requests.** When the ingress deployment is full, Ray Serve's
HTTP proxy would answer by itself: in Ray 2.60 its router raises ``BackPressureError`` once
``max_queued_requests`` requests wait for an ingress replica (every replica holding
``max_ongoing_requests``), and the proxy turns that into a 503 whose body is *plain text*
(``Request dropped due to backpressure (num_queued_requests=..., max_queued_requests=...).``,
``ray/serve/_private/http_util.py``: ``get_http_response_status`` then
``convert_object_to_asgi_messages`` with a ``str``), with ``Retry-After`` only where the
deployment's ``backpressure_config.retry_after_s`` is set. The body cannot be changed there.
So each ingress replica admits up to ``admission.max_in_flight`` requests itself
(:class:`AdmissionMiddleware`) and answers the next ones with JSON 503 ``overloaded`` and
``Retry-After``, and the Serve config gives the ``Ingress`` deployment a
``max_ongoing_requests`` above that (:func:`check_ingress_limits`), so requests always reach a
replica and the proxy never rejects first. A rejection costs the replica well under a
millisecond: nothing is read, no handle is called.

Health and metrics routes (``/healthz``, ``/readyz``, ``/metrics``, ``/v2/health/*``) are neither
counted nor refused, so probes and Prometheus keep answering under overload.

**Streams** (server-sent events: ``GET /v1/jobs/{id}/events``, ``POST .../stream``) may stay open
for minutes while they use no compute. They count like any request, and at most
``admission.max_streams`` of them at once, so watchers can never take every slot of a replica
from the requests that do the work.

**Body bytes** (:class:`BodyLimitMiddleware`): every route, the JSON ones included, gets at most
``limits.max_body_bytes``: a larger declared ``Content-Length`` is answered 413 before anything is
read, and a body sent without one (chunked) is cut off with 413 as soon as it passes the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from pixelfleet.models.errors import InvalidInput, Overloaded, PayloadTooLarge
from pixelfleet.serve.errors import error_response, route_path

logger = logging.getLogger("ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes that are never counted or refused: liveness, readiness and metrics.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
EXEMPT_PREFIXES = ("/v2/health/",)
#: The ``Ingress`` deployment's ``max_ongoing_requests`` must exceed ``max_in_flight`` by this
#: factor, so that requests being refused (and health probes) still find a free slot.
HEADROOM_FACTOR = 2


def is_stream(path: str) -> bool:
    """Whether ``path`` is a server-sent-events route (``.../events``, ``.../stream``)."""
    return path.endswith(("/events", "/stream"))


def is_exempt(path: str) -> bool:
    """Whether ``path`` (below the app's route prefix) is a health or metrics route."""
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class AdmissionMiddleware:
    """ASGI middleware: at most ``max_in_flight`` HTTP requests at once in this ingress replica.

    A request over the count is answered 503 ``overloaded`` (JSON; OIP's form below ``/v2``) with
    ``Retry-After: <retry_after_s>`` without reading its body; health and metrics routes
    (:func:`is_exempt`) pass uncounted. The count is per replica: a replica serves its requests
    on one event loop, so a plain integer is exact.

    Args:
        app: the ASGI app inside this middleware.
        max_in_flight: requests admitted at once (>= 1).
        retry_after_s: whole seconds for the ``Retry-After`` header (RFC 9110 section 10.2.3).
        max_streams: of those, server-sent-event streams (:func:`is_stream`) open at once
            (>= 1; capped at ``max_in_flight``, which is also the default).

    Raises:
        ValueError: a limit below 1.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: int, max_streams: int | None = None) -> None:
        max_streams = max_in_flight if max_streams is None else min(max_streams, max_in_flight)
        if max_in_flight < 1 or max_streams < 1:
            raise ValueError(f"max_in_flight ({max_in_flight}) and max_streams ({max_streams}) must be >= 1")
        self.app, self.max_in_flight, self.max_streams, self.retry_after_s = app, max_in_flight, max_streams, retry_after_s
        self.in_flight = 0
        self.streams = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(Request(scope)) if scope["type"] == "http" else ""
        if scope["type"] != "http" or is_exempt(path):
            await self.app(scope, receive, send)
            return
        stream = is_stream(path)
        if self.in_flight >= self.max_in_flight or (stream and self.streams >= self.max_streams):
            self.refused += 1
            what = f"{self.max_streams} event streams open" if stream and self.streams >= self.max_streams else f"{self.max_in_flight} requests in flight"
            error = Overloaded(f"the server is at capacity ({what}); retry shortly")
            error.headers = {"Retry-After": str(self.retry_after_s)}
            await error_response(error, Request(scope))(scope, receive, send)
            return
        self.in_flight += 1
        self.streams += stream
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.streams -= stream


class BodyLimitMiddleware:
    """ASGI middleware: no request body over ``max_bytes`` bytes, on any route.

    A declared ``Content-Length`` over the limit (or not a number) is answered at once (413 or
    400) without reading; otherwise the body's chunks are counted as the app reads them and the
    read that passes the limit raises ``HTTPException(413)``, which the app's error mapping
    answers as ``payload_too_large`` (FastAPI passes an ``HTTPException`` raised while it reads a
    JSON body through unchanged).

    Args:
        app: the ASGI app inside this middleware.
        max_bytes: the largest body accepted, bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await error_response(InvalidInput("Content-Length must be a number of bytes"), request)(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                error = PayloadTooLarge(f"body of {declared} bytes is over the limit of {self.max_bytes} bytes")
                await error_response(error, request)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def install_admission(api: Any, max_in_flight: int, retry_after_s: int, max_body_bytes: int, max_streams: int | None = None) -> None:
    """Add :class:`BodyLimitMiddleware` and :class:`AdmissionMiddleware` to the FastAPI app ``api``.

    Starlette runs the middleware added last first: call this after the middlewares that should
    run inside admission (auth, rate limits: a refused request costs no limiter call) and before
    the request-id middleware (so refusals carry the request id). Admission runs before the body
    limit, so a refused request reads nothing.
    """
    api.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    api.add_middleware(AdmissionMiddleware, max_in_flight=max_in_flight, retry_after_s=retry_after_s, max_streams=max_streams)


def check_ingress_limits(max_in_flight: int, max_ongoing_requests: int, max_queued_requests: int | None = None) -> str | None:
    """Why a Serve config's ``Ingress`` limits would let Ray's proxy refuse (plain text) before
    the ingress's own admission (JSON), or None when they fit.

    Args:
        max_in_flight: the app config's ``admission.max_in_flight``.
        max_ongoing_requests: the ``Ingress`` deployment's, per replica.
        max_queued_requests: the ``Ingress`` deployment's (-1 or None: unbounded).
    """
    needed = HEADROOM_FACTOR * max_in_flight
    if max_ongoing_requests < needed:
        return (
            f"Ingress max_ongoing_requests {max_ongoing_requests} must be at least {HEADROOM_FACTOR} x admission.max_in_flight "
            f"= {needed}, or Ray's proxy refuses overload in plain text before the ingress answers JSON 503"
        )
    if max_queued_requests is not None and max_queued_requests != -1 and max_queued_requests < 1:
        return "Ingress max_queued_requests must be -1 or at least 1"
    return None
