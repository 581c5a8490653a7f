"""Telemetry shared by the ingress and the family replicas: metrics, traces and the call context.

Metrics
    The family replicas record, through Ray Serve's metrics API (``ray.serve.metrics``, exported
    by every node's Ray metrics agent with the prefix ``ray_``; Ray adds the ``application``,
    ``deployment`` and ``replica`` tags): tiles per super-resolution forward pass
    (``pixelfleet_batch_size``), requests in flight in a replica (``pixelfleet_queue_length``)
    and the seconds a replica took to load its model (``pixelfleet_model_load_seconds``), each
    tagged with the family and the variant. The ingress's series are in
    :mod:`pixelfleet.serve.metrics`. Metric objects are made lazily, in the process that records.

Traces
    One OpenTelemetry ``TracerProvider`` per process (not the global one, which Ray Serve's own
    tracing may own). The ingress opens a span per request (``pixelfleet.infer``) and passes a
    :class:`CallContext` (W3C ``traceparent``, the request id, where to export) with the handle
    call; the replica's :meth:`~pixelfleet.deployments.spec.VariantDeployment.invoke` continues
    the trace with a child span, inside which the family code opens ``decode``, ``inference``
    and ``encode`` spans with :func:`span`. Spans are always made; they are exported over
    OTLP/HTTP only where the app's config sets ``tracing.otlp_endpoint``.

Request ids
    Ray Serve takes the ``X-Request-Id`` header as its request id (or makes one), carries it
    through handle calls into the family replicas, and writes it into every line of the
    ``ray.serve`` logger (and its children) in the replica log files; the code here reads it
    (:func:`request_id`) for the spans and the call context.

This module imports nothing of ``pixelfleet.serve`` (arrows point down).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "pixelfleet"
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]

# ---- metrics (deployment side) ----


@cache
def _batch_size():
    from ray.serve import metrics

    return metrics.Histogram(
        "pixelfleet_batch_size", description="Items per batched forward pass (super-resolution: tiles), by family and variant.",
        boundaries=BATCH_SIZE_BUCKETS, tag_keys=("family", "variant"),
    )  # fmt: skip


@cache
def _queue_length():
    from ray.serve import metrics

    return metrics.Gauge(
        "pixelfleet_queue_length", description="Requests in one replica of a variant: running, or waiting for a batch or an engine thread.",
        tag_keys=("family", "variant"),
    )  # fmt: skip


@cache
def _load_seconds():
    from ray.serve import metrics

    return metrics.Gauge(
        "pixelfleet_model_load_seconds", description="Seconds a replica of a variant took to load and warm up its model.",
        tag_keys=("family", "variant"),
    )  # fmt: skip


@cache
def family_of(variant: str) -> str:
    """The family of this replica's deployment (named ``<family>-<variant>``, ``spec.deployment_name``);
    outside a Serve replica, ``""``."""
    from ray import serve

    try:
        deployment = serve.get_replica_context().deployment
    except Exception:  # not in a replica (unit tests, benchmarks)
        return ""
    suffix = f"-{variant}"
    return deployment[: -len(suffix)] if variant and deployment.endswith(suffix) else deployment


_LOADED: dict[str, float] = {}  # variant -> load seconds of this replica, re-set by refresh_gauges()


def record_load(variant: str, seconds: float) -> None:
    """This replica loaded its model in ``seconds`` (call at the end of the deployment's ``__init__``)."""
    _LOADED[variant] = seconds
    _load_seconds().set(seconds, tags={"family": family_of(variant), "variant": variant})


def refresh_gauges() -> None:
    """Set this replica's gauges again: a gauge set once, at start, drops out of Ray's export after a
    while; Serve's periodic health check (``VariantDeployment.check_health``) calls this."""
    for variant, seconds in _LOADED.items():
        _load_seconds().set(seconds, tags={"family": family_of(variant), "variant": variant})


def record_batch(variant: str, size: int) -> None:
    """One batched forward pass of ``size`` items (call from the ``@serve.batch`` method)."""
    _batch_size().observe(size, tags={"family": family_of(variant), "variant": variant})


class _InFlight:
    """Requests in flight in this process, per (family, variant), mirrored to the gauge."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()

    def add(self, family: str, variant: str, delta: int) -> None:
        with self.lock:
            key = (family, variant)
            self.counts[key] = count = self.counts.get(key, 0) + delta
        _queue_length().set(count, tags={"family": family, "variant": variant})


_in_flight = _InFlight()


@contextlib.contextmanager
def in_flight(family: str, variant: str) -> Iterator[None]:
    """Count a request as in flight in this replica (``pixelfleet_queue_length``) while the block runs."""
    _in_flight.add(family, variant, +1)
    try:
        yield
    finally:
        _in_flight.add(family, variant, -1)


# ---- traces ----


@dataclass(frozen=True)
class TraceExport:
    """Where spans go: an OTLP/HTTP traces endpoint (``http://collector:4318/v1/traces``) and the
    ``service.name`` resource attribute."""

    otlp_endpoint: str
    service_name: str = "pixelfleet"


@dataclass(frozen=True)
class CallContext:
    """What travels with a handle call from the ingress into a family replica (picklable).

    Args:
        family, variant: the variant that serves the call (its metrics tags).
        request_id: the request's id (Ray Serve's, from ``X-Request-Id``).
        trace: the W3C trace context of the caller's span (``traceparent``, ``tracestate``).
        export: where the replica exports its spans; None: not exported.
    """

    family: str
    variant: str
    request_id: str = ""
    trace: dict[str, str] = field(default_factory=dict)
    export: TraceExport | None = None


class _Tracing:
    """The process's tracer provider and its exporters (one OTLP exporter per endpoint)."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.endpoints: set[str] = set()
        self.lock = threading.Lock()

    def get_provider(self, service_name: str = "pixelfleet") -> TracerProvider:
        with self.lock:
            if self.provider is None:
                self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            return self.provider

    def export_to(self, export: TraceExport) -> None:
        provider = self.get_provider(export.service_name)
        with self.lock:
            if export.otlp_endpoint in self.endpoints:
                return
            self.endpoints.add(export.otlp_endpoint)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=export.otlp_endpoint)))


