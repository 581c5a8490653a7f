"""``serve/report.py`` on exposition text made by prometheus_client's own registry (real Counter
and Histogram objects, named as Ray exports the app's series), and on known numbers."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pixelfleet.serve.metrics import LATENCY_BUCKETS_S
from pixelfleet.serve.report import (
    Histogram as Buckets,
    build_report,
    histogram_quantile,
    latency_p_value,
    parse_samples,
    pool_sparse_buckets,
    required_per_arm,
    verdict_lines,
)

FAMILY = "invert"


class FakeCluster:
    """The app's series as a Prometheus registry holds them; ``prefix="ray_"`` as Ray names them.
    Every series carries a ``replica`` label, as Ray Serve adds, so the report must sum over it."""

    def __init__(self, prefix: str = "ray_", latency_buckets: list[float] = LATENCY_BUCKETS_S) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{prefix}pixelfleet_requests", "requests", ["family", "variant", "operation", "status", "replica"], registry=self.registry)
        self.latency = Histogram(
            f"{prefix}pixelfleet_request_latency_seconds", "latency", ["family", "variant", "operation", "replica"],
            buckets=latency_buckets, registry=self.registry,
        )  # fmt: skip
        self.shadows = Counter(f"{prefix}pixelfleet_shadow_requests", "shadows", ["family", "variant", "outcome", "replica"], registry=self.registry)
        self.agreement = Histogram(
            f"{prefix}pixelfleet_shadow_agreement", "agreement", ["family", "variant", "measure", "replica"],
            buckets=[0.5, 0.9, 0.99, 1], registry=self.registry,
        )  # fmt: skip

    def request(self, variant: str, seconds: float, status: int = 200, replica: str = "r1", family: str = FAMILY, times: int = 1) -> None:
        for _ in range(times):
            self.requests.labels(family, variant, "invert", str(status), replica).inc()
            self.latency.labels(family, variant, "invert", replica).observe(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_parse_drops_the_ray_prefix_the_suffixes_and_created_samples():
    cluster = FakeCluster()
    cluster.request("a", 0.02)
    samples = parse_samples(cluster.text())
    assert {s.metric for s in samples} == {"pixelfleet_requests", "pixelfleet_request_latency_seconds"}
    assert {s.kind for s in samples if s.metric == "pixelfleet_requests"} == {"_total"}
    assert {s.kind for s in samples if s.metric == "pixelfleet_request_latency_seconds"} == {"_bucket", "_sum", "_count"}
    unprefixed = FakeCluster(prefix="")
    unprefixed.request("a", 0.02)
    assert sorted((s.metric, s.kind, s.value) for s in parse_samples(unprefixed.text())) == sorted((s.metric, s.kind, s.value) for s in samples)


def test_known_bucket_counts_give_known_quantiles():
    cluster = FakeCluster(latency_buckets=[0.1, 0.2, 0.4, 0.8])
    # 10 in (0, 0.1], 30 in (0.1, 0.2], 40 in (0.2, 0.4], 20 in (0.4, 0.8]; split over two replicas
    for seconds, times in ((0.05, 10), (0.15, 30), (0.3, 40), (0.6, 20)):
        cluster.request("a", seconds, replica="r1", times=times // 2)
        cluster.request("a", seconds, replica="r2", times=times - times // 2)
    report = build_report(cluster.text(), FAMILY, {"a": 1.0})
    (row,) = report["variants"]
    assert row["requests"] == 100
    # p50: rank 50 in (0.2, 0.4] (40 below, 40 in it): 0.2 + 0.2 * 10/40; p95: 0.4 + 0.4 * 15/20; p99: 0.4 + 0.4 * 19/20
    assert row["latency_s"]["p50"] == pytest.approx(0.25)
    assert row["latency_s"]["p95"] == pytest.approx(0.7)
    assert row["latency_s"]["p99"] == pytest.approx(0.78)


def test_quantile_edges_as_prometheus():
    inf = math.inf
    # a rank in the +Inf bucket answers the highest finite bound
    assert histogram_quantile(0.99, Buckets([1.0, 2.0, inf], [1, 2, 10])) == 2.0
    # the first bucket starts at 0
    assert histogram_quantile(0.5, Buckets([1.0, 2.0, inf], [10, 10, 10])) == pytest.approx(0.5)
    assert histogram_quantile(0.5, Buckets([1.0, 2.0, inf], [0, 0, 0])) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, Buckets([1.0, inf], [1, 1]))


def test_equal_arms_show_no_significant_difference():
    cluster = FakeCluster()
    for variant in ("a", "b"):
        for seconds, times in ((0.004, 1000), (0.02, 3000), (0.07, 800), (0.2, 200)):
            cluster.request(variant, seconds, times=times)
        cluster.request(variant, 0.02, status=503, times=10)
        cluster.request(variant, 0.001, status=422, times=7)
    report = build_report(cluster.text(), FAMILY, {"a": 0.9, "b": 0.1})
    rows = {row["variant"]: row for row in report["variants"]}
    assert report["control"] == "a" and rows["a"]["vs_control"] is None
    b = rows["b"]
    assert (b["requests"], b["errors_5xx"], b["errors_4xx"]) == (5017, 10, 7)
    assert b["error_rate"] == pytest.approx(10 / 5017)
    assert b["vs_control"]["error_p_value"] == pytest.approx(1.0)
    assert b["vs_control"]["latency_p_value"] == pytest.approx(1.0)
    assert b["vs_control"]["verdict"].startswith("no significant difference")


def test_five_percent_vs_half_a_percent_errors_on_2000_requests_is_significant():
    cluster = FakeCluster()
    cluster.request("a", 0.02, times=1990)
    cluster.request("a", 0.02, status=500, times=10)  # 0.5%
    cluster.request("b", 0.02, times=1900)
    cluster.request("b", 0.02, status=503, times=100)  # 5%
    report = build_report(cluster.text(), FAMILY, {"a": 0.5, "b": 0.5}, default="a")
    b = next(row for row in report["variants"] if row["variant"] == "b")
    assert b["vs_control"]["error_p_value"] < 1e-10
    assert b["vs_control"]["required_per_arm"] < 2000
    assert b["vs_control"]["verdict"].startswith("significant") and "more errors (5.00% vs 0.50%" in b["vs_control"]["verdict"]
    assert verdict_lines(report) == [f"b vs a: {b['vs_control']['verdict']}"]


def test_a_slower_variant_is_significant_on_latency_alone():
    cluster = FakeCluster()
    cluster.request("a", 0.02, times=300)
    cluster.request("a", 0.07, times=100)
    cluster.request("b", 0.02, times=100)
    cluster.request("b", 0.07, times=300)
    b = next(row for row in build_report(cluster.text(), FAMILY, {"a": 1.0, "b": 0.0})["variants"] if row["variant"] == "b")
    assert b["vs_control"]["error_p_value"] == pytest.approx(1.0)
    assert b["vs_control"]["latency_p_value"] < 1e-10
    assert "slower" in b["vs_control"]["verdict"]


def test_few_requests_are_not_enough_data():
    cluster = FakeCluster()
    cluster.request("a", 0.02, times=40)
    cluster.request("b", 0.02, times=39)
    cluster.request("b", 0.02, status=500, times=1)
    b = next(row for row in build_report(cluster.text(), FAMILY, {"a": 1.0, "b": 1.0})["variants"] if row["variant"] == "b")
    need = b["vs_control"]["required_per_arm"]
    assert b["vs_control"]["verdict"] == f"not enough data: 40 requests per arm, need >= {need}"
    assert need > 40


def test_a_variant_without_requests_has_no_data_and_shadows_are_counted():
    cluster = FakeCluster()
    cluster.request("a", 0.02, times=5)
    cluster.shadows.labels(FAMILY, "slow", "ok", "r1").inc(3)
    cluster.shadows.labels(FAMILY, "slow", "error", "r1").inc(1)
    for value in (1.0, 1.0, 0.95):
        cluster.agreement.labels(FAMILY, "slow", "equal_fraction", "r1").observe(value)
    cluster.request("a", 0.02, family="other", times=50)  # another family's series stay out
    report = build_report(cluster.text(), FAMILY, {"a": 1.0, "b": 0.0})
    rows = {row["variant"]: row for row in report["variants"]}
    assert set(rows) == {"a", "b", "slow"} and rows["a"]["requests"] == 5
    assert rows["b"]["vs_control"]["verdict"].startswith("no data")
    assert rows["slow"]["shadow"] == {"ok": 3, "error": 1}
    assert rows["slow"]["agreement"]["equal_fraction"] == pytest.approx(2.95 / 3)


def test_mean_agreement_uses_the_exact_accumulated_sum_where_recorded():
    """Ray rebuilds a histogram's _sum from bucket midpoints; the accumulating counter is exact."""
    cluster = FakeCluster()
    accumulated = Counter("ray_pixelfleet_shadow_agreement_accumulated", "sum", ["family", "variant", "measure", "replica"], registry=cluster.registry)
    for value in (1.0, 0.2):
        cluster.agreement.labels(FAMILY, "slow", "equal_fraction", "r1").observe(value)
    accumulated.labels(FAMILY, "slow", "equal_fraction", "r1").inc(1.0 + 0.2)
    cluster.shadows.labels(FAMILY, "slow", "ok", "r1").inc(2)
    cluster.agreement.labels(FAMILY, "slow", "equal_fraction", "r1")._sum.set(0.0)  # what a midpoint replay could leave
    rows = {row["variant"]: row for row in build_report(cluster.text(), FAMILY, {"a": 1.0})["variants"]}
    assert rows["slow"]["agreement"]["equal_fraction"] == pytest.approx(0.6)


