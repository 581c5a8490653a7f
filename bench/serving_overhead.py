"""What pixelfleet's serving path costs per request, against a plain FastAPI + uvicorn server.

Both servers run the same super-resolution pipeline: the replica class of the default variant
(``SuperResolution``: decode, tiles through its ``@serve.batch`` method, encode) with the settings
of that variant in ``--config`` (tile size, batch size and wait, threads, precision, PNG level).
The plain server is one uvicorn process holding that class (``--serve-plain``); pixelfleet is
``pixelfleet up --config CONFIG`` as a user starts it (HTTP proxy -> Ingress replica -> variant
replica, in Ray). Each gets the same 128x128 crops of real photos as PNG (``POST /v1/superres``,
PNG 512x512 back) at 1 and at 8 concurrent requests, after a warm-up, and the bench prints for
each: requests per second, p50 and p99 in ms, and the server's CPU seconds per request (user +
system of the server process and every process below it, from psutil, over the measured window),
with pixelfleet's ratios to the plain server measured in the same run.

``--arm NAME:KEY=VALUE,KEY=VALUE`` (repeatable) runs ``pixelfleet up`` once more with those
environment variables (and so the local Ray it starts; ``CONFIG=path`` takes another Serve config):
an A/B probe of Ray's knobs in one run. In a value, ``{port}`` and ``{port+1}`` stand for the port the
arm's server gets (e.g. to pin Serve's direct ingress to it:
``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT={port},RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT={port+1}``),
and ``{port2}`` for a second free port; ``LOAD_PORT=PORT`` sends the requests to that port instead
of ``up``'s (readiness is still polled on ``up``'s): Ray 2.60 starts its HTTP proxy on ``up``'s
port even with direct ingress, so the Ingress replica's own server needs another one.
Before the load, one request must come back 200 as a PNG of 4x the crop's size, and the bench
names the process that listens on the port (stderr). ``--logs DIR`` keeps each server's console
output (``DIR/NAME.log``: ``pixelfleet up``'s banner, its drain line); after the load each server gets
SIGTERM (its own shutdown: ``up`` drains, then stops Serve) and the bench prints how long it took
to exit. Also printed: the server's CPU while idle (ms per second,
after the warm-up), which the per-request figures do not include.

    python bench/serving_overhead.py --images ../shared/datasets/sr/val/bsd200
    python bench/serving_overhead.py --images ../shared/datasets/sr/val/bsd200 \
        --arm inline:RAY_max_direct_call_object_size=16777216

Wrap it in ``flock /tmp/pixelfleet-heavy.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml
from fastapi import FastAPI, Request, Response  # module level: FastAPI resolves the endpoint's annotations here
from PIL import Image
from serving import tree_cpu_s as cpu_seconds  # bench/ is on sys.path: this runs as a script from there
from superres_batching import crops as png_crops

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_variant(config: Path) -> tuple[str, dict]:
    """The superres family's default variant in a Serve config file: its name and its block."""
    app = yaml.safe_load(config.read_text())["applications"][0]
    family = app["args"]["families"]["superres"]
    return family["default"], family["variants"][family["default"]]


# ---- the plain server: one uvicorn process, the replica class in it ----


def serve_plain(config: Path, port: int) -> None:
    """Run the plain FastAPI server on ``port`` until killed."""
    import uvicorn

    from pixelfleet.deployments.spec import VariantAddress
    from pixelfleet.deployments.superres.deployment import SuperResolution
    from pixelfleet.ray_private import allow_batching_outside_serve

    allow_batching_outside_serve()
    name, block = default_variant(config)
    replica = SuperResolution.func_or_class(variant=name, **block)
    route = [VariantAddress("superres", name, "plain", f"superres-{name}")]
    api = FastAPI()

    @api.post("/v1/superres")
    async def upscale(request: Request) -> Response:
        result = await replica.upscale(await request.body(), {}, route)
        return Response(result.content, media_type=result.media_type)

    @api.get("/readyz")
    async def readyz() -> dict:
        return {"ready": True}

    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning")


# ---- the load ----


async def load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Seconds for all ``bodies`` at ``concurrency`` in flight, and each request's latency; every answer must be 200."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(body: bytes) -> None:
            async with gate:
                started = time.perf_counter()
                response = await client.post(f"{url}/v1/superres", content=body, headers={"Content-Type": "image/png"})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - started, latencies


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready in {timeout_s} s")


