"""The running app's telemetry: ``GET /metrics``, request ids in headers and replica logs, and
spans exported over OTLP/HTTP with the replica spans linked to the ingress span.

Ray exports metrics every few seconds and the span exporters send in batches, so every check
polls with a deadline; nothing here asserts on speed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import png_bytes
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0
T = TypeVar("T")
SR_VARIANT = "srresnet-x4"


def poll(check: Callable[[], T | None], what: str, deadline_s: float = DEADLINE_S) -> T:
    """``check()`` until it answers something truthy; fails with ``what`` after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {deadline_s:.0f} s")
        time.sleep(1.0)


def small_png() -> bytes:
    rng = np.random.default_rng(7)
    return png_bytes(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))


def upscale(client, request_id: str | None = None):
    headers = {"Content-Type": "image/png", **({"X-Request-Id": request_id} if request_id else {})}
    response = client.post("/v1/superres", params={"model": SR_VARIANT}, content=small_png(), headers=headers)
    assert response.status_code == 200, response.text
    return response


def scrape(client) -> dict[str, list]:
    """``GET /metrics`` parsed: metric family name -> its samples."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def total(samples: dict[str, list], metric: str, sample_name: str, **labels: str) -> float:
    """The sum of ``metric``'s samples called ``sample_name`` with ``labels`` (0 if none)."""
    return sum(s.value for s in samples.get(metric, []) if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_endpoint_counts_requests_per_family_and_variant(client):
    tags = {"family": "superres", "variant": SR_VARIANT}
    before = scrape(client)
    requests_before = total(before, "ray_pixelfleet_requests", "ray_pixelfleet_requests_total", status="200", operation="upscale", **tags)
    latency_before = total(before, "ray_pixelfleet_request_latency_seconds", "ray_pixelfleet_request_latency_seconds_count", **tags)
    batches_before = total(before, "ray_pixelfleet_batch_size", "ray_pixelfleet_batch_size_count", **tags)
    sent = 3
    for _ in range(sent):
        upscale(client)

    def counted():
        now = scrape(client)
        done = (
            total(now, "ray_pixelfleet_requests", "ray_pixelfleet_requests_total", status="200", operation="upscale", **tags) >= requests_before + sent
            and total(now, "ray_pixelfleet_request_latency_seconds", "ray_pixelfleet_request_latency_seconds_count", **tags) >= latency_before + sent
            and total(now, "ray_pixelfleet_batch_size", "ray_pixelfleet_batch_size_count", **tags) >= batches_before + sent
        )
        return now if done else None

    now = poll(counted, "the requests counted in ray_pixelfleet_requests_total, the latency and batch-size histograms")
    loads = {(s.labels["family"], s.labels["variant"]): s.value for s in now["ray_pixelfleet_model_load_seconds"]}
    assert loads[("superres", SR_VARIANT)] > 0 and loads[("ocr", "tesseract")] > 0
    queue = [s for s in now["ray_pixelfleet_queue_length"] if s.labels["family"] == "superres" and s.labels["variant"] == SR_VARIANT]
    assert queue and all(s.value >= 0 for s in queue)
    # Ray's own tags come along (other tests may run apps beside "pixelfleet" in the session)
    assert all("application" in s.labels for s in now["ray_pixelfleet_requests"])
    assert any(s.labels["application"] == "pixelfleet" for s in now["ray_pixelfleet_requests"])


def test_request_id_in_the_response_and_the_replica_logs(client):
    request_id = f"abc123-{uuid.uuid4().hex[:8]}"
    response = upscale(client, request_id)
    assert response.headers["x-request-id"] == request_id
    made = upscale(client).headers.get_list("x-request-id")  # made when not given, sent once
    assert len(made) == 1 and made[0]
    error = client.post("/v1/superres", content=b"not an image", headers={"Content-Type": "image/png", "X-Request-Id": request_id})
    assert error.status_code >= 400 and error.headers.get_list("x-request-id") == [request_id]
    assert error.json()["error"]["request_id"] == request_id

    import ray

    serve_logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"  # this session's logs

    def logged_in() -> set[str] | None:
        files = {p.name.split("_")[2] for p in serve_logs.glob("replica_pixelfleet_*.log") if request_id in p.read_text(errors="replace")}
        return files if {"Ingress", f"superres-{SR_VARIANT}"} <= files else None

    poll(logged_in, f"{request_id} in the ingress's and the variant's replica logs under {serve_logs}")


def test_spans_are_exported_and_linked_across_the_handle_call(client, otlp_receiver: OtlpReceiver):
    request_id = f"trace-{uuid.uuid4().hex[:8]}"
    upscale(client, request_id)

    def spans_of_request() -> dict[str, ReceivedSpan] | None:
        spans = otlp_receiver.snapshot()
        root = next((s for s in spans if s.name == "pixelfleet.infer" and s.attributes.get("pixelfleet.request_id") == request_id), None)
        if root is None:
            return None
        in_trace = [s for s in spans if s.trace_id == root.trace_id]
        replica = next((s for s in in_trace if s.name == "pixelfleet.superres.upscale"), None)
        if replica is None:
            return None
        found = {"root": root, "replica": replica, **{s.name: s for s in in_trace if s.parent_span_id == replica.span_id}}
        return found if {"pixelfleet.decode", "pixelfleet.inference", "pixelfleet.encode"} <= set(found) else None

    found = poll(spans_of_request, f"the spans of request {request_id} at the OTLP receiver")
    root, replica = found["root"], found["replica"]
    assert root.parent_span_id == ""
    assert replica.parent_span_id == root.span_id
    assert root.attributes["pixelfleet.family"] == "superres" and root.attributes["pixelfleet.variant"] == SR_VARIANT
    assert root.attributes["pixelfleet.operation"] == "upscale" and root.attributes["pixelfleet.status"] == 200
    assert replica.attributes["pixelfleet.request_id"] == request_id
    assert root.service == replica.service == "pixelfleet"
