"""Prometheus metrics of the ingress, recorded through Ray Serve's metrics API.

``ray.serve.metrics`` records in every replica on every node and Ray exports the series from
each node's metrics agent, so Prometheus sees the whole cluster; the series here carry the
family, variant and operation as tags. Metric objects are made lazily, in the process that
records (a replica), never at import.
"""

from __future__ import annotations

from functools import cache

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


@cache
def _requests():
    from ray.serve import metrics

    return metrics.Counter(
        "pixelfleet_requests", description="Requests by family, variant, operation and HTTP status.",
        tag_keys=("family", "variant", "operation", "status"),
    )  # fmt: skip


@cache
def _latency():
    from ray.serve import metrics

    return metrics.Histogram(
        "pixelfleet_request_latency_seconds", description="Time from the ingress's call to the family's answer, seconds.",
        boundaries=LATENCY_BUCKETS_S, tag_keys=("family", "variant", "operation"),
    )  # fmt: skip


@cache
def _shadow_requests():
    from ray.serve import metrics

    return metrics.Counter(
        "pixelfleet_shadow_requests", description="Shadow copies by family, variant and outcome (ok, error, skipped).",
        tag_keys=("family", "variant", "outcome"),
    )  # fmt: skip


@cache
def _shadow_latency():
    from ray.serve import metrics

    return metrics.Histogram(
        "pixelfleet_shadow_latency_seconds", description="Latency of shadow copies, seconds.",
        boundaries=LATENCY_BUCKETS_S, tag_keys=("family", "variant"),
    )  # fmt: skip


@cache
def _shadow_agreement():
    from ray.serve import metrics

    return metrics.Histogram(
        "pixelfleet_shadow_agreement", description="Agreement of a shadow's answer with the primary's (PSNR-Y dB, CER).",
        boundaries=[0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 20, 25, 30, 35, 40, 45, 50, 60, 100],
        tag_keys=("family", "variant", "measure"),
    )  # fmt: skip


@cache
def _shadow_agreement_accumulated():
    from ray.serve import metrics

    return metrics.Counter(
        "pixelfleet_shadow_agreement_accumulated",
        description="Sum of the shadows' agreement values (exact; Ray rebuilds a histogram's _sum from its buckets): "
        "its rate over pixelfleet_shadow_agreement_count's is the mean agreement.",
        tag_keys=("family", "variant", "measure"),
    )


def record_request(family: str, variant: str, operation: str, status: int, seconds: float) -> None:
    """One request answered by ``variant`` (``+``-joined for a chain) with HTTP ``status``."""
    tags = {"family": family, "variant": variant, "operation": operation}
    _requests().inc(1, tags={**tags, "status": str(status)})
    _latency().observe(seconds, tags=tags)


def record_shadow(family: str, variant: str, outcome: str, seconds: float | None, agreement: float | None, measure: str | None = None) -> None:
    """One shadow copy: its outcome, latency and agreement with the primary's answer."""
    _shadow_requests().inc(1, tags={"family": family, "variant": variant, "outcome": outcome})
    if seconds is not None:
        _shadow_latency().observe(seconds, tags={"family": family, "variant": variant})
    if agreement is not None and measure:
        tags = {"family": family, "variant": variant, "measure": measure}
        _shadow_agreement().observe(agreement, tags=tags)
        _shadow_agreement_accumulated().inc(agreement, tags=tags)
