"""The token buckets of serve/ratelimit.py with a fake clock, their headers, the eviction bound,
the route groups and caller keys, and the rate_limits config."""

from __future__ import annotations

import pickle

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pixelfleet.models.errors import RateLimited
from pixelfleet.serve.config import AppConfig, RateGroup, RateLimitConfig
from pixelfleet.serve.errors import error_response, install_error_handlers
from pixelfleet.serve.ratelimit import Buckets, TokenBucket, caller_key, route_group
from pydantic import ValidationError


class FakeClock:
    """Seconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate():
    bucket = TokenBucket(rate_per_s=2.0, burst=5, now=0.0)
    decisions = [bucket.take(0.0) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert bucket.take(0.25).allowed is False  # half a token
    assert bucket.take(0.5).allowed is True  # one token after 1 / rate_per_s
    assert bucket.take(0.5).allowed is False
    # idle for long: back to burst, never more
    assert [bucket.take(100.0).allowed for _ in range(6)] == [True] * 5 + [False]


def test_retry_after_and_reset_values():
    bucket = TokenBucket(rate_per_s=0.5, burst=3, now=0.0)
    first = bucket.take(0.0)
    assert first.headers() == {"RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "2"}  # 1 token / 0.5 per s
    bucket.take(0.0), bucket.take(0.0)
    refused = bucket.take(0.0)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(2.0) and refused.reset_s == pytest.approx(6.0)
    assert refused.headers() == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "6", "Retry-After": "2"}
    later = bucket.take(1.5)  # 0.75 token: 0.5 s more for one, rounded up to 1 s
    assert not later.allowed and later.retry_after_s == pytest.approx(0.5)
    assert later.headers()["Retry-After"] == "1" and later.headers()["RateLimit-Reset"] == "5"  # 2.25 tokens / 0.5 = 4.5 s


def test_a_clock_stepping_back_refills_nothing():
    bucket = TokenBucket(rate_per_s=1.0, burst=1, now=10.0)
    assert bucket.take(10.0).allowed
    assert not bucket.take(5.0).allowed
    assert bucket.take(11.0).allowed


def test_invalid_buckets_are_refused():
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 2, 0.0).take(0.0, cost=3)
    with pytest.raises(ValueError):
        Buckets({}, max_callers=0)


def test_buckets_per_caller_and_group_with_a_fake_clock():
    clock = FakeClock()
    buckets = Buckets({"infer": RateGroup(rate_per_s=1, burst=2), "admin": RateGroup(rate_per_s=1, burst=1)}, clock=clock)
    assert [buckets.take("a", "infer").allowed for _ in range(3)] == [True, True, False]
    assert buckets.take("b", "infer").allowed  # another caller has its own bucket
    assert buckets.take("a", "admin").allowed  # and another group its own
    assert buckets.take("a", "jobs") is None  # a group without a limit
    clock.now += 1.0
    assert buckets.take("a", "infer").allowed
    assert not buckets.take("a", "infer").allowed


def test_eviction_keeps_at_most_max_callers_least_recently_used_first():
    clock = FakeClock()
    buckets = Buckets({"infer": RateGroup(rate_per_s=1, burst=1)}, max_callers=3, clock=clock)
    for key in ("a", "b", "c"):
        assert buckets.take(key, "infer").allowed
    assert not buckets.take("a", "infer").allowed  # a is now the most recently used
    for i in range(100):
        buckets.take(f"x{i}", "infer")
        assert len(buckets) <= 3
    assert set(buckets.buckets) == {("x97", "infer"), ("x98", "infer"), ("x99", "infer")}
    assert buckets.take("a", "infer").allowed  # evicted: starts full again

    buckets = Buckets({"infer": RateGroup(rate_per_s=1, burst=1)}, max_callers=2, clock=clock)
    buckets.take("a", "infer"), buckets.take("b", "infer"), buckets.take("a", "infer"), buckets.take("c", "infer")
    assert set(buckets.buckets) == {("a", "infer"), ("c", "infer")}  # b was the least recently used


@pytest.mark.parametrize(
    ("method", "path", "group"),
    [
        ("POST", "/v1/superres", "infer"),
        ("POST", "/v1/ocr/words", "infer"),
        ("POST", "/v2/models/invert/infer", "infer"),
        ("POST", "/v2/models/invert/versions/a/infer", "infer"),
        ("GET", "/v1/traffic", "admin"),
        ("PUT", "/v1/traffic/invert", "admin"),
        ("POST", "/v1/variants/invert", "admin"),
        ("DELETE", "/v1/variants/invert/b", "admin"),
        ("POST", "/v1/jobs", "jobs"),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v1/models", None),
        ("GET", "/docs", None),
        ("GET", "/v2/models/invert", None),
    ],
)
def test_route_groups(method, path, group):
    assert route_group(method, path) == group


def test_caller_keys():
    assert caller_key("svc", "10.0.0.1", "1.2.3.4", True) == "principal:svc"  # auth's identity first
    assert caller_key(None, "10.0.0.1", "1.2.3.4, 10.0.0.9", False) == "addr:10.0.0.1"  # not trusted
    assert caller_key(None, "10.0.0.1", " 1.2.3.4 , 10.0.0.9", True) == "addr:1.2.3.4"  # first hop
    assert caller_key(None, "10.0.0.1", None, True) == "addr:10.0.0.1"
    assert caller_key(None, None, None, False) == "addr:unknown"


def test_config_validation():
    families = {"invert": {"kind": "tests.families.invert:SPEC", "default": "a", "variants": {"a": {}}}}
    assert AppConfig.model_validate({"families": families}).rate_limits is None  # off by default
    config = AppConfig.model_validate({"families": families, "rate_limits": {"enabled": True, "groups": {"infer": {"rate_per_s": 1, "burst": 10}}}})
    assert config.rate_limits.groups["infer"] == RateGroup(rate_per_s=1, burst=10)
    assert AppConfig.model_validate(config.model_dump(mode="json")) == config  # what the Ingress receives
    for bad in (
        {"enabled": True, "groups": {}},  # on, but nothing limited
        {"enabled": True, "groups": {"infer": {"rate_per_s": 0, "burst": 10}}},
        {"enabled": True, "groups": {"infer": {"rate_per_s": 1, "burst": 0}}},
        {"enabled": True, "groups": {"upload": {"rate_per_s": 1, "burst": 1}}},  # no such group
        {"enabled": True, "groups": {"infer": {"rate_per_s": 1, "burst": 1, "window": 3}}},  # unknown field
        {"enabled": True, "groups": {"infer": {"rate_per_s": 1, "burst": 1}}, "max_callers": 0},
        {"enabled": True, "groups": {"infer": {"rate_per_s": 1, "burst": 1}}, "timeout_s": 0},
    ):
        with pytest.raises(ValidationError):
            RateLimitConfig.model_validate(bad)
    assert RateLimitConfig.model_validate({}).enabled is False


def test_the_429_in_both_error_forms():
    bucket = TokenBucket(1, 1, 0.0)
    bucket.take(0.0)
    headers = bucket.take(0.0).headers()
    api = FastAPI()
    install_error_handlers(api)

    @api.post("/v1/x")
    async def rest():
        raise RateLimited("over", headers)

    @api.post("/v2/models/x/infer")
    async def oip():
        raise RateLimited("over", headers)

    client = TestClient(api)
    response = client.post("/v1/x")
    assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"
    assert response.headers["retry-after"] == "1" and response.headers["ratelimit-remaining"] == "0"
    response = client.post("/v2/models/x/infer")
    assert response.status_code == 429 and response.json() == {"error": "over"}
    assert response.headers["ratelimit-limit"] == "1"
    assert error_response(RateLimited("over"), None).status_code == 429
    copy = pickle.loads(pickle.dumps(RateLimited("over", headers)))  # as Ray carries it across processes
    assert copy.message == "over" and copy.headers == headers
