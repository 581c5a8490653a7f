"""`pixelfleet traffic` and `pixelfleet variants` as an operator runs them: real processes
(``python -m pixelfleet.serve.cli ...``) against the session's running app, on the test-only
family ``invert`` (variants a, b, slow; tests/families/invert.py). Every test leaves invert's
traffic as the others expect it: weights {"a": 1.0}, no shadows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import synthetic_photo
from tests.integration.conftest import png_bytes

pytestmark = pytest.mark.integration

PNG = png_bytes(synthetic_photo(12, 16))
METRICS_DEADLINE_S = 240.0  # Ray exports a replica's metrics every few seconds; a loaded 2-core machine is slower


def cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich's tables at a width that keeps every cell whole
    return subprocess.run([sys.executable, "-m", "pixelfleet.serve.cli", *args], capture_output=True, text=True, timeout=timeout_s, env=env)


@pytest.fixture
def invert(client: httpx.Client) -> Iterator[None]:
    """Skips without the family ``invert`` in the session's config; restores its traffic after."""
    families = client.get("/v1/models").json()["families"]
    if "invert" not in families:
        pytest.skip(f"the session's app serves no family 'invert' (tests/families/invert.py); it serves {sorted(families)}")
    yield
    restored = client.put("/v1/traffic/invert", json={"weights": {"a": 1.0}, "shadow": {}})
    assert restored.status_code == 200, restored.text


def test_traffic_show_lists_every_family(app_url, invert):
    shown = cli("traffic", "show", "--url", app_url)
    assert shown.returncode == 0, shown.stderr
    for text in ("invert (default a)", "superres", "slow", "share %"):
        assert text in shown.stdout


def test_traffic_set_changes_the_weights_and_shadows(app_url, client, invert):
    changed = cli("traffic", "set", "invert", "a=3", "b=1", "--shadow", "slow=0.5", "--url", app_url)
    assert changed.returncode == 0, changed.stderr
    assert "75.0" in changed.stdout and "25.0" in changed.stdout
    traffic = client.get("/v1/traffic").json()["families"]["invert"]
    assert traffic["weights"] == {"a": 3.0, "b": 1.0} and traffic["shadow"] == {"slow": 0.5}
    assert cli("traffic", "set", "invert", "--clear-shadow", "--url", app_url).returncode == 0
    assert client.get("/v1/traffic").json()["families"]["invert"]["shadow"] == {}


def test_an_unknown_variant_is_refused_with_the_servers_message(app_url, client, invert):
    before = client.get("/v1/traffic").json()["families"]["invert"]
    refused = cli("traffic", "set", "invert", "nope=1", "--url", app_url)
    assert refused.returncode == 1
    assert "error 422" in refused.stderr and "unknown variant 'nope'" in refused.stderr
    assert client.get("/v1/traffic").json()["families"]["invert"] == before
    assert cli("traffic", "set", "invert", "a=x", "--url", app_url).returncode == 2


def test_variants_add_list_and_remove(app_url, client, invert):
    added = cli("variants", "add", "invert", "cli", "--set", "mode=identity", "--num-cpus", "0", "--url", app_url)
    try:
        assert added.returncode == 0, added.stderr
        assert "added invert/cli" in added.stdout
        listed = cli("variants", "list", "invert", "--url", app_url)
        assert listed.returncode == 0, listed.stderr
        assert "cli" in listed.stdout and "mode=identity" in listed.stdout
        refused = cli("variants", "add", "invert", "bad", "--weights", "/nowhere", "--url", app_url)
        assert refused.returncode == 1 and "error 422" in refused.stderr  # invert's variants load no weights
    finally:
        removed = cli("variants", "remove", "invert", "cli", "--url", app_url)
    assert removed.returncode == 0, removed.stderr
    assert "cli" not in client.get("/v1/traffic").json()["families"]["invert"]["variants"]


def metrics_source(client: httpx.Client) -> list[str]:
    """``[]`` (the app's own ``GET /metrics``), else ``--metrics-url`` of this node's Ray metrics
    agent (``ray.nodes()``' MetricsExportPort), which exports the same series."""
    if client.get("/metrics").status_code != 404:
        return []
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return ["--metrics-url", f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"]


def test_traffic_report_compares_the_variants_from_the_metrics(app_url, client, invert):
    source = metrics_source(client)
    assert cli("traffic", "set", "invert", "a=1", "b=1", "--url", app_url).returncode == 0
    for i in range(200):
        response = client.post("/v1/invert", content=PNG, headers={"Content-Type": "image/png", "X-Client-Id": f"report-{i}"})
        assert response.status_code == 200, response.text
    deadline, report = time.monotonic() + METRICS_DEADLINE_S, None
    while time.monotonic() < deadline:  # until Ray has exported both arms' counts
        run = cli("traffic", "report", "invert", "--json", "--url", app_url, *source)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        counts = {row["variant"]: row["requests"] for row in report["variants"]}
        if counts.get("a", 0) > 0 and counts.get("b", 0) > 0:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the report never counted requests to both a and b: {report}")
    assert report["control"] == "a"  # a tie: the family's default
    b = next(row for row in report["variants"] if row["variant"] == "b")
    assert b["vs_control"]["error_p_value"] is not None and b["vs_control"]["verdict"]
    assert b["latency_s"]["p50"] is not None
    table = cli("traffic", "report", "invert", "--url", app_url, *source)
    assert table.returncode == 0, table.stderr
    assert "b vs a:" in table.stdout and "slow vs a:" in table.stdout