_tracing = _Tracing()
_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("pixelfleet_call_context", default=None)


def configure_export(export: TraceExport | None) -> None:
    """Export this process's spans over OTLP/HTTP to ``export.otlp_endpoint`` (batched, every few
    seconds); idempotent per endpoint; None does nothing. The first call fixes ``service.name``."""
    if export is not None:
        _tracing.export_to(export)


def add_span_processor(processor: SpanProcessor) -> None:
    """Send this process's spans to ``processor`` as well (tests: a ``SimpleSpanProcessor`` over
    an ``InMemorySpanExporter``)."""
    _tracing.get_provider().add_span_processor(processor)


def tracer() -> trace.Tracer:
    """This process's pixelfleet tracer."""
    return _tracing.get_provider().get_tracer(TRACER_NAME)


def span(name: str, **attributes: Any):
    """A child span of the current one, ``pixelfleet.<name>`` (``decode``, ``inference``, ``encode``),
    as a context manager; exceptions are recorded on it and re-raised."""
    return tracer().start_as_current_span(f"pixelfleet.{name}", attributes={f"pixelfleet.{k}": v for k, v in attributes.items()})


def annotate(**attributes: Any) -> None:
    """Set ``pixelfleet.<key>`` attributes on the current span (no-op where none is recording)."""
    current = trace.get_current_span()
    for key, value in attributes.items():
        current.set_attribute(f"pixelfleet.{key}", value)


def request_id() -> str:
    """The current request's id as Ray Serve knows it (the ``X-Request-Id`` header, or the id Ray
    made); ``""`` outside a request (Ray 2.60 has no public getter: ``pixelfleet.ray_private``)."""
    from pixelfleet.ray_private import current_request_id

    return current_request_id()


def call_context(family: str, variant: str, export: TraceExport | None = None) -> CallContext:
    """The context to pass with a handle call to ``family``'s ``variant``: the current span's
    W3C trace context, the current request id, and ``export`` (default: where the call this
    replica serves exports, so a chain's next stage exports to the same place)."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    serving_now = _current.get()
    if export is None and serving_now is not None:
        export = serving_now.export
    return CallContext(family, variant, request_id() or (serving_now.request_id if serving_now else ""), carrier, export)


@contextlib.contextmanager
def serving(method: str, context: CallContext | None) -> Iterator[trace.Span]:
    """In a replica: continue the caller's trace with a span ``pixelfleet.<family>.<method>`` (a
    child of the caller's span, from ``context.trace``), count the request in flight, and export
    where the context says. Without a context (a direct handle call), a new trace begins.
    """
    if context is None:
        context = CallContext(family="", variant="")
    configure_export(context.export)
    parent = TraceContextTextMapPropagator().extract(carrier=context.trace)
    token, current_token = otel_context.attach(parent), _current.set(context)
    try:
        attributes = {"pixelfleet.family": context.family, "pixelfleet.variant": context.variant, "pixelfleet.method": method}
        if context.request_id:
            attributes["pixelfleet.request_id"] = context.request_id
        name = f"pixelfleet.{context.family}.{method}" if context.family else f"pixelfleet.{method}"
        with tracer().start_as_current_span(name, kind=trace.SpanKind.SERVER, attributes=attributes) as current:
            with in_flight(context.family, context.variant) if context.family else contextlib.nullcontext():
                yield current
    finally:
        _current.reset(current_token)
        otel_context.detach(token)


@contextlib.contextmanager
def request_span(family: str, operation: str, export: TraceExport | None = None) -> Iterator[trace.Span]:
    """At the ingress: the span of one request, ``pixelfleet.infer``, with the family, operation
    and request id (the variant is added with :func:`annotate` once chosen); the status code of
    an error (``status`` of the pixelfleet errors, else 500) is recorded on it."""
    configure_export(export)
    attributes = {"pixelfleet.family": family, "pixelfleet.operation": operation, "pixelfleet.request_id": request_id()}
    with tracer().start_as_current_span("pixelfleet.infer", kind=trace.SpanKind.SERVER, attributes=attributes) as current:
        try:
            yield current
        except Exception as err:
            current.set_attribute("pixelfleet.status", int(getattr(err, "status", 500)))
            raise
        current.set_attribute("pixelfleet.status", 200)
