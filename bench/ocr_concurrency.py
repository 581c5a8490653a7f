"""OCR lines per second at 1, 2, 4 and 8 concurrent: 1 or 2 Tesseract engines in-process, in two
processes, and through the OCR replica class (its engine pool), without Ray.

Every setup reads the same real line scans (the first ``--lines`` of ``--data``, each ``.png``)
round after round, after one warm-up round:

- ``in-process, N engines``: ``N`` engines in an :class:`~pixelfleet.deployments.ocr.pool.EnginePool`
  and ``concurrency`` client threads, each handing the pool an already decoded ``(H, W, 3)`` uint8
  image (no decoding, no result schema): the engine floor.
- ``2 processes x 1 engine``: what two replicas of one engine each would give (a process pool of
  two, ``concurrency`` images in flight), decoded images pickled to the workers.
- ``replica class, N engines``: the deployment's own class (``OCR.func_or_class``, the plain class
  behind Serve) with ``engines=N``, ``concurrency`` asyncio tasks each awaiting ``ocr()`` on the
  PNG bytes (decoding, the pool, the result schema; no Ray, no HTTP: ``bench/serving.py`` measures
  those end to end).

It prints one Markdown table: lines/s per setup and concurrency, and each replica row's ratio to
the best in-process figure at the same concurrency (issue 16's goal at 8 concurrent: >= 0.9x).

    python bench/ocr_concurrency.py --data ../shared/datasets/ocr/lines
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait, FIRST_COMPLETED
from pathlib import Path

import numpy as np
from PIL import Image

from pixelfleet.deployments.ocr.deployment import OCR
from pixelfleet.deployments.ocr.engines import build_engine
from pixelfleet.deployments.ocr.pool import EnginePool

CONCURRENCY = (1, 2, 4, 8)


def load_lines(folder: Path, count: int) -> list[bytes]:
    """The PNG bytes of the first ``count`` line scans (sorted by name) that have a ``.gt.txt``."""
    pngs = [png for png in sorted(folder.glob("*.png")) if png.with_name(png.stem + ".gt.txt").exists()]
    if not pngs:
        raise SystemExit(f"no <name>.png with <name>.gt.txt in {folder}")
    return [png.read_bytes() for png in pngs[:count]]


def decode(png: bytes) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB pixels of a PNG."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def in_process(images: list[np.ndarray], engines: int, concurrency: int, rounds: int) -> float:
    """Lines per second of ``engines`` pooled engines fed by ``concurrency`` threads."""
    pool = EnginePool(lambda: build_engine("tesseract"), engines)
    with ThreadPoolExecutor(concurrency) as clients:
        list(clients.map(lambda image: pool.call(lambda engine: engine.recognize(image)), images))  # warm-up
        work = images * rounds
        start = time.perf_counter()
        list(clients.map(lambda image: pool.call(lambda engine: engine.recognize(image)), work))
        seconds = time.perf_counter() - start
    pool.shutdown()
    return len(work) / seconds


_WORKER_ENGINE = None


def _worker_start() -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = build_engine("tesseract")


def _worker_read(image: np.ndarray) -> int:
    return len(_WORKER_ENGINE.recognize(image))


def two_processes(images: list[np.ndarray], concurrency: int, rounds: int) -> float:
    """Lines per second of two worker processes with one engine each, ``concurrency`` in flight."""
    with ProcessPoolExecutor(2, initializer=_worker_start) as workers:
        list(workers.map(_worker_read, images))  # warm-up (and the workers' start)
        work = images * rounds
        start = time.perf_counter()
        pending: set = set()
        for image in work:
            if len(pending) >= concurrency:
                _, pending = wait(pending, return_when=FIRST_COMPLETED)
            pending.add(workers.submit(_worker_read, image))
        wait(pending)
        seconds = time.perf_counter() - start
    return len(work) / seconds


def replica(pngs: list[bytes], engines: int, concurrency: int, rounds: int) -> float:
    """Lines per second of the OCR replica class with ``engines`` engines, ``concurrency`` tasks."""
    deployment = OCR.func_or_class("tesseract", variant="tesseract", engines=engines)

    async def drive(work: list[bytes]) -> float:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for png in work:
            queue.put_nowait(png)

        async def client() -> None:
            while not queue.empty():
                result = await deployment.ocr(queue.get_nowait(), {}, [])
                assert "text" in result.content

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - start

    asyncio.run(drive(pngs))  # warm-up
    work = pngs * rounds
    seconds = asyncio.run(drive(work))
    deployment.pool.shutdown()
    return len(work) / seconds


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run every setup at every concurrency and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of <name>.png + <name>.gt.txt line scans")
    parser.add_argument("--lines", type=int, default=64, help="line scans per round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds over the lines")
    args = parser.parse_args(argv)

    pngs = load_lines(args.data, args.lines)
    images = [decode(png) for png in pngs]
    rows: dict[str, dict[int, float]] = {}
    setups = [
        ("in-process, 1 engine", lambda c: in_process(images, 1, c, args.rounds)),
        ("in-process, 2 engines", lambda c: in_process(images, 2, c, args.rounds)),
        ("2 processes x 1 engine", lambda c: two_processes(images, c, args.rounds)),
        ("replica class, 1 engine", lambda c: replica(pngs, 1, c, args.rounds)),
        ("replica class, 2 engines", lambda c: replica(pngs, 2, c, args.rounds)),
    ]
    for name, run in setups:
        rows[name] = {c: run(c) for c in CONCURRENCY}
        print(f"{name}: " + ", ".join(f"{c}: {v:.1f}" for c, v in rows[name].items()), flush=True)

    best = {c: max(rows[name][c] for name in rows if not name.startswith("replica")) for c in CONCURRENCY}
    print(f"\n{len(pngs)} line scans x {args.rounds} rounds per figure; {os.cpu_count()} CPUs\n")
    print("| setup | " + " | ".join(f"{c} concurrent" for c in CONCURRENCY) + " |")
    print("| --- " * (len(CONCURRENCY) + 1) + "|")
    for name, figures in rows.items():
        cells = []
        for c in CONCURRENCY:
            cell = f"{figures[c]:.1f}"
            if name.startswith("replica"):
                cell += f" ({figures[c] / best[c]:.2f}x best)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
