"""Observability of the app: the cluster's Prometheus metrics on ``GET /metrics`` and the
ingress's request spans.

``GET /metrics`` (``rest.py``) answers the Prometheus text of every alive node's Ray metrics
agent, merged: Ray exports the ``ray.serve.metrics`` series of every replica on a node from that
node's agent (``ray.nodes()``: ``NodeManagerAddress`` and ``MetricsExportPort``; it serves with
the Ray dashboard off too), with the prefix ``ray_`` on every name (``ray_pixelfleet_requests_total``).
The merge keeps one ``# HELP``/``# TYPE`` per metric family (a plain concatenation of several
nodes' texts is not valid exposition) and adds a ``node`` label (the agent's ``host:port``)
where a sample has none, so the agents' own process series stay apart.

The request span itself (``pixelfleet.infer``) and the context passed to the replicas are in
:mod:`pixelfleet.deployments.telemetry`; :func:`traced` wraps ``Ingress.infer`` in it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from pixelfleet.deployments import telemetry
from pixelfleet.deployments.telemetry import TraceExport

if TYPE_CHECKING:
    from pixelfleet.serve.config import AppConfig

logger = logging.getLogger("ray.serve")

# Prometheus's text format 0.0.4; prometheus_client >= 0.22 labels its output 1.0.0, which older
# Prometheus servers and some scrapers do not take (the bytes are the same format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT_S = 5.0
NODE_LABEL = "node"


def metrics_targets() -> list[str]:
    """``host:port`` of the metrics agent of every alive Ray node (blocking: asks the GCS)."""
    import ray

    return [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


def _fetch(target: str, timeout_s: float) -> str:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=timeout_s) as response:
        return response.read().decode("utf-8")


def merge_expositions(texts: dict[str, str]) -> bytes:
    """One Prometheus text exposition from several (target -> text): samples of a metric family
    under one header, a ``node`` label (the target) added where a sample has none.

    Raises:
        ValueError: a text is not Prometheus exposition (from ``prometheus_client``'s parser).
    """
    families: dict[str, Metric] = {}
    for target, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = sample.labels if NODE_LABEL in sample.labels else {**sample.labels, NODE_LABEL: target}
                merged.samples.append(sample._replace(labels=labels))

    class _Merged:
        def collect(self):
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


async def cluster_exposition(timeout_s: float = SCRAPE_TIMEOUT_S) -> bytes:
    """The Prometheus text of the whole local Ray cluster: every alive node's metrics agent,
    fetched concurrently (``timeout_s`` seconds each), merged (:func:`merge_expositions`). A node
    that does not answer is left out and logged; ``pixelfleet`` series of that node are missing
    from this scrape only."""
    targets = await asyncio.to_thread(metrics_targets)
    answers = await asyncio.gather(*(asyncio.to_thread(_fetch, t, timeout_s) for t in targets), return_exceptions=True)
    texts = {}
    for target, answer in zip(targets, answers):
        if isinstance(answer, BaseException):
            logger.warning("metrics agent %s did not answer: %r", target, answer)
        else:
            texts[target] = answer
    return await asyncio.to_thread(merge_expositions, texts)


def trace_export(config: "AppConfig") -> TraceExport | None:
    """Where the app's spans go (``tracing.otlp_endpoint``), or None: not exported."""
    tracing = config.tracing
    return TraceExport(tracing.otlp_endpoint, tracing.service_name) if tracing.otlp_endpoint else None


def traced(infer: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap ``Ingress.infer(self, family_name, operation_name, ...)`` in the request's span
    (``telemetry.request_span``), exported where ``self.config.tracing`` says."""

    @functools.wraps(infer)
    async def wrapper(self, family_name: str, operation_name: str, *args: Any, **kwargs: Any) -> Any:
        with telemetry.request_span(family_name, operation_name, trace_export(self.config)):
            return await infer(self, family_name, operation_name, *args, **kwargs)

    return wrapper