def listener(port: int) -> str:
    """The command line of the process that listens on ``port`` (127.0.0.1 or any address)."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return " ".join(psutil.Process(conn.pid).cmdline())[:80]
    return "unknown"


def check_answer(url: str, body: bytes) -> None:
    """One request: 200 and a PNG of 4x the input's size, or RuntimeError."""
    response = httpx.post(f"{url}/v1/superres", content=body, headers={"Content-Type": "image/png"}, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
    with Image.open(io.BytesIO(body)) as sent, Image.open(io.BytesIO(response.content)) as got:
        if got.format != "PNG" or got.size != (4 * sent.width, 4 * sent.height):
            raise RuntimeError(f"got {got.format} {got.size} for {sent.size}")


def measure(
    name: str, command: list[str], port: int, env: dict[str, str], bodies: list[bytes], warmup: int, log: Path | None = None,
    load_port: int | None = None,
) -> dict[int, dict]:
    """Start a server, warm it up, load it at each level (on ``load_port`` if given);
    ``{concurrency: {rate, p50, p99, cpu}}``."""
    url = f"http://127.0.0.1:{port}"
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    rows = {}
    try:
        ready = wait_ready(url, process, 180)
        if load_port:
            url, port = f"http://127.0.0.1:{load_port}", load_port
            wait_ready(url, process, 60)
        check_answer(url, bodies[0])
        print(f"{name}: ready in {ready:.1f} s; 200 PNG 4x; port {port} served by: {listener(port)}", file=sys.stderr, flush=True)
        asyncio.run(load(url, bodies[:warmup], 1))
        asyncio.run(load(url, bodies[:warmup], 8))
        root = psutil.Process(process.pid)
        time.sleep(1.0)
        cpu_before = cpu_seconds(root)
        time.sleep(4.0)
        idle = (cpu_seconds(root) - cpu_before) / 4.0 * 1000
        for concurrency in LEVELS:
            time.sleep(1.0)  # let the warm-up's tail settle
            cpu_before = cpu_seconds(root)
            seconds, latencies = asyncio.run(load(url, bodies, concurrency))
            cpu = cpu_seconds(root) - cpu_before
            latencies.sort()
            rows[concurrency] = {
                "rate": len(bodies) / seconds,
                "p50": statistics.median(latencies) * 1000,
                "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
                "cpu": cpu / len(bodies) * 1000,
                "idle": idle,
            }
            print(f"{name} {concurrency}: {rows[concurrency]}", file=sys.stderr, flush=True)
    finally:
        process.send_signal(signal.SIGTERM)  # the server's own shutdown (pixelfleet up: drain, then Serve stops)
        stopping = time.monotonic()
        try:
            process.wait(90)
            print(f"{name}: exited {time.monotonic() - stopping:.1f} s after SIGTERM", file=sys.stderr, flush=True)
        except subprocess.TimeoutExpired:
            print(f"{name}: still running 90 s after SIGTERM", file=sys.stderr, flush=True)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its process group is left
        except ProcessLookupError:
            pass
        process.wait()
        if log:
            output.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "serve" / "configs" / "local.yaml")
    parser.add_argument("--images", type=Path, help="folder of PNG photos (128x128 centre crops are sent)")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=8, help="requests before measuring, at 1 and at 8 concurrent")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME:KEY=VALUE,...", help="one more pixelfleet run with this environment (repeatable)")
    parser.add_argument("--logs", type=Path, help="folder for each server's console output (NAME.log)")
    parser.add_argument("--only", choices=("plain", "pixelfleet"), help="run the plain server only, or pixelfleet (and its arms) only")
    parser.add_argument("--serve-plain", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the plain server's own process
    args = parser.parse_args(argv)
    if args.serve_plain:
        serve_plain(args.config, args.serve_plain)
        return 0
    if args.images is None:
        parser.error("--images is required")
    bodies = png_crops(args.images, args.requests)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    log = (lambda name: args.logs / f"{name.replace(' ', '_')}.log") if args.logs else (lambda name: None)
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results: dict[str, dict[int, dict]] = {}
    if args.only in (None, "plain"):
        port = free_port()
        command = [sys.executable, __file__, "--config", str(args.config), "--serve-plain", str(port)]
        results["plain"] = measure("plain", command, port, base_env, bodies, args.warmup, log("plain"))
    arms = {"pixelfleet": {}} if args.only in (None, "pixelfleet") else {}
    for arm in args.arm if args.only in (None, "pixelfleet") else []:
        name, _, pairs = arm.partition(":")
        arms[f"pixelfleet {name}"] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    for name, extra in arms.items():
        port, config = free_port(), extra.pop("CONFIG", str(args.config))
        command = [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--config", config, "--port", str(port)]
        port2 = free_port()
        env = {k: v.replace("{port}", str(port)).replace("{port+1}", str(port + 1)).replace("{port2}", str(port2)) for k, v in extra.items()}
        load_port = int(env.pop("LOAD_PORT")) if "LOAD_PORT" in env else None
        try:
            results[name] = measure(name, command, port, {**base_env, **env}, bodies, args.warmup, log(name), load_port)
        except (RuntimeError, TimeoutError, httpx.HTTPError) as err:  # an arm that does not serve: say so, go on
            print(f"{name}: FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        extra["CONFIG"] = config
    print(f"config: {args.config}; {args.requests} requests per level")
    for name, extra in arms.items():
        print(f"- {name}: {', '.join(f'{k}={v}' for k, v in extra.items() if k != 'CONFIG') or 'defaults'}; config {extra['CONFIG']}")
    print("| server | concurrent | req/s | p50 ms | p99 ms | server CPU ms/request | idle CPU ms/s | req/s vs plain | p50 - plain p50, ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        for concurrency, row in rows.items():
            plain = results.get("plain", {}).get(concurrency)
            ratio = f"{row['rate'] / plain['rate']:.2f}" if plain else "-"
            added = f"{row['p50'] - plain['p50']:+.0f}" if plain else "-"
            print(f"| {name} | {concurrency} | {row['rate']:.2f} | {row['p50']:.0f} | {row['p99']:.0f} | {row['cpu']:.0f} | {row['idle']:.0f} | {ratio} | {added} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
