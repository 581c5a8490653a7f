"""`pixelfleet up` as a user runs it: a real process, its own local Ray, SIGTERM to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


def test_up_serves_then_stops_on_sigterm():
    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
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


def test_up_exits_when_sigterm_reaches_ray_s_own_processes_too():
    """``timeout``, systemd and ``kill -- -PGID`` signal the whole process group: Ray's GCS and
    raylet stop with ``up``, and the Serve controller then never answers. ``up`` still exits,
    within its drain limits (serve/runner.py: SHUTDOWN_LIMIT_S), and the port closes."""
    from pixelfleet.serve.runner import SHUTDOWN_LIMIT_S

    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
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
        rest, _ = process.communicate(timeout=120)
    assert time.monotonic() - signalled < SHUTDOWN_LIMIT_S + 5, rest[-3000:]
    assert "shutting down" in rest
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_open(port), "the port stayed open after up exited"
