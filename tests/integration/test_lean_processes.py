"""The session app's processes run without pandas and pyarrow (``serve/skip_imports.py``, the
setup hook that ``start_local`` gives the job, as ``pixelfleet up`` does): the Serve controller,
the HTTP proxy and every replica, checked in the libraries each process has mapped after it
has answered a request."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import synthetic_photo
from tests.integration.conftest import APP_NAME, png_bytes

pytestmark = pytest.mark.integration

UNUSED = ("/pandas/", "/pyarrow/")
SERVE_TITLES = ("ray::ServeController", "ray::ProxyActor", f"ray::ServeReplica:{APP_NAME}:")


def mapped(pid: int) -> set[str]:
    """The files that process ``pid`` has mapped (``/proc/PID/maps``)."""
    return {line.split(maxsplit=5)[5].strip() for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if len(line.split()) == 6}


def parent(pid: int) -> int:
    """The parent of process ``pid`` (``/proc/PID/stat``); 0 when it has ended."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0


def serve_processes() -> dict[str, int]:
    """``{title: pid}`` of the Serve controller, the proxy and the replicas of this session's
    Ray: the workers of the raylet that this process started (``ray::ServeController``,
    ``ray::ProxyActor``, ``ray::ServeReplica:APP:DEPLOYMENT``; a training run's workers have
    other titles)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if title.startswith(SERVE_TITLES) and parent(parent(int(entry.name))) == os.getpid():
            found[f"{title.split()[0].split('.')[0]} {entry.name}"] = int(entry.name)  # ServeController.listen_for_change
    return found


def test_serve_s_processes_hold_neither_pandas_nor_pyarrow(client: httpx.Client):
    answer = client.post("/v1/superres", content=png_bytes(synthetic_photo(24, 24)), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    processes = serve_processes()
    titles = {name.split()[0] for name in processes}
    expected = {"ray::ServeController", "ray::ProxyActor", f"ray::ServeReplica:{APP_NAME}:Ingress", f"ray::ServeReplica:{APP_NAME}:superres-srresnet-x4"}
    assert expected <= titles, titles
    holding = {name: sorted(f for f in mapped(pid) if any(part in f for part in UNUSED))[:2] for name, pid in processes.items()}
    assert not {name: files for name, files in holding.items() if files}, holding
