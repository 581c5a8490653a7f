"""`pixelfleet traffic` and `pixelfleet variants` without Ray: argument parsing, and the commands
against a stand-in for the app's admin routes (httpx.MockTransport answering as serve/rest.py
does; the real app is in tests/integration/test_cli_admin.py)."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from typer.testing import CliRunner

from pixelfleet.serve import admin_client
from pixelfleet.serve.admin_client import AdminClient, AdminError, parse_number_assignments, parse_settings, variant_request
from pixelfleet.serve.cli import app

runner = CliRunner()


def test_variant_weights_parse():
    assert parse_number_assignments(["a=1", " b = 0.25", "c=0"]) == {"a": 1.0, "b": 0.25, "c": 0.0}
    for bad in (["a"], ["=1"], ["a=x"], ["a=1", "a=2"], ["a=nan"], ["a=inf"]):
        with pytest.raises(ValueError):
            parse_number_assignments(bad)


def test_variant_settings_parse_as_yaml_and_make_the_request_body():
    settings = parse_settings(["tile_size=128", "ensemble=true", "backend=onnx"])
    assert settings == {"tile_size": 128, "ensemble": True, "backend": "onnx"}
    with pytest.raises(ValueError):
        parse_settings(["tile_size"])
    body = variant_request("x4-big", "builtin:srresnet-x4", settings, num_cpus=1, num_gpus=None, replicas=2)
    assert body == {
        "name": "x4-big",
        "config": {"tile_size": 128, "ensemble": True, "backend": "onnx", "weights": "builtin:srresnet-x4"},
        "deployment": {"ray_actor_options": {"num_cpus": 1}, "num_replicas": 2},
    }
    assert variant_request("v", None, {"mode": "identity"}, None, None, None) == {"name": "v", "config": {"mode": "identity"}, "deployment": {}}


@pytest.mark.parametrize(
    "args",
    [
        ["traffic", "set", "invert", "a"],  # no =
        ["traffic", "set", "invert", "a=heavy"],  # not a number
        ["traffic", "set", "invert"],  # nothing to change
        ["traffic", "set", "invert", "a=1", "--shadow", "slow"],
        ["traffic", "set", "invert", "--shadow", "b=0.1", "--clear-shadow"],
        ["variants", "add", "invert", "c", "--weights", "w", "--set", "mode"],
        ["variants", "add", "invert", "c", "--weights", "w", "--replicas", "0"],
    ],
)
def test_bad_arguments_exit_2_before_any_request(args, monkeypatch):
    def no_request(*_, **__):
        raise AssertionError("no request may be sent for bad arguments")

    monkeypatch.setattr(admin_client.AdminClient, "_call", no_request)
    result = runner.invoke(app, [*args, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output


def test_an_unreachable_app_exits_1():
    result = runner.invoke(app, ["traffic", "show", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9" in result.output


class FakeApp:
    """The admin routes of one family ``invert`` (variants a, b, slow) as serve/rest.py answers them."""

    def __init__(self) -> None:
        self.traffic = {"weights": {"a": 1.0}, "shadow": {}, "default": "a", "variants": ["a", "b", "slow"]}
        self.registry = CollectorRegistry()
        requests = Counter("ray_pixelfleet_requests", "r", ["family", "variant", "operation", "status"], registry=self.registry)
        requests.labels("invert", "a", "invert", "200").inc(120)
        requests.labels("invert", "b", "invert", "200").inc(80)
        self.sent: list[tuple[str, str, dict | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        route = (request.method, request.url.path)
        if route == ("GET", "/v1/traffic"):
            return httpx.Response(200, json={"revision": 3, "families": {"invert": self.traffic}})
        if route == ("PUT", "/v1/traffic/invert"):
            unknown = sorted(set(body.get("weights", {})) - set(self.traffic["variants"]))
            if unknown:
                error = {"code": "unprocessable", "message": f"unknown variants {unknown}", "request_id": "r1"}
                return httpx.Response(422, json={"error": error})
            self.traffic = {**self.traffic, **body}
            return httpx.Response(200, json=self.traffic)
        if route == ("GET", "/metrics"):
            return httpx.Response(200, text=generate_latest(self.registry).decode())
        if route == ("POST", "/v1/variants/invert"):
            self.traffic["weights"][body["name"]] = 0.0
            return httpx.Response(201, json={"family": "invert", "variant": body["name"], "app": "pixelfleet-invert-c", "traffic": self.traffic})
        error = {"code": "not_found", "message": f"no route {request.method} {request.url.path}", "request_id": "r2"}
        return httpx.Response(404, json={"error": error})


@pytest.fixture
def fake_app(monkeypatch) -> FakeApp:
    fake = FakeApp()
    original = AdminClient.__init__

    def with_fake(self, url: str = admin_client.DEFAULT_URL, timeout_s: float = 30.0, transport=None) -> None:
        original(self, url, timeout_s, transport=httpx.MockTransport(fake))

    monkeypatch.setattr(AdminClient, "__init__", with_fake)
    return fake


def test_show_set_and_a_422(fake_app):
    shown = runner.invoke(app, ["traffic", "show"])
    assert shown.exit_code == 0, shown.output
    assert "invert" in shown.output and "slow" in shown.output and "100.0" in shown.output

    changed = runner.invoke(app, ["traffic", "set", "invert", "a=3", "b=1", "--shadow", "slow=0.5"])
    assert changed.exit_code == 0, changed.output
    assert fake_app.sent[-1] == ("PUT", "/v1/traffic/invert", {"weights": {"a": 3.0, "b": 1.0}, "shadow": {"slow": 0.5}})
    assert "75.0" in changed.output and "25.0" in changed.output and "0.5" in changed.output

    refused = runner.invoke(app, ["traffic", "set", "invert", "nope=1"])
    assert refused.exit_code == 1
    assert "error 422 (unprocessable): unknown variants ['nope']" in refused.output


def test_report_json_and_table(fake_app):
    fake_app.traffic["weights"] = {"a": 0.6, "b": 0.4}
    result = runner.invoke(app, ["traffic", "report", "invert", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["control"] == "a"
    assert {row["variant"]: row["requests"] for row in report["variants"]} == {"a": 120, "b": 80, "slow": 0}
    table = runner.invoke(app, ["traffic", "report", "invert"])
    assert table.exit_code == 0, table.output
    assert "b vs a: not enough data: 80 requests per arm" in table.output and "slow vs a: no data" in table.output
    unknown = runner.invoke(app, ["traffic", "report", "nope"])
    assert unknown.exit_code == 1 and "unknown family 'nope'" in unknown.output


def test_variants_add_posts_the_config(fake_app):
    result = runner.invoke(app, ["variants", "add", "invert", "c", "--weights", "none", "--set", "mode=identity", "--num-cpus", "0"])
    assert result.exit_code == 0, result.output
    assert fake_app.sent[-1] == (
        "POST", "/v1/variants/invert",
        {"name": "c", "config": {"mode": "identity", "weights": "none"}, "deployment": {"ray_actor_options": {"num_cpus": 0.0}}},
    )  # fmt: skip
    assert "added invert/c" in result.output


def test_admin_error_keeps_the_message():
    client = AdminClient("http://app", transport=httpx.MockTransport(lambda r: httpx.Response(503, text="upstream down")))
    with pytest.raises(AdminError) as err:
        client.traffic()
    assert err.value.status == 503 and err.value.message == "upstream down"


def test_the_credential_in_the_environment_goes_as_a_bearer_token(monkeypatch):
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"revision": 0, "families": {}})

    monkeypatch.setenv(admin_client.CREDENTIAL_ENV, "k3y-for-admin-routes")
    AdminClient("http://app", transport=httpx.MockTransport(answer)).traffic()
    monkeypatch.delenv(admin_client.CREDENTIAL_ENV)
    AdminClient("http://app", transport=httpx.MockTransport(answer)).traffic()
    assert seen == ["Bearer k3y-for-admin-routes", None]
