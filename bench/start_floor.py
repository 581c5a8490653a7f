"""The floor under ``pixelfleet up``'s start to ready: a local Ray and Serve with trivial replicas.

In a fresh interpreter (as ``pixelfleet up`` starts), it times each step until an HTTP request
through Serve's proxy is answered:

- ``import ray, ray.serve``;
- ``ray.init()`` (GCS, raylet, the dashboard agent; no dashboard), as ``pixelfleet up`` calls it
  (with its setup hook that keeps pandas and pyarrow out, ``serve/skip_imports.py``);
- ``serve.start()`` (the controller and the HTTP proxy);
- the deploy of an application of ``--replicas`` deployments, each one replica that does
  nothing (num_cpus 0), until the proxy answers 200: what starting N replica processes costs
  here, without any model, before any import of pixelfleet's app. ``--deploy config`` (the
  default) submits it as a Serve config with an import path, as ``up`` does, so Serve's build
  task (a fresh worker that imports the app) is in it; ``--deploy python`` builds it in the
  driver and calls ``serve.run()``.

``pixelfleet up`` with ``local.yaml`` starts 3 replicas at ready (Ingress, which runs the job
worker too, ``superres-srresnet-x4``, ``ocr-tesseract``); compare ``--replicas 3`` with ``bench/memory.py``'s
start to ready.

    python bench/start_floor.py --replicas 3

Wrap it in ``flock /tmp/pixelfleet-heavy.lock`` on a shared machine. Prints one line per step.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP_MODULE = r"""
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Leaf:
    def __call__(self) -> str:
        return "ok"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Front:
    def __init__(self, *leaves):
        self.leaves = leaves

    async def __call__(self, request) -> str:
        return "ok"


def build(args: dict):
    return Front.bind(*[Leaf.options(name=f"leaf{i}").bind() for i in range(int(args["replicas"]) - 1)])
"""

CHILD = r"""
import json, logging, os, sys, time
t0 = time.monotonic()
from pixelfleet.serve.skip_imports import SETUP_HOOK, skip_unused_imports
skip_unused_imports()  # as `pixelfleet up` does, in its driver and (the hook) in its job's workers
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
import ray
from ray import serve
from ray.serve.schema import ServeDeploySchema
marks = {"import ray, ray.serve": time.monotonic() - t0}
replicas, port, folder, by_config = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "config"
sys.path.insert(0, folder)
t = time.monotonic()
ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, runtime_env={"worker_process_setup_hook": SETUP_HOOK})
marks["ray.init"] = time.monotonic() - t
t = time.monotonic()
from pixelfleet.ray_private import serve_start
client = serve_start({"host": "127.0.0.1", "port": port}, "HeadOnly")
marks["serve.start (controller, proxy)"] = time.monotonic() - t
t = time.monotonic()
if by_config:  # as `up` deploys: Serve's build task imports the app in a fresh worker, then the replicas start
    schema = ServeDeploySchema.model_validate({
        "http_options": {"host": "127.0.0.1", "port": port}, "proxy_location": "HeadOnly",
        "applications": [{"name": "floor", "route_prefix": "/", "import_path": "floor_app:build", "args": {"replicas": replicas},
                          "runtime_env": {"env_vars": {"PYTHONPATH": folder, "HF_HUB_OFFLINE": "1"}}}],
    })
    client.deploy_apps(schema, _blocking=False)
    while serve.status().applications.get("floor") is None or serve.status().applications["floor"].status != "RUNNING":
        time.sleep(0.05)
    marks[f"config deployed: build task, {replicas} trivial replicas running"] = time.monotonic() - t
else:
    import floor_app
    serve.run(floor_app.build({"replicas": replicas}), name="floor", route_prefix="/")
    marks[f"serve.run, {replicas} trivial replicas running"] = time.monotonic() - t
import urllib.request
t = time.monotonic()
while True:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200:
            break
    except OSError:
        time.sleep(0.05)
marks["first HTTP 200 through the proxy"] = time.monotonic() - t
marks["total (interpreter start excluded)"] = time.monotonic() - t0
print(json.dumps(marks))
serve.shutdown()
ray.shutdown()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3, help="trivial replicas of the app (one front + N-1 behind it)")
    parser.add_argument(
        "--deploy", choices=("config", "python"), default="config",
        help="config: submit a Serve config with an import path, as `up` does (Serve imports the app in a build task); "
        "python: serve.run() of the application built in the driver",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "floor_app.py").write_text(APP_MODULE)
        command = [sys.executable, "-c", CHILD, str(args.replicas), str(free_port()), folder, args.deploy]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(done.stdout[-3000:], done.stderr[-3000:])
        return 1
    for step, seconds in json.loads(lines[-1]).items():
        print(f"{seconds:6.1f} s  {step}")
    print(f"{wall:6.1f} s  wall, from the interpreter's start to its exit (shutdown included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
