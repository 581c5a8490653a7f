"""Serving end to end: the same pipeline in-process, behind plain FastAPI, bare Ray Serve, BentoML and pixelfleet.

One command runs, one server after the other, on the same real images:

- **in-process**: the replica's own classes without any server (``bench/serving_pipeline.py``:
  the ``Upscaler`` of ``deployments/superres`` and the Tesseract engine of ``deployments/ocr``,
  decode + model + PNG encode with the replica's codec settings), with 1 and with 2 workers
  (SR: one model call at a time on 2 torch threads, or two at once on 1 thread each; OCR: 1 or 2
  Tesseract engines); "best" is the faster of the two;
- **plain**: a single-process FastAPI + uvicorn server running that pipeline per request
  (``bench/plain_server.py``);
- **serve**: the same pipeline in a bare Ray Serve app of pixelfleet's graph (Serve's proxy -> a
  FastAPI ingress deployment -> one handle call -> the family's replica; ``bench/bare_serve.py``),
  started and deployed from a config as ``up`` does, with none of pixelfleet's serving code: what
  Ray Serve's two extra processes per request, and its start, cost on this machine for this
  pipeline (the goals table shows each goal's figure for it too, and whether it meets the goal);
- **bentoml**: the same pipeline as a BentoML service (``bench/bento_service.py``), in the bench's
  own virtualenv ``.venv-bentoml`` (at the repository root, outside the folders the tests scan)
  that this script makes on first use (``bentoml`` and this package, ``--constraint
  constraints.txt``); if it cannot be installed or started, the bench says why and goes on;
- **pixelfleet**: ``python -m pixelfleet.serve.cli up --port P`` with the default config
  (``serve/configs/local.yaml``: ``srresnet-x4`` and ``tesseract`` serve by default), as a new
  user starts it.

Workloads (requests are raw image bodies, ``Content-Type: image/png``):

- ``sr``: 20 photos of ``datasets/sr/val/bsd200``, centre-cropped square and resized to 128x128,
  upscaled x4 to 512x512, PNG out;
- ``ocr``: one real line scan of ``datasets/ocr/lines`` (``--ocr-image``);
- ``big``: one photo resized to 512x512, upscaled to 2048x2048, PNG out.

Each server is warmed up (a few requests per workload) and then loaded by ``c`` concurrent
clients (1, 4, 8, 16), each sending its next request when its answer came back, for
``--requests`` requests per run (``big``: ``max(4, c)``). Printed per run: requests per second
(answers with 200 / wall seconds), p50 and p99 latency in milliseconds (client side, request
sent to body read), server CPU seconds per request (user + system CPU time of the server's whole
process tree, psutil, after minus before the run, divided by the requests; in-process: this
process), the server's memory (PSS, proportional set size, summed over its process tree, GiB,
after the run), errors, and "others' CPU": the cores that processes outside this bench and the
measured server kept busy meanwhile (the machine's busy CPU time from ``/proc/stat`` less the
server's and the client's, per wall second; on a shared machine, rows with a high figure are
disturbed). Per server: start to ready (seconds until its health route answers
200) and idle PSS (ready, before any request). Then the ratios of issue 16 (pixelfleet / plain
FastAPI, pixelfleet / best in-process, milliseconds pixelfleet adds to plain's p50 at 1
concurrent) against its goals, and, when pixelfleet's ``/metrics`` has a histogram with "batch" in
its name, the distribution of super-resolution batch sizes per run (difference of the histogram
before and after, waited for until every tile sent is counted, since Ray exports metrics every
few seconds).

Client and servers share the machine's cores (2 on the development VM): the client is one
asyncio + httpx process (its CPU milliseconds per request are printed too) and takes a little
from the servers; every server pays the same. Wrap the run in the heavy-work lock on a shared
machine. Writes the plot (throughput and p99 against concurrency, one line per server, one panel
per workload) and the raw results as JSON to ``--out`` (default ``docs/bench``)::

    flock /tmp/pixelfleet-heavy.lock python bench/serving.py            # the full run
    python bench/serving.py --setup                                     # only make the BentoML venv
    flock /tmp/pixelfleet-heavy.lock python bench/serving.py --quick --only plain,pixelfleet

The full run took 8 min on the 2-core VM (plus 2.3 min the first time, for the BentoML venv);
``--quick`` (16 requests, 1 and 8 concurrent) about 8, ``--workloads sr,ocr`` leaves out the
2048x2048 upscale, the slowest part. Exit code 0 when it ran (a server that could not start is
reported, not fatal), 2 on bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BENTO_VENV = ROOT / ".venv-bentoml"  # not below bench/: tests/unit/test_layers.py parses every .py there
SERVERS = ("inprocess", "plain", "serve", "bentoml", "pixelfleet")
WORKLOADS = ("sr", "ocr", "big")
TITLES = {"sr": "SR 128->512, PNG out", "ocr": "OCR, one line scan", "big": "SR 512->2048, PNG out"}
LABELS = {"inprocess": "in-process", "plain": "plain FastAPI", "serve": "bare Ray Serve", "bentoml": "BentoML", "pixelfleet": "pixelfleet"}
#: The servers of the side-by-side table, in its column order.
COMPARED = ("plain", "serve", "bentoml", "pixelfleet")


# ------------------------------------------------------------------------------- pure arithmetic


@dataclass
class Run:
    """One load run of one server on one workload at one concurrency (or in-process worker count)."""

    server: str
    workload: str
    concurrency: int
    requests: int
    ok: int
    wall_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s_per_req: float | None
    pss_gib: float | None
    client_cpu_ms_per_req: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    others_cores: float | None = None  # CPU used meanwhile by processes outside the bench and the server, cores
    batches: dict[str, int] | None = None


def summarize(latencies_s: list[float], wall_s: float) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 in milliseconds of successful requests.

    ``latencies_s``: seconds per request; ``wall_s``: seconds of the whole run. Percentiles are
    numpy's linear interpolation; with no request answered all three are NaN.
    """
    if not latencies_s or wall_s <= 0:
        return math.nan, math.nan, math.nan
    p50, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 99])
    return len(latencies_s) / wall_s, float(p50), float(p99)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing, NaN or the denominator is 0."""
    if numerator is None or denominator is None or math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def batch_histograms(exposition: str, variant: str) -> dict[str, tuple[dict[float, float], float]]:
    """Every histogram with "batch" in its name, for the series whose ``variant`` label is
    ``variant`` summed over replicas and other labels: ``{name: ({le: cumulative count}, sum)}``
    (the sum of a batch-size histogram is the items, e.g. tiles, in all its batches), from a
    Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, tuple[dict[float, float], float]] = {}
    for family in text_string_to_metric_families(exposition):
        if "batch" not in family.name or family.type != "histogram":
            continue
        for sample in family.samples:
            if sample.labels.get("variant") != variant:
                continue
            buckets, total = found.get(family.name, ({}, 0.0))
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            found[family.name] = (buckets, total)
    return found


