"""`pixelfleet up` as a user runs it: start to ready, idle memory, the console, and a SIGTERM under load.

Starts ``python -m pixelfleet.serve.cli up --config CONFIG --port PORT`` in its own process group
and measures, in one run:

- **start to ready**: seconds from the process start until ``GET /readyz`` answers 200, and until
  the console's "serving at" banner;
- **idle memory**: after ``--idle`` seconds without traffic, the sum of PSS (proportional set
  size: shared pages divided among the processes that map them, from ``/proc/<pid>/smaps_rollup``
  via psutil) over the ``up`` process and every process below it (Ray's GCS, raylet, the Serve
  controller, proxy and replicas), with the largest processes listed;
- **scale to zero**: the variants ``/readyz`` reports scaled to zero, and that neither
  ``/readyz`` nor ``GET /v1/models`` starts a replica of them;
- **first requests**: one OCR request per variant of ``--ocr-variants`` and one 64x64 upscale per
  variant of ``--sr-variants``; the first one to a variant scaled to zero includes its cold start
  (its replica's start and model load), reported as such; and the memory after them;
- **no growth**: ``--requests`` OCR requests to the default variant (``--concurrency`` at a
  time) after ``--warmup`` of them, with the PSS after the warm-up and after the requests;
- **SIGTERM under load**: ``--inflight`` OCR requests are sent, SIGTERM follows once they are
  in flight; it reports how many finished with 200, how many failed, and the seconds from
  SIGTERM until the port refuses connections and until the process exits;
- the console: the ``up`` process's output, printed at the end.

    python bench/memory.py --image ../shared/datasets/ocr/lines/0518_010044.png

Wrap it in ``flock /tmp/pixelfleet-heavy.lock`` on a shared machine. Exit code 0 when it ran.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
from PIL import Image


def pss_of_tree(root: psutil.Process) -> tuple[int, list[tuple[int, str, int]]]:
    """Sum of PSS (bytes) over ``root`` and its descendants, and ``(pss, name, pid)`` of each,
    largest first. Processes that end while being read are skipped."""
    rows = []
    for process in [root, *root.children(recursive=True)]:
        try:
            pss = process.memory_full_info().pss
            rows.append((pss, " ".join(process.cmdline()[:3])[:90] or process.name(), process.pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    rows.sort(reverse=True)
    return sum(row[0] for row in rows), rows


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "serve" / "configs" / "local.yaml")
    parser.add_argument("--image", type=Path, required=True, help="an image for the OCR requests")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds without traffic before the idle measurement")
    parser.add_argument("--ocr-variants", default="tesseract,rapidocr", help="one first request to each (comma-separated)")
    parser.add_argument("--sr-variants", default="srresnet-x4,srresnet-x2,srgan-x4", help="one first 64x64 upscale to each (comma-separated)")
    parser.add_argument("--warmup", type=int, default=50, help="OCR requests before the 'after warm-up' memory")
    parser.add_argument("--requests", type=int, default=1000, help="OCR requests after the warm-up, before the last memory (0: none)")
    parser.add_argument("--concurrency", type=int, default=4, help="of those requests at a time")
    parser.add_argument("--inflight", type=int, default=8, help="OCR requests in flight at SIGTERM")
    parser.add_argument("--top", type=int, default=8, help="largest processes to list")
    args = parser.parse_args(argv)

    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    image = args.image.read_bytes()
    output: list[str] = []
    banner_at: list[float] = []
    started = time.monotonic()
    up = subprocess.Popen(
        [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--config", str(args.config), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "TERM": "dumb", "COLUMNS": "160"},
    )

    def read_output() -> None:
        for line in up.stdout:
            output.append(line.rstrip("\n"))
            if "serving at" in line and not banner_at:
                banner_at.append(time.monotonic() - started)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    root = psutil.Process(up.pid)
    try:
        ready_s = None
        with httpx.Client(timeout=5) as client:
            while time.monotonic() - started < 600 and up.poll() is None:
                try:
                    if client.get(f"{base}/readyz").status_code == 200:
                        ready_s = time.monotonic() - started
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        if ready_s is None:
            print("\n".join(output))
            print("not ready; exit code", up.poll())
            return 1
        while not banner_at and time.monotonic() - started < ready_s + 60:
            time.sleep(0.1)
        print(f"start to ready: /readyz 200 after {ready_s:.1f} s; banner after {banner_at[0] if banner_at else float('nan'):.1f} s")

        with httpx.Client(timeout=60) as client:
            at_zero = set(client.get(f"{base}/readyz").json().get("scaled_to_zero", []))
            print(f"scaled to zero at ready: {', '.join(sorted(at_zero)) or 'none'}")
            time.sleep(args.idle)
            listed = client.get(f"{base}/v1/models").json()["families"]
            marked = {f"{f}/{v}" for f, entry in listed.items() for v, card in entry["variants"].items() if card.get("scaled_to_zero")}
            still = set(client.get(f"{base}/readyz").json().get("scaled_to_zero", []))
            print(f"after {args.idle:.0f} s, /readyz and /v1/models: still scaled to zero: {', '.join(sorted(still)) or 'none'}; "
                  f"listed from their config: {', '.join(sorted(marked)) or 'none'}")  # fmt: skip
        total, rows = pss_of_tree(root)
        print(f"idle PSS after {args.idle:.0f} s: {gib(total)} over {len(rows)} processes")
        for pss, name, pid in rows[: args.top]:
            print(f"  {pss / 2**20:7.0f} MiB  pid {pid}  {name}")

        buffer = io.BytesIO()
        Image.open(io.BytesIO(image)).convert("RGB").resize((64, 64)).save(buffer, format="PNG")
        tile = buffer.getvalue()
        firsts = [("ocr", v, "/v1/ocr", image) for v in filter(None, args.ocr_variants.split(","))]
        firsts += [("superres", v, "/v1/superres", tile) for v in filter(None, args.sr_variants.split(","))]
        with httpx.Client(timeout=300) as client:
            for family, variant, route, body in firsts:
                times, codes = [], []
                for _ in range(2):
                    t0 = time.monotonic()
                    response = client.post(f"{base}{route}", params={"model": variant}, files={"image": ("in.png", body, "image/png")})
                    times.append(time.monotonic() - t0)
                    codes.append(response.status_code)
                cold = f"{family}/{variant}" in at_zero
                what = f"cold start (scaled to zero) {times[0] - times[1]:.2f} s more than the second" if cold else "replica already running"
                print(f"first request to {family}/{variant}: {codes[0]} in {times[0]:.2f} s, second {codes[1]} in {times[1]:.2f} s: {what}")
        total, rows = pss_of_tree(root)
        print(f"PSS after the first requests: {gib(total)} over {len(rows)} processes")

        if args.requests:

            def ocr_request(_: int) -> int:
                return pool_client.post(f"{base}/v1/ocr", files={"image": ("line.png", image, "image/png")}).status_code

            with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=args.concurrency)) as pool_client, ThreadPoolExecutor(args.concurrency) as pool:
                codes = list(pool.map(ocr_request, range(args.warmup)))
                warm_total, warm_rows = pss_of_tree(root)
                t0 = time.monotonic()
                codes += list(pool.map(ocr_request, range(args.requests)))
                took = time.monotonic() - t0
            after_total, after_rows = pss_of_tree(root)
            ok = sum(code == 200 for code in codes)
            print(f"PSS after a warm-up of {args.warmup} OCR requests: {gib(warm_total)}; after {args.requests} more ({args.concurrency} at a time, "
                  f"{args.requests / took:.1f} req/s, {ok} of {len(codes)} answered 200): {gib(after_total)} "
                  f"({(after_total - warm_total) / 2**20:+.0f} MiB)")  # fmt: skip
            before = {pid: pss for pss, _, pid in warm_rows}
            for pss, name, pid in sorted(after_rows, key=lambda row: -abs(row[0] - before.get(row[2], 0)))[:4]:
                print(f"  {(pss - before.get(pid, 0)) / 2**20:+7.1f} MiB  pid {pid}  {name}")

        results: list[object] = []

        def one_request() -> None:
            try:
                with httpx.Client(timeout=120) as client:
                    answer = client.post(f"{base}/v1/ocr", files={"image": ("line.png", image, "image/png")})
                    results.append(answer.status_code)
            except httpx.HTTPError as error:
                results.append(type(error).__name__)

        threads = [threading.Thread(target=one_request) for _ in range(args.inflight)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the requests reach the ingress
        term_at = time.monotonic()
        up.send_signal(signal.SIGTERM)
        closed_s = None
        while time.monotonic() - term_at < 120:
            if closed_s is None and not port_open(port):
                closed_s = time.monotonic() - term_at
            if up.poll() is not None and closed_s is not None:
                break
            time.sleep(0.05)
        exit_s = time.monotonic() - term_at if up.poll() is not None else None
        for thread in threads:
            thread.join(timeout=120)
        ok = sum(result == 200 for result in results)
        print(
            f"SIGTERM with {args.inflight} requests in flight: {ok} answered 200, others {[r for r in results if r != 200]}; "
            f"port closed after {closed_s if closed_s is not None else float('nan'):.1f} s, process exited after "
            f"{exit_s if exit_s is not None else float('nan'):.1f} s (code {up.poll()})"
        )
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        reader.join(timeout=5)
    print("--- console of pixelfleet up ---")
    print("\n".join(output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
