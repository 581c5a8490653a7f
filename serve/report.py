"""``pixelfleet traffic report``: compare a family's variants from the metrics the app recorded.

Pure functions over Prometheus exposition text (what ``GET /metrics`` answers), tested without
Ray. The series are those of :mod:`pixelfleet.serve.metrics`; Ray exports them with a ``ray_``
prefix (``ray_pixelfleet_requests_total``), and every replica and node exports its own series,
so the counts here are summed over every label but the ones a comparison needs (family, variant,
status, outcome, bucket bound).

What is compared, each variant against the family's *control* (its highest-weight variant):

- error rate (status >= 500; 4xx are the callers' mistakes, shown apart): Fisher's exact test;
- latency: a chi-square test of homogeneity of the histogram's bucket counts (only buckets are
  recorded, not the requests' times), and p50/p95/p99 estimated from the buckets as
  Prometheus' ``histogram_quantile`` does;
- whether the data is enough to decide: the requests per arm that a two-sided two-proportion
  z-test needs to see the error-rate difference at ``alpha`` with ``power``.

The p-values are per comparison (no correction for several variants against one control).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "pixelfleet_requests"
LATENCY = "pixelfleet_request_latency_seconds"
SHADOW_REQUESTS = "pixelfleet_shadow_requests"
SHADOW_AGREEMENT = "pixelfleet_shadow_agreement"
SHADOW_AGREEMENT_ACCUMULATED = "pixelfleet_shadow_agreement_accumulated"
PREFIX = "pixelfleet_"
RAY_PREFIX = "ray_"
SUFFIXES = ("_total", "_bucket", "_count", "_sum")
ALPHA = 0.05
POWER = 0.8
MIN_DETECTABLE_EFFECT = 0.01  # absolute difference in error rate (1 percentage point)
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Sample:
    """One sample of the exposition: ``metric`` without the ``ray_`` prefix and without the
    ``_total``/``_bucket``/``_count``/``_sum`` suffix, which is ``kind`` (``""`` when none)."""

    metric: str
    kind: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """The ``pixelfleet_*`` samples of Prometheus exposition ``text`` (``ray_`` prefix dropped).

    Parsed by ``prometheus_client.parser.text_string_to_metric_families``; ``_created`` samples
    and every other metric are skipped.

    Raises:
        ValueError: ``text`` is not Prometheus text format (the parser's error).
    """
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.startswith(RAY_PREFIX + PREFIX):
                name = name[len(RAY_PREFIX) :]
            if not name.startswith(PREFIX):
                continue
            kind = next((s for s in SUFFIXES if name.endswith(s)), "")
            base = name[: -len(kind)] if kind else name
            if base.endswith("_created"):
                continue
            samples.append(Sample(base, kind, dict(sample.labels), float(sample.value)))
    return samples


def counter_totals(samples: Iterable[Sample], metric: str, family: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Counter ``metric`` of ``family`` summed over every label but ``by``: ``{(values of by): total}``."""
    totals: dict[tuple[str, ...], float] = defaultdict(float)
    for s in samples:
        if s.metric == metric and s.kind in ("_total", "") and s.labels.get("family") == family:
            totals[tuple(s.labels.get(k, "") for k in by)] += s.value
    return dict(totals)


@dataclass
class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound (``le``, the last ``inf``),
    the sum of the observed values and their count (Ray's ``_sum`` is approximate: it replays
    each bucket's count at the bucket's midpoint)."""

    bounds: list[float] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    sum: float = 0.0
    count: float = 0.0

    @property
    def total(self) -> float:
        """Observations in all buckets (the ``+Inf`` bucket's cumulative count)."""
        return self.cumulative[-1] if self.cumulative else 0.0

    def counts(self) -> list[float]:
        """Observations per bucket (not cumulative), in the order of :attr:`bounds`."""
        return [c - (self.cumulative[i - 1] if i else 0.0) for i, c in enumerate(self.cumulative)]

    def mean(self) -> float | None:
        """``_sum / _count``; None without observations."""
        return self.sum / self.count if self.count > 0 else None


def histograms(samples: Iterable[Sample], metric: str, family: str, by: tuple[str, ...]) -> dict[tuple[str, ...], Histogram]:
    """Histogram ``metric`` of ``family`` per ``by`` labels, every other label (replica, node,
    operation, ...) summed bound by bound."""
    buckets: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for s in samples:
        if s.metric != metric or s.labels.get("family") != family:
            continue
        key = tuple(s.labels.get(k, "") for k in by)
        if s.kind == "_bucket":
            buckets[key][float(s.labels["le"])] += s.value
        elif s.kind == "_sum":
            sums[key][0] += s.value
        elif s.kind == "_count":
            sums[key][1] += s.value
    result = {}
    for key in set(buckets) | set(sums):
        bounds = sorted(buckets[key])
        result[key] = Histogram(bounds, [buckets[key][b] for b in bounds], *sums[key])
    return result


def histogram_quantile(q: float, histogram: Histogram) -> float | None:
    """The ``q``-quantile estimated from the buckets, as Prometheus' ``histogram_quantile``.

    The rank ``q * total`` falls in the first bucket whose cumulative count reaches it; the
    value is interpolated linearly between that bucket's lower and upper bound (the lower
    bound of the first bucket is 0 when its upper bound is positive). A rank in the ``+Inf``
    bucket answers the highest finite bound. Source: ``bucketQuantile`` in Prometheus'
    ``promql/quantile.go`` and https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile.

    Returns:
        the estimate in the histogram's unit (seconds for latencies), or None without observations.

    Raises:
        ValueError: ``q`` is outside [0, 1], or the last bound is not ``+Inf``.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    if not histogram.bounds or histogram.total <= 0:
        return None
    if not math.isinf(histogram.bounds[-1]):
        raise ValueError("a Prometheus histogram's last bucket is le=+Inf")
    if len(histogram.bounds) < 2:
        return None
    rank = q * histogram.total
    b = next(i for i, c in enumerate(histogram.cumulative) if c >= rank)
    if b == len(histogram.bounds) - 1:
        return histogram.bounds[-2]
    if b == 0 and histogram.bounds[0] <= 0:
        return histogram.bounds[0]
    start = histogram.bounds[b - 1] if b > 0 else 0.0
    end = histogram.bounds[b]
    below = histogram.cumulative[b - 1] if b > 0 else 0.0
    in_bucket = histogram.cumulative[b] - below
    return end if in_bucket <= 0 else start + (end - start) * (rank - below) / in_bucket


def error_rate_p_value(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float | None:
    """Two-sided p-value of Fisher's exact test that two arms have the same error rate.

    The 2x2 table is ``[[errors_a, n_a - errors_a], [errors_b, n_b - errors_b]]``;
    ``scipy.stats.fisher_exact`` (exact, valid at any sample size). None if an arm is empty.
    """
    if n_a <= 0 or n_b <= 0:
        return None
    from scipy.stats import fisher_exact

    return float(fisher_exact([[errors_a, n_a - errors_a], [errors_b, n_b - errors_b]]).pvalue)


def pool_sparse_buckets(rows: list[list[float]], min_expected: float = 5.0) -> list[list[float]]:
    """Merge adjacent buckets (columns) of a 2-row table until every expected count is
    ``>= min_expected`` (Cochran's rule for the chi-square approximation: Cochran, 1954, "Some
    methods for strengthening the common chi-square tests", Biometrics 10(4)); empty buckets go.

    The expected count of a cell is ``row total * column total / grand total``, so a column
    passes when its total is at least ``min_expected * grand total / smallest row total``.
    A last column short of it joins the one before.
    """
    grand = sum(map(sum, rows))
    smallest = min(sum(r) for r in rows)
    if grand <= 0 or smallest <= 0:
        return [[] for _ in rows]
    need = min_expected * grand / smallest
    columns: list[list[float]] = []
    current = [0.0] * len(rows)
    for column in zip(*rows):
        current = [a + b for a, b in zip(current, column)]
        if sum(current) >= need:
            columns.append(current)
            current = [0.0] * len(rows)
    if sum(current) > 0:
        if columns:
            columns[-1] = [a + b for a, b in zip(columns[-1], current)]
        else:
            columns.append(current)
    return [list(r) for r in zip(*columns)] if columns else [[] for _ in rows]


def latency_p_value(counts_a: list[float], counts_b: list[float]) -> float | None:
    """p-value of a chi-square test of homogeneity: do two arms' requests fall in the latency
    buckets in the same proportions?

    Per-bucket (not cumulative) counts with the same bounds; sparse buckets are pooled first
    (:func:`pool_sparse_buckets`); ``scipy.stats.chi2_contingency`` on the 2 x k table (Pearson's
    chi-square, k - 1 degrees of freedom). One pooled bucket left: the arms cannot differ at
    this resolution, p = 1. None if an arm is empty.

    Raises:
        ValueError: the two arms have different numbers of buckets.
    """
    if len(counts_a) != len(counts_b):
        raise ValueError(f"the arms' histograms have {len(counts_a)} and {len(counts_b)} buckets")
    if sum(counts_a) <= 0 or sum(counts_b) <= 0:
        return None
    table = pool_sparse_buckets([list(counts_a), list(counts_b)])
    if len(table[0]) < 2:
        return 1.0
    from scipy.stats import chi2_contingency

    return float(chi2_contingency(table, correction=False).pvalue)


def required_per_arm(p1: float, p2: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Requests per arm for a two-sided two-proportion z-test to detect rates ``p1`` vs ``p2``.

    ``n = (z_{1-alpha/2} * sqrt(2 * pbar * (1 - pbar)) + z_{power} * sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p1 - p2)^2``,
    ``pbar = (p1 + p2) / 2``, without continuity correction: Fleiss, Levin and Paik,
    *Statistical Methods for Rates and Proportions*, 3rd ed. (Wiley, 2003), section 4.2.

    Returns:
        the size per arm, rounded up; ``inf`` when ``p1 == p2`` (no difference to detect).
    """
    if p1 == p2:
        return math.inf
    from scipy.stats import norm

    pbar = (p1 + p2) / 2
    z_alpha, z_beta = norm.ppf(1 - alpha / 2), norm.ppf(power)
    root = z_alpha * math.sqrt(2 * pbar * (1 - pbar)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return float(math.ceil(root**2 / (p1 - p2) ** 2))


@dataclass
class Arm:
    """One variant's figures in a report (latencies in seconds, rates in [0, 1])."""

    variant: str
    weight: float
    requests: int = 0
    errors_5xx: int = 0
    errors_4xx: int = 0
    latency: Histogram = field(default_factory=Histogram)
    shadow: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float | None] = field(default_factory=dict)  # measure -> mean

    @property
    def error_rate(self) -> float | None:
        return self.errors_5xx / self.requests if self.requests else None

    def quantiles(self) -> dict[str, float | None]:
        return {f"p{round(q * 100)}": histogram_quantile(q, self.latency) for q in QUANTILES}


def _status(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def control_of(weights: dict[str, float], default: str | None = None) -> str | None:
    """The control arm: the highest-weight variant (ties: the family's default, then by name)."""
    if not weights:
        return None
    top = max(weights.values())
    tied = sorted(v for v, w in weights.items() if w == top)
    return default if default in tied else tied[0]


def arms_from_metrics(
    samples: list[Sample], family: str, weights: dict[str, float], operation: str | None = None, served: Iterable[str] = (),
) -> dict[str, Arm]:  # fmt: skip
    """Each variant's figures: the variants ``served`` and in ``weights``, and any other the
    metrics name (chains such as ``srresnet-x2+srresnet-x4``, removed variants), optionally of
    one operation."""
    if operation is not None:
        samples = [s for s in samples if s.labels.get("operation", operation) == operation]
    requests = counter_totals(samples, REQUESTS, family, ("variant", "status"))
    latency = histograms(samples, LATENCY, family, ("variant",))
    shadows = counter_totals(samples, SHADOW_REQUESTS, family, ("variant", "outcome"))
    agreement = histograms(samples, SHADOW_AGREEMENT, family, ("variant", "measure"))
    accumulated = counter_totals(samples, SHADOW_AGREEMENT_ACCUMULATED, family, ("variant", "measure"))
    names = set(weights) | set(served) | {v for v, _ in requests} | {v for (v,) in latency} | {v for v, _ in shadows}
    arms = {name: Arm(name, weights.get(name, 0.0)) for name in sorted(names)}
    for (variant, status), count in requests.items():
        arm, code = arms[variant], _status(status)
        arm.requests += round(count)
        if code is not None and code >= 500:
            arm.errors_5xx += round(count)
        elif code is not None and code >= 400:
            arm.errors_4xx += round(count)
    for (variant,), histogram in latency.items():
        arms[variant].latency = histogram
    for (variant, outcome), count in shadows.items():
        arms[variant].shadow[outcome] = round(count)
    for (variant, measure), histogram in agreement.items():
        if variant in arms:  # the exact sum where recorded, else the histogram's (approximate under Ray)
            total = accumulated.get((variant, measure))
            count = histogram.count
            arms[variant].agreement[measure] = total / count if total is not None and count else histogram.mean()
    return arms


def compare(control: Arm, arm: Arm, alpha: float = ALPHA, power: float = POWER, mde: float = MIN_DETECTABLE_EFFECT) -> dict:
    """``arm`` against ``control``: the p-values, the requests per arm needed, and a verdict.

    The size needed is :func:`required_per_arm` for the observed error rates, or for the
    control's rate and the control's rate + ``mde`` when the observed difference is smaller
    than ``mde`` (an absolute difference in error rate): a difference below ``mde`` is not
    worth deciding on. The data is enough when both arms have that many requests or a test
    is already significant at ``alpha``.
    """
    out: dict = {"control": control.variant, "error_p_value": None, "latency_p_value": None, "required_per_arm": None}
    if arm.requests == 0 or control.requests == 0:
        out["verdict"] = f"no data: {arm.requests} requests to {arm.variant}, {control.requests} to {control.variant}"
        return out
    pa, pb = control.error_rate, arm.error_rate
    out["error_p_value"] = error_rate_p_value(control.errors_5xx, control.requests, arm.errors_5xx, arm.requests)
    if control.latency.bounds == arm.latency.bounds and control.latency.total > 0 and arm.latency.total > 0:
        out["latency_p_value"] = latency_p_value(control.latency.counts(), arm.latency.counts())
    if abs(pb - pa) >= mde:
        need = required_per_arm(pa, pb, alpha, power)
    else:
        need = required_per_arm(pa, pa + mde if pa + mde <= 1.0 else pa - mde, alpha, power)
    out["required_per_arm"] = None if math.isinf(need) else int(need)
    findings = []
    if out["error_p_value"] is not None and out["error_p_value"] < alpha:
        findings.append(f"{'more' if pb > pa else 'fewer'} errors ({pb:.2%} vs {pa:.2%}, p={out['error_p_value']:.2g})")
    if out["latency_p_value"] is not None and out["latency_p_value"] < alpha:
        qa, qb = control.quantiles()["p50"], arm.quantiles()["p50"]
        slower = "slower" if (qb or 0) > (qa or 0) else "faster" if (qb or 0) < (qa or 0) else "differently distributed"
        findings.append(f"{slower} (p50 {_seconds(qb)} vs {_seconds(qa)}, p={out['latency_p_value']:.2g})")
    smallest = min(arm.requests, control.requests)
    if findings:
        out["verdict"] = f"significant at alpha {alpha}: " + "; ".join(findings)
    elif smallest >= need:
        out["verdict"] = f"no significant difference (error rate {pb:.2%} vs {pa:.2%}; {smallest} requests per arm >= {need:.0f} needed)"
    else:
        out["verdict"] = f"not enough data: {smallest} requests per arm, need >= {need:.0f}"
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def build_report(
    text: str, family: str, weights: dict[str, float], default: str | None = None, operation: str | None = None,
    served: Iterable[str] = (), alpha: float = ALPHA, power: float = POWER, mde: float = MIN_DETECTABLE_EFFECT,
    application: str | None = None,
) -> dict:  # fmt: skip
    """The report of ``family`` from exposition ``text``, its current ``weights`` and the
    variants it serves, as a dict
    that is also the ``--json`` output: ``{"family", "control", "alpha", "power", "mde",
    "variants": [{"variant", "weight", "requests", "errors_5xx", "errors_4xx", "error_rate",
    "latency_s": {"p50", "p95", "p99"}, "shadow": {outcome: count}, "agreement": {measure: mean},
    "vs_control": {...} (None for the control)}]}``.

    ``application``: only the series of that Serve application (Ray's ``application`` label; the
    ingress records them), so a family of the same name in another app of the cluster stays out.

    Raises:
        ValueError: ``text`` is not Prometheus text format.
    """
    samples = parse_samples(text)
    if application is not None:
        samples = [s for s in samples if s.labels.get("application", application) == application]
    arms = arms_from_metrics(samples, family, weights, operation, served)
    control_name = control_of(weights, default)
    control = arms.get(control_name) if control_name else None
    variants = []
    for arm in arms.values():
        variants.append({
            "variant": arm.variant, "weight": arm.weight, "requests": arm.requests, "errors_5xx": arm.errors_5xx,
            "errors_4xx": arm.errors_4xx, "error_rate": arm.error_rate, "latency_s": arm.quantiles(),
            "shadow": arm.shadow, "agreement": arm.agreement,
            "vs_control": None if control is None or arm is control else compare(control, arm, alpha, power, mde),
        })  # fmt: skip
    return {"family": family, "operation": operation, "control": control_name, "alpha": alpha, "power": power, "mde": mde, "variants": variants}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _milliseconds(latency: dict[str, float | None]) -> str:
    values = [latency[k] for k in ("p50", "p95", "p99")]
    return "-" if all(v is None for v in values) else "/".join("-" if v is None else f"{v * 1000:.0f}" for v in values)


def report_table(report: dict):
    """A rich table of :func:`build_report`'s dict: one row per variant, the control marked ``*``."""
    from rich.table import Table

    operation = f", operation {report['operation']}" if report.get("operation") else ""
    table = Table(title=f"{report['family']}{operation}: each variant vs the control {report['control']}* (alpha {report['alpha']})")
    columns = ("variant", "weight", "requests", "5xx", "4xx", "5xx rate", "p50/95/99 ms", "shadow ok/err/skip", "agreement", "p errors", "p latency")
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in report["variants"]:
        shadow, versus = row["shadow"], row["vs_control"] or {}
        agreement = ", ".join(f"{measure} {mean:.4g}" if mean is not None else f"{measure} -" for measure, mean in sorted(row["agreement"].items()))
        shadows = "/".join(str(shadow.get(k, 0)) for k in ("ok", "error", "skipped")) if shadow else "-"
        table.add_row(
            row["variant"] + ("*" if row["variant"] == report["control"] else ""), f"{row['weight']:g}", str(row["requests"]),
            str(row["errors_5xx"]), str(row["errors_4xx"]), _rate(row["error_rate"]), _milliseconds(row["latency_s"]), shadows,
            agreement or "-", _p(versus.get("error_p_value")), _p(versus.get("latency_p_value")),
        )  # fmt: skip
    table.caption = "latency quantiles interpolated within the histogram's buckets; agreement: mean over the shadow copies compared"
    return table


def verdict_lines(report: dict) -> list[str]:
    """One line per variant other than the control: ``variant vs control: verdict``."""
    return [f"{row['variant']} vs {report['control']}: {row['vs_control']['verdict']}" for row in report["variants"] if row["vs_control"]]