def batch_sizes(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Batches per size bucket between two cumulative histograms: ``{"1": n, "2": m, "3-4": k,
    ..., ">128": z}`` (a bucket's label is the range of sizes it holds; empty buckets left out)."""
    bounds = sorted(after)
    sizes: dict[str, int] = {}
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = after[bound] - before.get(bound, 0.0)
        in_bucket = round(count - previous_count)
        if in_bucket:
            low = int(previous_bound) + 1
            label = f">{int(previous_bound)}" if math.isinf(bound) else (str(int(bound)) if low >= bound else f"{low}-{int(bound)}")
            sizes[label] = in_bucket
        previous_bound, previous_count = bound, count
    return sizes


def tile_bounds(buckets: dict[float, float]) -> tuple[float, float]:
    """Least and most items (tiles) in all batches of a cumulative batch-size histogram: each
    bucket's batches times its smallest and its largest size (``inf`` past the last bound)."""
    low = high = 0.0
    previous_bound, previous_count = 0.0, 0.0
    for bound in sorted(buckets):
        in_bucket = buckets[bound] - previous_count
        low += in_bucket * (int(previous_bound) + 1)
        high += in_bucket * bound if in_bucket else 0.0
        previous_bound, previous_count = bound, buckets[bound]
    return low, high


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a Markdown table; "-" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------ the inputs


def png_bytes(image) -> bytes:
    """A Pillow image as PNG bytes (Pillow's default level)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_inputs(data: Path, ocr_image: str) -> dict[str, list[bytes]]:
    """The request bodies of each workload (PNG bytes). Raises FileNotFoundError without the data."""
    from PIL import Image

    photos = sorted((data / "sr" / "val" / "bsd200").glob("*.png"))
    if not photos:
        raise FileNotFoundError(f"no photos in {data / 'sr' / 'val' / 'bsd200'}")
    crops = []
    for path in photos:
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
            side = min(photo.size)
            left, top = (photo.width - side) // 2, (photo.height - side) // 2
            crops.append(png_bytes(photo.crop((left, top, left + side, top + side)).resize((128, 128), Image.Resampling.BICUBIC)))
    with Image.open(photos[0]) as photo:
        big = png_bytes(photo.convert("RGB").resize((512, 512), Image.Resampling.BICUBIC))
    line = (data / "ocr" / "lines" / ocr_image).read_bytes()
    return {"sr": crops, "ocr": [line], "big": [big]}


# ----------------------------------------------------------------------- process tree measurement


def tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and every process below it (alive now)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_s(root: psutil.Process) -> float:
    """User + system CPU seconds of the process tree (processes ending meanwhile are skipped)."""
    total = 0.0
    for process in tree(root):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores; not idle, not waiting on I/O)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def tree_pss_gib(root: psutil.Process) -> float:
    """PSS summed over the process tree, GiB (``/proc/PID/smaps_rollup`` via psutil)."""
    total = 0
    for process in tree(root):
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A started server: its process, base URL, route per workload, and its log file."""

    name: str
    process: subprocess.Popen
    base: str
    routes: dict[str, str]
    log: Path
    ready_path: str
    ready_s: float | None = None
    idle_pss_gib: float | None = None
    note: str = ""

    @property
    def root(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_server(name: str, command: list[str], routes: dict[str, str], ready_path: str, logs: Path, env: dict | None = None, timeout_s: float = 600) -> Server:
    """Start ``command`` in its own process group and wait until ``ready_path`` answers 200.

    Raises:
        RuntimeError: it exited or was not ready within ``timeout_s`` (with its log's tail).
    """
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    log = logs / f"{name}.log"
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "TERM": "dumb", "COLUMNS": "160", **(env or {})},
    )  # fmt: skip
    server = Server(name, process, f"http://127.0.0.1:{port}", routes, log, ready_path)
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                stop_server(server)
                raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready:\n{server.log_tail()}")
            try:
                if client.get(server.base + ready_path).status_code == 200:
                    server.ready_s = time.monotonic() - started
                    server.idle_pss_gib = tree_pss_gib(server.root)
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"{name} was not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def stop_server(server: Server, grace_s: float = 60) -> None:
    """SIGTERM to the server's process group, then SIGKILL to it and to every process that was
    below the server (Ray's processes may leave the group) once ``grace_s`` has passed."""
    below = tree(server.root) if server.process.poll() is None else []
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        server.process.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(below, timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def ensure_bentoml_venv(log: Path) -> Path:
    """``.venv-bentoml/bin/bentoml``, making the venv first if needed (``bentoml`` and this
    package, editable, ``--constraint constraints.txt`` so torch is the pinned wheel, plus
    ``bench/bentoml-constraints.txt`` and .venv's own versions so pip does not backtrack).

    Raises:
        RuntimeError: the venv or the install failed (with the log's tail).
    """
    bentoml = BENTO_VENV / "bin" / "bentoml"
    python = BENTO_VENV / "bin" / "python"
    check = [str(python), "-c", "import bentoml, pixelfleet.deployments.superres.upscaler"]
    if bentoml.exists() and subprocess.run(check, cwd=ROOT, capture_output=True, check=False).returncode == 0:
        return bentoml
    print(f"making {BENTO_VENV.relative_to(ROOT)} (bentoml + this package; a few minutes, log: {log})", flush=True)
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout.splitlines()
    pins = log.with_name("venv-pins.txt")  # .venv's versions, so pip resolves in seconds; OpenTelemetry from bentoml-constraints.txt
    pins.write_text("\n".join(line for line in frozen if "==" in line and not line.lower().startswith(("opentelemetry", "pixelfleet", "-e"))) + "\n")
    with log.open("w") as out:
        constraints = ["--constraint", str(ROOT / "constraints.txt"), "--constraint", str(BENCH / "bentoml-constraints.txt"), "--constraint", str(pins)]
        steps = [[sys.executable, "-m", "venv", str(BENTO_VENV)], [str(python), "-m", "pip", "install", *constraints, "bentoml", "-e", str(ROOT)]]
        for step in steps:
            if subprocess.run(step, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                tail = "\n".join(line for line in log.read_text(errors="replace").splitlines() if not line.startswith("WARNING: Location"))[-2000:]
                raise RuntimeError(f"`{' '.join(step[:5])} ...` failed:\n{tail}")
    if subprocess.run(check, cwd=ROOT, capture_output=True, check=False).returncode != 0:
        raise RuntimeError("bentoml or pixelfleet does not import in the new venv")
    return bentoml


def launch(name: str, logs: Path) -> Server:
    """Start one server by name (``plain``, ``serve``, ``bentoml``, ``pixelfleet``). Raises RuntimeError."""
    if name == "plain":
        command = [sys.executable, "-m", "uvicorn", "plain_server:app", "--app-dir", str(BENCH), "--host", "127.0.0.1",
                   "--port", "{port}", "--workers", "1", "--log-level", "warning", "--no-access-log"]  # fmt: skip
        return start_server(name, command, {"sr": "/v1/superres", "ocr": "/v1/ocr", "big": "/v1/superres"}, "/healthz", logs)
    if name == "serve":
        command = [sys.executable, str(BENCH / "bare_serve.py"), "--port", "{port}"]
        return start_server(name, command, {"sr": "/v1/superres", "ocr": "/v1/ocr", "big": "/v1/superres"}, "/healthz", logs)
    if name == "bentoml":
        bentoml = ensure_bentoml_venv(logs / "bentoml-install.log")
        command = [str(bentoml), "serve", "bento_service:PipelineService", "--working-dir", str(BENCH), "--host", "127.0.0.1", "--port", "{port}"]
        env = {"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(logs / "bentoml-home")}
        return start_server(name, command, {"sr": "/upscale", "ocr": "/ocr", "big": "/upscale"}, "/readyz", logs, env)
    if name == "pixelfleet":
        command = [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--port", "{port}"]
        return start_server(name, command, {"sr": "/v1/superres", "ocr": "/v1/ocr", "big": "/v1/superres"}, "/readyz", logs)
    raise ValueError(name)


def check_answer(workload: str, response: httpx.Response) -> str:
    """What is wrong with a warm-up answer ("" when it is the expected PNG size or OCR JSON)."""
    from PIL import Image

    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    if workload == "ocr":
        text = response.json().get("text", "")
        return "" if text.strip() else "no text"
    expected = {"sr": (512, 512), "big": (2048, 2048)}[workload]
    with Image.open(io.BytesIO(response.content)) as image:
        return "" if image.format == "PNG" and image.size == expected else f"{image.format} {image.size}, expected PNG {expected}"


# ------------------------------------------------------------------------------------------ load


async def http_load(base: str, path: str, bodies: list[bytes], concurrency: int, total: int) -> tuple[list[float], dict[str, int], float]:
    """``concurrency`` clients send ``total`` POSTs in all; each sends its next one when its
    answer came back. Returns (seconds of each 200 answer, errors by status or exception name,
    wall seconds)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=900, limits=limits) as client:

        async def one_client() -> None:
            for index in counter:
                started = time.perf_counter()
                try:
                    response = await client.post(path, content=bodies[index % len(bodies)], headers={"content-type": "image/png"})
                    status = str(response.status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                if status == "200":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[status] = errors.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def run_http(server: Server, workload: str, bodies: list[bytes], concurrency: int, total: int) -> Run:
    """One measured run against a server: latencies, tree CPU and PSS."""
    cpu_before, client_before, busy_before = tree_cpu_s(server.root), time.process_time(), busy_cpu_s()
    latencies, errors, wall = asyncio.run(http_load(server.base, server.routes[workload], bodies, concurrency, total))
    client_cpu = time.process_time() - client_before
    cpu = tree_cpu_s(server.root) - cpu_before
    others = max(0.0, busy_cpu_s() - busy_before - cpu - client_cpu) / wall
    rps, p50, p99 = summarize(latencies, wall)
    return Run(server.name, workload, concurrency, total, len(latencies), wall, rps, p50, p99, cpu / total,
               tree_pss_gib(server.root), 1000 * client_cpu / total, errors, others_cores=others)  # fmt: skip


def run_inprocess(pipeline, workers: int, workload: str, bodies: list[bytes], total: int) -> Run:
    """``total`` items through ``pipeline`` by ``workers`` threads; latency = one item's time."""
    call: Callable[[bytes], object] = (lambda body: json.dumps(pipeline.ocr(body))) if workload == "ocr" else pipeline.upscale
    latencies: list[float] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        started = time.perf_counter()
        call(bodies[index % len(bodies)])
        with lock:
            latencies.append(time.perf_counter() - started)

    cpu_before, busy_before, started = time.process_time(), busy_cpu_s(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(total)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    others = max(0.0, busy_cpu_s() - busy_before - cpu) / wall
    rps, p50, p99 = summarize(latencies, wall)
    pss = psutil.Process().memory_full_info().pss / 2**30
    return Run("inprocess", workload, workers, total, len(latencies), wall, rps, p50, p99, cpu / total, pss, others_cores=others)


def requests_for(workload: str, concurrency: int, requests: int, quick: bool) -> int:
    """Requests of one run: ``requests`` (at least 2 per client), ``big``: max(4, c) (quick: max(2, c))."""
    if workload == "big":
        return max(2 if quick else 4, concurrency)
    return max(requests, 2 * concurrency)


# ---------------------------------------------------------------------------------- batch sizes


class BatchWatch:
    """Super-resolution batch sizes from pixelfleet's ``/metrics``: the histogram with "batch" in
    its name for the ``srresnet-x4`` variant. Ray exports replica metrics every few seconds, so
    :meth:`settle` waits until the histogram's sum holds every tile sent so far."""

    def __init__(self, base: str, variant: str = "srresnet-x4", wait_s: float = 30) -> None:
        self.base, self.variant, self.wait_s = base, variant, wait_s
        self.name: str | None = None
        self.available = True
        self.expected_tiles = 0.0
        self.tiles_per_request = {"sr": 1, "big": 1}

    def learn_tiles(self) -> None:
        """Tiles per request of each SR workload, from the variant's tile size in ``/v1/models``."""
        from pixelfleet.deployments.superres.tiling import TilePlan

        tile, overlap = 192, 32
        try:
            found = _find_variant(httpx.get(self.base + "/v1/models", timeout=30).json(), self.variant)
            tile, overlap = int(found.get("tile_size", tile)), int(found.get("overlap", overlap))
        except (httpx.HTTPError, ValueError, TypeError):
            pass
        self.tiles_per_request = {"sr": len(TilePlan(128, 128, tile, overlap)), "big": len(TilePlan(512, 512, tile, overlap))}

    def sent(self, workload: str, requests: int) -> None:
        """Count the tiles of ``requests`` SR requests of ``workload`` sent (warm-ups included)."""
        self.expected_tiles += requests * self.tiles_per_request.get(workload, 0)

    def settle(self) -> dict[float, float] | None:
        """The cumulative buckets once they hold every tile sent: at least as many tiles as sent
        by the buckets' lower ends (exact for sizes 1 and 2), or, for wider buckets, no new batch
        for ``stable_s`` while their upper ends cover the tiles. After ``wait_s`` the last read
        is taken (noted). None when ``/metrics`` has no batch histogram for the variant.

        (The histogram's ``_sum`` is not used: Ray 2.60 exports a value that is not the sum of
        the observations.)"""
        if not self.available:
            return None
        deadline, buckets, unchanged_since, stable_s = time.monotonic() + self.wait_s, None, time.monotonic(), 12.0
        while time.monotonic() < deadline:
            try:
                histograms = batch_histograms(httpx.get(self.base + "/metrics", timeout=30).text, self.variant)
            except httpx.HTTPError:
                histograms = {}
            if self.name is None and histograms:
                self.name = min(histograms)
            if self.name in histograms:
                current = histograms[self.name][0]
                if current != buckets:
                    buckets, unchanged_since = current, time.monotonic()
                low, high = tile_bounds(buckets)
                if low >= self.expected_tiles or (high >= self.expected_tiles and time.monotonic() - unchanged_since >= stable_s):
                    return buckets
            time.sleep(1.0)
        if self.name is None:
            self.available = False
            return None
        print(f"  (batch histogram {self.name} did not count every tile sent within {self.wait_s:.0f} s)", flush=True)
        return buckets


def _find_variant(node: object, variant: str) -> dict:
    """The first dict in a JSON tree that names ``variant`` and has a ``tile_size``."""
    if isinstance(node, dict):
        if node.get("variant") == variant and "tile_size" in node:
            return node
        children: Iterable = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return {}
    for child in children:
        found = _find_variant(child, variant)
        if found:
            return found
    return {}


# ----------------------------------------------------------------------------------- the report


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def best_inprocess(runs: list[Run], workload: str) -> Run | None:
    """The in-process run of ``workload`` with the highest throughput."""
    candidates = [r for r in runs if r.server == "inprocess" and r.workload == workload and not math.isnan(r.rps)]
    return max(candidates, key=lambda r: r.rps, default=None)


def find(runs: list[Run], server: str, workload: str, concurrency: int) -> Run | None:
    return next((r for r in runs if r.server == server and r.workload == workload and r.concurrency == concurrency), None)


def workload_table(runs: list[Run], workload: str) -> str:
    rows = []
    for run in runs:
        if run.workload != workload:
            continue
        level = f"{run.concurrency} worker{'s' if run.concurrency > 1 else ''}" if run.server == "inprocess" else str(run.concurrency)
        errors = ", ".join(f"{k}: {v}" for k, v in run.errors.items()) or "0"
        rows.append([LABELS[run.server], level, fmt(run.rps, 2), fmt(run.p50_ms, 0), fmt(run.p99_ms, 0), fmt(run.cpu_s_per_req, 3),
                     fmt(run.pss_gib, 2), fmt(run.client_cpu_ms_per_req, 1), fmt(run.others_cores, 2), f"{run.ok}/{run.requests}", errors])  # fmt: skip
    headers = ["server", "concurrent", "req/s", "p50 ms", "p99 ms", "server CPU s/req", "PSS GiB", "client CPU ms/req", "others' CPU (cores)", "answered", "errors"]
    return table(headers, rows)


def summary_tables(runs: list[Run], servers: dict[str, dict], floor: dict) -> tuple[str, str]:
    """The issue's comparison table and the goals table (met / not met)."""

    def get(server: str, workload: str, concurrency: int) -> Run | None:
        return find(runs, server, workload, concurrency)

    best = {w: best_inprocess(runs, w) for w in WORKLOADS}
    rows = []
    for workload, concurrency, label in (("sr", 8, "SR 128->512 PNG, 8 concurrent"), ("sr", 1, "SR 128->512 PNG, 1 at a time"),
                                         ("ocr", 8, "OCR line, 8 concurrent"), ("ocr", 1, "OCR line, 1 at a time"),
                                         ("big", 1, "one 512x512 -> 2048x2048 PNG")):  # fmt: skip
        inproc = best[workload] if concurrency > 1 else find(runs, "inprocess", workload, 1)
        cells = []
        for server in COMPARED:
            run = get(server, workload, concurrency)
            cells.append("-" if run is None else (f"{fmt(run.rps, 2)} req/s, p50 {fmt(run.p50_ms, 0)} ms" if workload != "big" else f"{fmt(run.p50_ms / 1000, 2)} s"))
        pf, plain = get("pixelfleet", workload, concurrency), get("plain", workload, concurrency)
        if inproc is None:
            inproc_cell = "-"
        elif workload == "big":
            inproc_cell = f"{fmt(inproc.p50_ms / 1000, 2)} s ({fmt(floor.get('model_s'), 2)} s of it the model)"
        else:
            workers = f" ({inproc.concurrency} worker{'s' if inproc.concurrency > 1 else ''})"
            inproc_cell = f"{fmt(inproc.rps, 2)} img/s, p50 {fmt(inproc.p50_ms, 0)} ms{workers}"
        if workload == "big":
            vs_plain = ratio(plain and plain.p50_ms, pf and pf.p50_ms)  # latency: plain / pixelfleet (higher is better)
            vs_best = ratio(inproc and inproc.p50_ms, pf and pf.p50_ms)
        else:
            vs_plain = ratio(pf and pf.rps, plain and plain.rps)
            vs_best = ratio(pf and pf.rps, inproc and inproc.rps)
        rows.append([label, inproc_cell, *cells, fmt(vs_plain, 2), fmt(vs_best, 2)])
    idle = [fmt(servers.get(s, {}).get("idle_pss_gib"), 2) + " GiB" if servers.get(s) else "-" for s in COMPARED]
    inproc_pss = servers.get("inprocess", {}).get("idle_pss_gib")
    rows.append(["idle memory (PSS, all processes)", f"{fmt(inproc_pss, 2)} GiB (models loaded)" if inproc_pss else "-", *idle, "", ""])
    ready = [fmt(servers.get(s, {}).get("ready_s"), 1) + " s" if servers.get(s) else "-" for s in COMPARED]
    rows.append(["start to ready", "", *ready, "", ""])
    comparison = table(["workload", "in-process (best)", *(LABELS[s] for s in COMPARED), "pixelfleet / plain", "pixelfleet / in-process"], rows)
    comparison += ("\n\nRatios of throughput (req/s); for the 2048x2048 row of p50 latency, the other's over pixelfleet's "
                   "(below 1: pixelfleet slower). In-process \"best\" at 8 concurrent: the faster of 1 and 2 workers.")  # fmt: skip

    goals = []

    def goal(text: str, value: float | None, shown: str, met: Callable[[float], bool], bare_value: float | None = None, bare_shown: str = "") -> None:
        """One row: pixelfleet's figure, the bare Ray Serve app's, and whether each meets the goal."""
        state = "-" if value is None else ("met" if met(value) else "**not met**")
        if value is not None and bare_value is not None:
            state += " (the bare Ray Serve app misses it too)" if not met(bare_value) else " (the bare Ray Serve app meets it)"
        goals.append([text, shown if value is not None else "-", bare_shown if bare_value is not None else "-", state])

    def added_p50(server: str) -> float | None:
        one, plain_one = get(server, "sr", 1), get("plain", "sr", 1)
        return None if one is None or plain_one is None or math.isnan(one.p50_ms) or math.isnan(plain_one.p50_ms) else one.p50_ms - plain_one.p50_ms

    def big_s(server: str) -> float | None:
        run = get(server, "big", 1)
        return None if run is None or math.isnan(run.p50_ms) else run.p50_ms / 1000

    def rps_ratio(server: str, workload: str, versus: Run | None) -> float | None:
        run = get(server, workload, 8)
        return ratio(run and run.rps, versus and versus.rps)

    plain8 = get("plain", "sr", 8)
    value, bare = rps_ratio("pixelfleet", "sr", plain8), rps_ratio("serve", "sr", plain8)
    goal("SR 128->512 at 8 concurrent: pixelfleet >= 0.95x plain FastAPI", value, f"{fmt(value, 2)}x", lambda v: v >= 0.95, bare, f"{fmt(bare, 2)}x")
    value, bare = rps_ratio("pixelfleet", "sr", best["sr"]), rps_ratio("serve", "sr", best["sr"])
    goal("SR 128->512 at 8 concurrent: pixelfleet >= 0.9x best in-process", value, f"{fmt(value, 2)}x", lambda v: v >= 0.9, bare, f"{fmt(bare, 2)}x")
    value, bare = added_p50("pixelfleet"), added_p50("serve")
    goal("SR 128->512 at 1 concurrent: <= 10 ms added to plain's p50", value, f"{fmt(value, 0)} ms", lambda v: v <= 10, bare, f"{fmt(bare, 0)} ms")
    value, bare = rps_ratio("pixelfleet", "ocr", best["ocr"]), rps_ratio("serve", "ocr", best["ocr"])
    goal("OCR at 8 concurrent: pixelfleet >= 0.9x best in-process", value, f"{fmt(value, 2)}x", lambda v: v >= 0.9, bare, f"{fmt(bare, 2)}x")
    value, bare = big_s("pixelfleet"), big_s("serve")
    floor_text = f" (model alone in-process {fmt(floor.get('model_s'), 2)} s; compute floor of its tiles {fmt(floor.get('floor_s'), 2)} s)" if floor else ""
    goal("512x512 -> 2048x2048 PNG over HTTP <= 1.0 s (on 2 AMX cores)", value, f"{fmt(value, 2)} s{floor_text}", lambda v: v <= 1.0, bare, f"{fmt(bare, 2)} s")
    value, bare = servers.get("pixelfleet", {}).get("idle_pss_gib"), servers.get("serve", {}).get("idle_pss_gib")
    goal("idle memory of `pixelfleet up`, default config <= 1.5 GiB PSS", value, f"{fmt(value, 2)} GiB", lambda v: v <= 1.5, bare, f"{fmt(bare, 2)} GiB")
    value, bare = servers.get("pixelfleet", {}).get("ready_s"), servers.get("serve", {}).get("ready_s")
    goal("start to ready <= 10 s", value, f"{fmt(value, 1)} s", lambda v: v <= 10, bare, f"{fmt(bare, 1)} s")
    return comparison, table(["goal (issue 16)", "pixelfleet", "bare Ray Serve (same pipeline, same graph)", ""], goals)


def batch_table(runs: list[Run]) -> str | None:
    rows = [[TITLES[r.workload], str(r.concurrency), ", ".join(f"{k}: {v}" for k, v in r.batches.items()) or "none counted",
             fmt(sum(_mid(k) * v for k, v in r.batches.items()) / max(1, sum(r.batches.values())), 2)]
            for r in runs if r.server == "pixelfleet" and r.batches is not None]  # fmt: skip
    return table(["workload", "concurrent", "batches by size (tiles)", "mean tiles per batch"], rows) if rows else None


def _mid(label: str) -> float:
    """A bucket label's size for the mean: "2" -> 2, "3-4" -> 3.5, ">128" -> 128."""
    if label.startswith(">"):
        return float(label[1:])
    low, _, high = label.partition("-")
    return (float(low) + float(high or low)) / 2


def plot(runs: list[Run], workloads: list[str], path: Path) -> None:
    """Throughput (top) and p99 (bottom) against concurrency; one panel per workload, one line per
    server; the best in-process throughput as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    colors = {"inprocess": "black", "plain": "tab:blue", "serve": "tab:gray", "bentoml": "tab:orange", "pixelfleet": "tab:green"}
    for column, workload in enumerate(workloads):
        top, bottom = axes[0][column], axes[1][column]
        for server in COMPARED:
            points = sorted((r.concurrency, r.rps, r.p99_ms) for r in runs if r.server == server and r.workload == workload)
            if points:
                xs = [p[0] for p in points]
                top.plot(xs, [p[1] for p in points], "o-", color=colors[server], label=LABELS[server])
                bottom.plot(xs, [p[2] / 1000 if workload == "big" else p[2] for p in points], "o-", color=colors[server], label=LABELS[server])
        best = best_inprocess(runs, workload)
        if best is not None:
            top.axhline(best.rps, color=colors["inprocess"], linestyle="--", label=f"in-process best ({best.concurrency} worker{'s' if best.concurrency > 1 else ''})")
        top.set_title(TITLES[workload])
        top.set_ylabel("requests / s")
        bottom.set_ylabel("p99 latency, " + ("s" if workload == "big" else "ms"))
        bottom.set_xlabel("concurrent clients")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
        top.legend(fontsize=8)
    figure.suptitle("Same pipeline, same images: in-process, plain FastAPI, bare Ray Serve, BentoML, pixelfleet (2-core CPU)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------------------------------ main


def compute_floor(pipeline, big_body: bytes) -> dict:
    """The model alone on the 512x512 image (best of 2, seconds) and the compute floor of its tiles
    (``bench/superres_latency.py``: MACs / the sustained 3x3 conv rate, same precision and threads)."""
    from PIL import Image

    sys.path.insert(0, str(BENCH))
    from pixelfleet.deployments.superres.tiling import TilePlan
    from serving_pipeline import SR_OVERLAP, SR_TILE
    from superres_latency import conv_macs, sustained_conv_rate

    with Image.open(io.BytesIO(big_body)) as image:
        pixels = np.asarray(image.convert("RGB"))
    times = []
    for _ in range(2):
        started = time.perf_counter()
        pipeline.upscale_pixels(pixels)
        times.append(time.perf_counter() - started)
    upscaler = pipeline.upscaler
    plan = TilePlan(pixels.shape[0], pixels.shape[1], SR_TILE, SR_OVERLAP)
    macs = len(plan) * conv_macs(upscaler.model, plan.tile_height, plan.tile_width)
    rate = sustained_conv_rate(upscaler.precision, channels=upscaler.card.architecture.channels)
    return {"model_s": min(times), "floor_s": macs / rate, "gmac": macs / 1e9, "gmac_per_s": rate / 1e9, "precision": upscaler.precision, "tiles": len(plan)}


def measure_inprocess(inputs: dict[str, list[bytes]], workloads: list[str], args: argparse.Namespace, runs: list[Run], servers: dict, floor: dict) -> None:
    sys.path.insert(0, str(BENCH))
    from serving_pipeline import Pipeline

    families = tuple(f for f, used in (("superres", {"sr", "big"} & set(workloads)), ("ocr", "ocr" in workloads)) if used)
    for workers in (1, 2):
        pipeline = Pipeline(sr_workers=workers, ocr_workers=workers, families=families)
        servers.setdefault("inprocess", {"idle_pss_gib": psutil.Process().memory_full_info().pss / 2**30})
        for workload in workloads:
            run_inprocess(pipeline, workers, workload, inputs[workload], 2 if workload == "big" else 4)  # warm-up
            run = run_inprocess(pipeline, workers, workload, inputs[workload], requests_for(workload, workers, args.requests, args.quick))
            runs.append(run)
            print(f"  in-process, {workers} worker(s), {workload}: {fmt(run.rps, 2)}/s, p50 {fmt(run.p50_ms, 0)} ms", flush=True)
        if workers == 1 and "big" in workloads:
            floor.update(compute_floor(pipeline, inputs["big"][0]))
            print(f"  model alone on 512x512: {floor['model_s']:.2f} s; compute floor {floor['floor_s']:.2f} s "
                  f"({floor['gmac']:.0f} GMAC in {floor['tiles']} tiles at {floor['gmac_per_s']:.0f} GMAC/s, {floor['precision']})", flush=True)  # fmt: skip
        del pipeline


def measure_server(name: str, inputs: dict[str, list[bytes]], workloads: list[str], levels: list[int], args: argparse.Namespace,
                   runs: list[Run], servers: dict, logs: Path) -> None:  # fmt: skip
    try:
        server = launch(name, logs)
    except (RuntimeError, OSError) as error:
        print(f"  {LABELS[name]}: not measured: {error}", flush=True)
        servers[name] = None
        return
    servers[name] = {"ready_s": server.ready_s, "idle_pss_gib": server.idle_pss_gib}
    print(f"  {LABELS[name]}: ready after {server.ready_s:.1f} s, idle PSS {server.idle_pss_gib:.2f} GiB", flush=True)
    watch = BatchWatch(server.base) if name == "pixelfleet" else None
    try:
        if watch is not None:
            watch.learn_tiles()
        with httpx.Client(base_url=server.base, timeout=900) as client:
            for workload in workloads:
                response = client.post(server.routes[workload], content=inputs[workload][0], headers={"content-type": "image/png"})
                problem = check_answer(workload, response)
                if problem:
                    print(f"  {LABELS[name]} {workload}: wrong answer to the warm-up: {problem}", flush=True)
                warm = requests_for(workload, 4, 8, True)
                asyncio.run(http_load(server.base, server.routes[workload], inputs[workload], 4, warm))  # warm-up at 4 concurrent
                if watch is not None:
                    watch.sent(workload, 1 + warm)
        for workload in workloads:
            for concurrency in levels:
                before = watch.settle() if watch is not None and workload in ("sr", "big") else None
                total = requests_for(workload, concurrency, args.requests, args.quick)
                run = run_http(server, workload, inputs[workload], concurrency, total)
                if before is not None:
                    watch.sent(workload, total)
                    after = watch.settle()
                    run.batches = batch_sizes(before, after) if after is not None else None
                runs.append(run)
                print(f"  {LABELS[name]}, {workload}, {concurrency} concurrent: {fmt(run.rps, 2)}/s, p50 {fmt(run.p50_ms, 0)} ms, "
                      f"p99 {fmt(run.p99_ms, 0)} ms, {run.ok}/{run.requests} answered" + (f", batches {run.batches}" if run.batches else ""), flush=True)  # fmt: skip
        if watch is not None and not watch.available:
            print("  pixelfleet's /metrics has no histogram with 'batch' in its name for srresnet-x4: batch sizes not reported", flush=True)
        servers[name]["pss_after_gib"] = tree_pss_gib(server.root)
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SERVERS), help=f"servers, comma-separated, of {','.join(SERVERS)}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"of {','.join(WORKLOADS)}")
    parser.add_argument("--requests", type=int, default=80, help="requests per run of sr and ocr (at least 2 per client)")
    parser.add_argument("--concurrency", default="1,4,8,16", help="concurrent clients, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 requests, concurrency 1 and 8")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets", help="the datasets folder (sr/val/bsd200, ocr/lines)")
    parser.add_argument("--ocr-image", default="0518_010044.png", help="the line scan of ocr/lines to send")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench", help="folder for serving.png and serving.json")
    parser.add_argument("--setup", action="store_true", help="only make the BentoML venv, then exit")
    args = parser.parse_args(argv)
    servers_wanted = [s for s in args.only.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    if set(servers_wanted) - set(SERVERS) or set(workloads) - set(WORKLOADS):
        parser.error(f"--only takes {SERVERS}, --workloads {WORKLOADS}")
    if args.quick:
        args.requests, levels = min(args.requests, 16), [1, 8]
    else:
        levels = [int(c) for c in args.concurrency.split(",") if c]
    logs = Path(tempfile.mkdtemp(prefix="pixelfleet-serving-bench-"))
    if args.setup:
        print(ensure_bentoml_venv(logs / "bentoml-install.log"))
        return 0

    started = time.monotonic()
    inputs = load_inputs(args.data, args.ocr_image)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), []))
    print(f"CPU: {cpu}, {os.cpu_count()} cores; avx512f {'avx512f' in flags}, avx512_bf16 {'avx512_bf16' in flags}, amx {'amx_bf16' in flags}; "
          f"load average {os.getloadavg()[0]:.1f}; server logs in {logs}", flush=True)  # fmt: skip
    print(f"workloads {workloads}, concurrency {levels}, {args.requests} requests per run (big: max(4, c)); servers {servers_wanted}", flush=True)
    runs: list[Run] = []
    servers: dict[str, dict | None] = {}
    floor: dict = {}
    for name in servers_wanted:
        print(f"{LABELS[name]}:", flush=True)
        if name == "inprocess":
            measure_inprocess(inputs, workloads, args, runs, servers, floor)
        else:
            measure_server(name, inputs, workloads, levels, args, runs, servers, logs)
    wall = time.monotonic() - started

    print()
    for workload in workloads:
        print(f"### {TITLES[workload]}\n\n{workload_table(runs, workload)}\n")
    comparison, goals = summary_tables(runs, {k: v for k, v in servers.items() if v}, floor)
    print(f"### Side by side (issue 16's table)\n\n{comparison}\n\n### Goals\n\n{goals}\n")
    batches = batch_table(runs)
    print("### Super-resolution batch sizes in pixelfleet (from /metrics)\n\n" + (batches or "not reported: no batch histogram in /metrics") + "\n")
    for name, info in servers.items():
        if info is None:
            print(f"{LABELS[name]}: not measured (see above)")
    print(f"wall time of the run: {wall / 60:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, workloads, args.out / "serving.png")
    record = {"cpu": cpu, "cores": os.cpu_count(), "levels": levels, "requests": args.requests, "wall_s": wall,
              "servers": servers, "floor": floor, "runs": [asdict(r) for r in runs]}  # fmt: skip
    (args.out / "serving.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"plot: {args.out / 'serving.png'}; raw results: {args.out / 'serving.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