def test_required_per_arm_matches_the_two_proportion_formula():
    # Fleiss, Levin and Paik (2003), no continuity correction: 5% vs 10% needs 435 per arm at alpha 0.05, power 0.8
    assert required_per_arm(0.05, 0.10) == 435
    assert required_per_arm(0.10, 0.05) == 435
    assert required_per_arm(0.2, 0.2) == math.inf
    assert required_per_arm(0.05, 0.10, power=0.9) > 435


def test_sparse_buckets_are_pooled_and_one_bucket_means_no_difference():
    # expected count of a cell: 102 * column total / 204, so a column needs a total >= 10
    assert pool_sparse_buckets([[100, 1, 0, 1], [100, 0, 0, 2]]) == [[102.0], [102.0]]
    assert pool_sparse_buckets([[50, 8, 3, 3], [50, 4, 2, 0]]) == [[50.0, 14.0], [50.0, 6.0]]
    assert latency_p_value([50, 0, 0], [80, 0, 0]) == 1.0
    assert latency_p_value([0, 0], [5, 1]) is None
    with pytest.raises(ValueError):
        latency_p_value([1, 2], [1, 2, 3])


def test_one_operation_can_be_reported_alone():
    cluster = FakeCluster()
    cluster.request("a", 0.02, times=10)
    cluster.requests.labels(FAMILY, "a", "other", "200", "r1").inc(5)
    assert build_report(cluster.text(), FAMILY, {"a": 1.0})["variants"][0]["requests"] == 15
    assert build_report(cluster.text(), FAMILY, {"a": 1.0}, operation="invert")["variants"][0]["requests"] == 10
    assert build_report(cluster.text(), FAMILY, {"a": 1.0}, operation="other")["variants"][0]["requests"] == 5


def test_only_the_named_applications_series_count():
    """Two apps of one cluster with a family of the same name: the report reads its own app's."""
    registry = CollectorRegistry()
    requests = Counter("ray_pixelfleet_requests", "requests", ["family", "variant", "operation", "status", "application"], registry=registry)
    requests.labels(FAMILY, "a", "invert", "200", "pixelfleet").inc(5)
    requests.labels(FAMILY, "a", "invert", "200", "other").inc(100)
    text = generate_latest(registry).decode()
    mine = {row["variant"]: row for row in build_report(text, FAMILY, {"a": 1.0}, application="pixelfleet")["variants"]}
    everything = {row["variant"]: row for row in build_report(text, FAMILY, {"a": 1.0})["variants"]}
    assert mine["a"]["requests"] == 5 and everything["a"]["requests"] == 105
