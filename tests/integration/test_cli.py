"""`pixelfleet up` as a user runs it: a real process, its own local Ray, SIGTERM to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import _free_port

pytestmark = pytest.mark.integration


def wait_for_line(process: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; output:\n{''.join(lines)[-4000:]}")


def up_env(tmp_path: Path) -> dict[str, str]:
    """``up``'s environment: a Ray of its own, announced in ``tmp_path`` (not the user's file)."""
    return {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", "PIXELFLEET_CLUSTER_FILE": str(tmp_path / "cluster.json")}


def test_up_serves_then_stops_on_sigterm(tmp_path: Path):
    port = _free_port()
    env = up_env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        output = "".join(wait_for_line(process, "Press Ctrl-C to stop", timeout_s=300))
        assert f"pixelfleet is serving at http://127.0.0.1:{port}" in output
        assert "superres/srresnet-x4 (default): scale 4" in output and "ocr/tesseract (default)" in output
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).status_code == 200

        status = subprocess.run([sys.executable, "-m", "pixelfleet.serve.cli", "status"], capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
        assert "pixelfleet: RUNNING" in status.stdout and "superres-srresnet-x4: HEALTHY" in status.stdout
        driver_libraries = Path(f"/proc/{process.pid}/maps").read_text()
        assert "/pandas/" not in driver_libraries and "/pyarrow/" not in driver_libraries  # serve/skip_imports.py
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    assert process.returncode == 0, rest[-3000:]
    assert "shutting down" in rest


def port_open(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        return True
    except httpx.TransportError:
        return False


def test_up_stops_cleanly_on_sigterm_while_the_app_deploys(tmp_path: Path):
    """A SIGTERM after Ray started but before the app is ready (Serve's proxy answers, the
    replicas still load) stops ``up`` through its own shutdown (code 0), not through the handler
    ``ray.init`` installs, which aborts the process (``*** SIGTERM received``)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=up_env(tmp_path), start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not port_open(port) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the proxy answers (404) seconds before the replicas are ready
        assert process.poll() is None and port_open(port), "up exited, or its port did not open"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # leave no Ray behind on the machine
            raise
    assert "pixelfleet is serving" not in rest, "the app was ready before the SIGTERM: nothing tested"
    assert process.returncode == 0 and "shutting down" in rest, rest[-3000:]
    assert "SIGTERM received" not in rest, rest[-3000:]
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_open(port), "the port stayed open after up exited"


def test_up_exits_when_sigterm_reaches_ray_s_own_processes_too(tmp_path: Path):
    """``timeout``, systemd and ``kill -- -PGID`` signal the whole process group: Ray's GCS and
    raylet stop with ``up``, and the Serve controller then never answers. ``up`` still exits
    cleanly (code 0, not by its last-resort timer: serve/runner.py, SHUTDOWN_LIMIT_S) within its
    drain limit and Ray's shutdown, and the port closes."""
    port = _free_port()
    env = up_env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_line(process, "Press Ctrl-C to stop", timeout_s=300)
        assert port_open(port)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        try:
            rest, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # leave no Ray behind on the machine
            raise
    stopped_s = time.monotonic() - signalled
    assert process.returncode == 0 and "shutting down" in rest, rest[-3000:]
    assert stopped_s < 30, (stopped_s, rest[-3000:])
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_open(port), "the port stayed open after up exited"
