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
