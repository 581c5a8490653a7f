"""Traces across the ingress -> replica seam, the merged /metrics text, and the Grafana dashboard.

The replica side runs here in a fresh ``contextvars`` context with the :class:`CallContext`
pickled and unpickled (as Ray sends it), so the only link between the two spans is the context
that crosses the handle call; the integration tests check the same link across real processes.
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import json
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pixelfleet.deployments import telemetry
from pixelfleet.deployments.spec import Result, VariantDeployment
from pixelfleet.models.errors import Unprocessable
from pixelfleet.serve import metrics as serve_metrics
from pixelfleet.serve.config import TracingConfig
from pixelfleet.serve.observability import merge_expositions, trace_export, traced

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pixelfleet.json"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


class Echo(VariantDeployment):
    """A family deployment as the contract has it (the plain class, without Serve)."""

    async def echo(self, image: bytes, params: dict, route: list) -> Result:
        with telemetry.span("decode"):
            pixels = image[::-1]
        with telemetry.span("inference"):
            await asyncio.sleep(0)
        with telemetry.span("encode"):
            return Result(pixels, "application/octet-stream")


class FakeIngress:
    """Stands in for ``Ingress`` where :func:`traced` reads it: ``config.tracing``; its ``infer``
    calls the replica side with the context, as ``Ingress.infer`` calls ``invoke``."""

    config = SimpleNamespace(tracing=TracingConfig())

    def __init__(self) -> None:
        self.replica = Echo()

    @traced
    async def infer(self, family_name: str, operation_name: str, image: bytes, params: dict) -> Result:
        telemetry.annotate(variant="v1")
        wire = pickle.dumps(telemetry.call_context(family_name, "v1", trace_export(self.config)))
        # the replica: another context (as another process), the CallContext its only link
        call = self.replica.invoke(operation_name, image, params, [], context=pickle.loads(wire))
        return await contextvars.Context().run(asyncio.ensure_future, call)


def by_name(exporter: InMemorySpanExporter) -> dict:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_replica_spans_are_children_of_the_ingress_span(spans):
    spans.clear()
    result = asyncio.run(FakeIngress().infer("fam", "echo", b"abc", {}))
    assert result.content == b"cba"
    found = by_name(spans)
    assert set(found) == {"pixelfleet.infer", "pixelfleet.fam.echo", "pixelfleet.decode", "pixelfleet.inference", "pixelfleet.encode"}
    root, replica = found["pixelfleet.infer"], found["pixelfleet.fam.echo"]
    assert root.parent is None
    assert replica.context.trace_id == root.context.trace_id
    assert replica.parent.span_id == root.context.span_id and replica.parent.is_remote
    for child in ("decode", "inference", "encode"):
        assert found[f"pixelfleet.{child}"].parent.span_id == replica.context.span_id
    assert root.attributes["pixelfleet.family"] == "fam" and root.attributes["pixelfleet.operation"] == "echo"
    assert root.attributes["pixelfleet.variant"] == "v1" and root.attributes["pixelfleet.status"] == 200
    assert replica.attributes["pixelfleet.variant"] == "v1" and replica.attributes["pixelfleet.method"] == "echo"


def test_an_error_is_recorded_on_the_request_span(spans):
    spans.clear()

    class Failing(FakeIngress):
        @traced
        async def infer(self, family_name: str, operation_name: str, image: bytes, params: dict) -> Result:
            raise Unprocessable("no")

    with pytest.raises(Unprocessable):
        asyncio.run(Failing().infer("fam", "echo", b"", {}))
    root = by_name(spans)["pixelfleet.infer"]
    assert root.attributes["pixelfleet.status"] == 422
    assert not root.status.is_ok


def test_invoke_refuses_private_methods():
    with pytest.raises(AttributeError):
        asyncio.run(Echo().invoke("_secret"))


def test_export_config():
    assert trace_export(SimpleNamespace(tracing=TracingConfig())) is None
    export = trace_export(SimpleNamespace(tracing=TracingConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces", service_name="pf")))
    assert export == telemetry.TraceExport("http://127.0.0.1:4318/v1/traces", "pf")


# ---- /metrics: several nodes' texts -> one exposition ----


def node_text(value: int) -> str:
    registry = CollectorRegistry()
    Counter("ray_pixelfleet_requests", "Requests.", ["family", "variant", "status"], registry=registry).labels("superres", "x4", "200").inc(value)
    Counter("process_cpu_seconds", "CPU.", registry=registry).inc(value)
    return generate_latest(registry).decode()


def test_merged_exposition_has_one_header_per_family_and_every_node():
    text = merge_expositions({"10.0.0.1:8080": node_text(2), "10.0.0.2:8080": node_text(3)}).decode()
    assert text.count("# TYPE ray_pixelfleet_requests_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = [s for s in families["ray_pixelfleet_requests"].samples if s.name.endswith("_total")]
    assert sorted((s.labels["node"], s.value) for s in samples) == [("10.0.0.1:8080", 2.0), ("10.0.0.2:8080", 3.0)]
    assert {s.labels["family"] for s in samples} == {"superres"}
    assert len([s for s in families["process_cpu_seconds"].samples if s.name.endswith("_total")]) == 2


# ---- the Grafana dashboard ----


def defined_metrics() -> dict[str, str]:
    """Metric name -> kind (Counter, Gauge, Histogram) of every ``metrics.<Kind>("name", ...)``
    call in the modules that record pixelfleet's series."""
    found = {}
    for module in (serve_metrics, telemetry):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("Counter", "Gauge", "Histogram"):
                first = node.args[0]
                assert isinstance(first, ast.Constant) and isinstance(first.value, str)
                found[first.value] = node.func.attr
    return found


def exported_names(defined: dict[str, str]) -> dict[str, str]:
    """Series name as Ray exports it (prefix ``ray_``; counters ``_total``; histograms
    ``_bucket``, ``_sum``, ``_count``) -> the defined metric."""
    suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
    return {f"ray_{name}{suffix}": name for name, kind in defined.items() for suffix in suffixes[kind]}


def expressions(dashboard: dict) -> list[str]:
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [var["query"]["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return exprs


def test_dashboard_queries_only_metrics_the_code_defines():
    dashboard = json.loads(DASHBOARD.read_text())
    defined = defined_metrics()
    assert {"pixelfleet_requests", "pixelfleet_batch_size", "pixelfleet_queue_length", "pixelfleet_model_load_seconds"} <= set(defined)
    exported = exported_names(defined)
    used = set()
    for expr in expressions(dashboard):
        names = {token for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if token.startswith(("ray_", "pixelfleet"))}
        assert names, f"no pixelfleet series in {expr!r}"
        unknown = names - set(exported)
        assert not unknown, f"{expr!r} names series the code does not define: {unknown}"
        used |= {exported[name] for name in names}
    assert used == set(defined), f"metrics without a panel: {set(defined) - used}"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
