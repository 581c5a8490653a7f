"""`pixelfleet up` as a user runs it: start to ready, idle memory, the console, and a SIGTERM under load.

Starts ``python -m pixelfleet.serve.cli up --config CONFIG --port PORT`` in its own process group
and measures, in one run:

- **start to ready**: seconds from the process start until ``GET /readyz`` answers 200, and until
  the console's "serving at" banner;
- **idle memory**: after ``--idle`` seconds without traffic, the sum of PSS (proportional set
  size: shared pages divided among the processes that map them, from ``/proc/<pid>/smaps_rollup``
  via psutil) over the ``up`` process and every process below it (Ray's GCS, raylet, the Serve
  controller, proxy and replicas), with the largest processes listed;
- **first requests**: one OCR request per variant of ``--ocr-variants`` (the first one of a
  variant scaled to zero includes its start), and the memory after them;
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

import httpx
import psutil


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

        time.sleep(args.idle)
        total, rows = pss_of_tree(root)
        print(f"idle PSS after {args.idle:.0f} s: {gib(total)} over {len(rows)} processes")
        for pss, name, pid in rows[: args.top]:
            print(f"  {pss / 2**20:7.0f} MiB  pid {pid}  {name}")

        with httpx.Client(timeout=300) as client:
            for variant in filter(None, args.ocr_variants.split(",")):
                t0 = time.monotonic()
                response = client.post(f"{base}/v1/ocr", params={"model": variant}, files={"image": ("line.png", image, "image/png")})
                first = time.monotonic() - t0
                t0 = time.monotonic()
                client.post(f"{base}/v1/ocr", params={"model": variant}, files={"image": ("line.png", image, "image/png")})
                print(f"first request to ocr/{variant}: {response.status_code} in {first:.2f} s (second: {time.monotonic() - t0:.2f} s)")
        total, rows = pss_of_tree(root)
        print(f"PSS after the first requests: {gib(total)} over {len(rows)} processes")

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
