"""The arithmetic of ``bench/serving.py``: percentiles, ratios and batch sizes from /metrics text
(no server is started)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serving.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serving_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_summarize_gives_rate_and_percentiles_in_milliseconds(bench):
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    rps, p50, p99 = bench.summarize(latencies, wall_s=4.0)
    assert rps == pytest.approx(25.0)
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)


def test_summarize_without_answers_is_nan(bench):
    assert all(math.isnan(v) for v in bench.summarize([], 1.0))


def test_ratio_skips_missing_and_zero(bench):
    assert bench.ratio(9.0, 10.0) == pytest.approx(0.9)
    assert bench.ratio(None, 10.0) is None
    assert bench.ratio(1.0, 0.0) is None
    assert bench.ratio(math.nan, 2.0) is None


EXPOSITION = """\
# HELP ray_pixelfleet_batch_size Items per batched forward pass.
# TYPE ray_pixelfleet_batch_size histogram
ray_pixelfleet_batch_size_bucket{family="superres",variant="srresnet-x4",replica="a",le="1.0"} 3.0
ray_pixelfleet_batch_size_bucket{family="superres",variant="srresnet-x4",replica="a",le="2.0"} 7.0
ray_pixelfleet_batch_size_bucket{family="superres",variant="srresnet-x4",replica="a",le="4.0"} 7.0
ray_pixelfleet_batch_size_bucket{family="superres",variant="srresnet-x4",replica="a",le="+Inf"} 8.0
ray_pixelfleet_batch_size_count{family="superres",variant="srresnet-x4",replica="a"} 8.0
ray_pixelfleet_batch_size_sum{family="superres",variant="srresnet-x4",replica="a"} 20.0
ray_pixelfleet_batch_size_bucket{family="superres",variant="srresnet-x2",replica="b",le="1.0"} 50.0
ray_pixelfleet_batch_size_bucket{family="superres",variant="srresnet-x2",replica="b",le="+Inf"} 50.0
ray_pixelfleet_batch_size_sum{family="superres",variant="srresnet-x2",replica="b"} 50.0
# HELP ray_pixelfleet_requests Requests.
# TYPE ray_pixelfleet_requests counter
ray_pixelfleet_requests_total{variant="srresnet-x4"} 9.0
"""


def test_batch_histograms_keep_the_variant_and_its_sum(bench):
    found = bench.batch_histograms(EXPOSITION, "srresnet-x4")
    assert list(found) == ["ray_pixelfleet_batch_size"]
    buckets, total = found["ray_pixelfleet_batch_size"]
    assert buckets == {1.0: 3.0, 2.0: 7.0, 4.0: 7.0, math.inf: 8.0}
    assert total == 20.0


def test_batch_sizes_are_the_difference_per_bucket(bench):
    before = {1.0: 1.0, 2.0: 2.0, 4.0: 2.0, math.inf: 2.0}
    after = {1.0: 3.0, 2.0: 7.0, 4.0: 7.0, math.inf: 8.0}
    # new batches: 2 of size 1, 3 of size 2, none of 3-4, 1 over 4
    assert bench.batch_sizes(before, after) == {"1": 2, "2": 3, ">4": 1}
    assert bench.batch_sizes({}, {1.0: 0.0, math.inf: 0.0}) == {}


def test_tile_bounds_are_exact_for_sizes_one_and_two(bench):
    # 3 batches of 1, 4 of 2, 1 of 3-4: 3 + 8 + (3..4) tiles
    assert bench.tile_bounds({1.0: 3.0, 2.0: 7.0, 4.0: 8.0, math.inf: 8.0}) == (14.0, 15.0)
    low, high = bench.tile_bounds({1.0: 0.0, 2.0: 0.0, math.inf: 1.0})
    assert low == 3.0 and math.isinf(high)


def _run(bench, server, workload, concurrency, rps, p50_ms):
    """A measured run with made-up figures (16 of 16 answered)."""
    return bench.Run(server, workload, concurrency, 16, 16, 16 / rps, rps, p50_ms, p50_ms * 1.2, 0.1, 1.0)


def test_goals_show_the_bare_serve_app_and_whether_it_meets_each_goal(bench):
    """The goals table has the bare Ray Serve app's figure beside pixelfleet's, and says whether it
    misses the goal too."""
    runs = [
        _run(bench, "plain", "sr", 8, 20.0, 400), _run(bench, "plain", "sr", 1, 15.0, 60),
        _run(bench, "serve", "sr", 8, 14.0, 560), _run(bench, "serve", "sr", 1, 11.0, 90),
        _run(bench, "pixelfleet", "sr", 8, 18.0, 450), _run(bench, "pixelfleet", "sr", 1, 11.0, 92),
    ]  # fmt: skip
    servers = {"plain": {"ready_s": 2.0, "idle_pss_gib": 0.5}, "serve": {"ready_s": 9.0, "idle_pss_gib": 1.4},
               "pixelfleet": {"ready_s": 11.0, "idle_pss_gib": 1.3}}  # fmt: skip
    comparison, goals = bench.summary_tables(runs, servers, {})
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in goals.splitlines()[2:]}
    # pixelfleet 0.90x plain, the bare Serve app 0.70x: both miss it
    assert rows["SR 128->512 at 8 concurrent: pixelfleet >= 0.95x plain FastAPI"] == ["0.90x", "0.70x", "**not met** (the bare Ray Serve app misses it too) |"]
    assert rows["SR 128->512 at 1 concurrent: <= 10 ms added to plain's p50"][:2] == ["32 ms", "30 ms"]
    # the bare app is ready in 9 s: pixelfleet misses what the bare app meets
    assert rows["start to ready <= 10 s"] == ["11.0 s", "9.0 s", "**not met** (the bare Ray Serve app meets it) |"]
    assert rows["idle memory of `pixelfleet up`, default config <= 1.5 GiB PSS"] == ["1.30 GiB", "1.40 GiB", "met (the bare Ray Serve app meets it) |"]
    assert "| bare Ray Serve |" in comparison.splitlines()[0]
    assert "14.00 req/s, p50 560 ms" in comparison
