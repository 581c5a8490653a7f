"""``pixelfleet upscale``: images (files or folders) or one video, with a progress bar, either
through a running app's job API (``--url``) or in this process without one.

- **Locally** (no ``--url``): the work modules of the job worker run here (``jobs/batch.py``,
  ``jobs/video.py``) through :class:`~pixelfleet.jobs.local.LocalContext`, which runs the shipped
  super-resolution model (or ``--weights``) in-process: the same tiles, manifest and video
  pipeline as the app, without Ray.
- **Against an app** (``--url`` or ``PIXELFLEET_URL``): each image is a job (``POST /v1/jobs``
  with the file's bytes), its ``Idempotency-Key`` derived from the file's content and the
  options, so running the command again after an interruption picks up the same jobs instead
  of submitting new ones; results are fetched from ``GET /v1/jobs/{id}/result``. A video is one
  ``video`` job whose progress is its frames. ``PIXELFLEET_API_KEY`` is sent as a bearer
  credential (scope ``jobs``), as the admin commands send it.

Either way the output folder gets the results under the inputs' names and a ``manifest.jsonl``
(``jobs/batch.py``'s format) for images.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pixelfleet.serve.admin_client import AdminClient, AdminError

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".avif"}
TERMINAL = ("succeeded", "failed", "cancelled")
POLL_S = 0.5  # seconds between status polls of a running app's jobs
SUFFIX_OF = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/tiff": ".tiff", "image/avif": ".avif"}


@dataclass
class Options:
    """What ``pixelfleet upscale`` was asked (the command's flags)."""

    out: Path
    scale: int | None = None
    model: str | None = None
    format: str = "png"
    weights: str | None = None
    codec: str | None = None
    chunk_frames: int = 48
    tile_size: int = 192
    upscale_params: dict = field(default_factory=dict)

    def params(self) -> dict:
        """The upscale's options as the family takes them."""
        return {**({"scale": self.scale} if self.scale else {}), "format": self.format, **self.upscale_params}


def is_video(paths: list[Path]) -> bool:
    """Whether the command was given one video file (by its suffix).

    Raises:
        ValueError: a video among several inputs.
    """
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos and len(paths) > 1:
        raise ValueError("give one video at a time (or only images)")
    return bool(videos)


def image_files(paths: list[Path]) -> list[tuple[str, Path]]:
    """``(name, path)`` of every image: the files given (named by their file name) and the
    images below each folder given (named by their path relative to it), sorted per folder.

    Raises:
        ValueError: a path that does not exist; no image found.
    """
    found: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                (str(p.relative_to(path)), p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise ValueError(f"no such file or folder: {path}")
    if not found:
        raise ValueError("no images found (png, jpg, webp, tiff, bmp, gif, avif)")
    return found


# ---- locally, without an app ----


def run_local(paths: list[Path], options: Options, on_progress: Callable[[int, int, str], None]) -> dict:
    """Upscale in this process (see the module's docstring); returns the work's result."""
    from pixelfleet.jobs import batch, video
    from pixelfleet.jobs.local import LocalContext, LocalUpscaler
    from pixelfleet.jobs.storage import Storage, StorageConfig

    upscaler = LocalUpscaler(weights=options.weights, scale=options.scale or 4, tile_size=options.tile_size)
    params = options.params()
    if options.scale and options.weights is None:
        params.pop("scale")  # the shipped model of that scale was chosen
    if is_video(paths):
        source = paths[0].resolve()
        options.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pixelfleet-", dir=options.out.parent) as work:
            storage = Storage(StorageConfig(roots=[str(source.parent)], results=work))
            job = {"input": str(source), "name": options.out.name, "params": params, "chunk_frames": options.chunk_frames,
                   **({"codec": options.codec} if options.codec else {})}  # fmt: skip
            ctx = LocalContext(upscaler, job, operation="video", on_progress=on_progress, job_id="video")
            done = asyncio.run(video.run_video(ctx, storage))
            os.replace(Path(work) / "video" / options.out.name, options.out)
        return {**done["result"], "output": str(options.out)}
    files = image_files(paths)
    options.out.mkdir(parents=True, exist_ok=True)
    out = options.out.resolve()
    roots = sorted({str(p.resolve().parent) for _, p in files} | {str(p.resolve()) for p in paths if p.is_dir()})
    storage = Storage(StorageConfig(roots=roots, results=str(out.parent)))  # the job's results folder is OUT itself
    if len(paths) == 1 and paths[0].is_dir():
        job = {"operation": "upscale", "prefix": str(paths[0].resolve()), "params": params}
    else:
        job = {"operation": "upscale", "inputs": [str(p.resolve()) for _, p in files], "params": params}
    done = asyncio.run(batch.run_batch(LocalContext(upscaler, job, on_progress=on_progress, job_id=out.name), storage))
    return {**done["result"], "manifest": str(out / done["result"]["manifest"]), "output": str(out)}


# ---- against a running app ----


class JobsClient(AdminClient):
    """The job routes of a running app (``/v1/jobs``), with the admin client's credential and
    error handling (:class:`~pixelfleet.serve.admin_client.AdminError` for an error answer)."""

    def submit(self, body: dict, idempotency_key: str) -> dict:
        """``POST /v1/jobs``; the job (202)."""
        return self._call("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": idempotency_key}).json()

    def job(self, job_id: str) -> dict:
        """``GET /v1/jobs/{id}``."""
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def result(self, job_id: str) -> tuple[bytes, str, str | None]:
        """``GET /v1/jobs/{id}/result``: the bytes, their media type and the variant that served."""
        response = self._call("GET", f"/v1/jobs/{job_id}/result")
        return response.content, response.headers.get("content-type", ""), response.headers.get("x-pixelfleet-variant")


def idempotency_key(data: bytes, body: dict) -> str:
    """The same file with the same options -> the same key -> the same job on the app."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps(body, sort_keys=True).encode())
    return "pixelfleet-upscale-" + digest.hexdigest()


def _wait(client: JobsClient, pending: dict[str, object], on_done: Callable[[object, dict], None], on_poll=None) -> None:
    """Poll each pending job until it has ended; ``on_done(tag, job)`` as each one does."""
    while pending:
        for job_id in list(pending):
            job = client.job(job_id)
            if on_poll is not None:
                on_poll(job)
            if job["state"] in TERMINAL:
                on_done(pending.pop(job_id), job)
        if pending:
            time.sleep(POLL_S)


def run_remote(paths: list[Path], options: Options, url: str, on_progress: Callable[[int, int, str], None]) -> dict:
    """Upscale through the app at ``url`` (see the module's docstring); returns a summary.

    Raises:
        AdminError: the app refused a submit (4xx) or failed. httpx.HTTPError: no connection.
    """
    from pixelfleet.jobs.batch import manifest_line

    model = {"model": options.model} if options.model else {}
    with JobsClient(url, timeout_s=300) as client:
        if is_video(paths):
            data = paths[0].read_bytes()
            params = {"params": options.params(), "chunk_frames": options.chunk_frames, **model, **({"codec": options.codec} if options.codec else {})}
            body = {"family": "superres", "operation": "video", "params": params}
            job = client.submit({**body, "input": {"data": base64.b64encode(data).decode()}}, idempotency_key(data, body))
            ended: dict = {}
            _wait(client, {job["id"]: None}, lambda _, j: ended.update(j), lambda j: on_progress(int(j["progress"]["percent"]), 100, "percent"))
            if ended["state"] != "succeeded":
                raise AdminError(500, f"the video job {ended['state']}: {(ended.get('error') or {}).get('message', '')}")
            content, _, _ = client.result(job["id"])
            options.out.parent.mkdir(parents=True, exist_ok=True)
            options.out.write_bytes(content)
            return {"output": str(options.out), "job": job["id"]}
        files = image_files(paths)
        options.out.mkdir(parents=True, exist_ok=True)
        pending: dict[str, tuple[str, Path, float]] = {}
        lines: dict[str, str] = {}
        counts = {"ok": 0, "failed": 0}
        for name, path in files:
            data = path.read_bytes()
            body = {"family": "superres", "operation": "upscale", "params": options.params(), **model}
            try:
                job = client.submit({**body, "input": {"data": base64.b64encode(data).decode()}}, idempotency_key(data, body))
            except AdminError as err:
                if err.status >= 500 or err.status in (401, 403, 429):  # the app's or the caller's problem, not this file's
                    raise
                counts["failed"] += 1  # refused at submit (too large, say): this item only
                lines[name] = manifest_line(str(path), None, {"code": err.code or "refused", "message": err.message}, None, 0.0)
                on_progress(len(lines), len(files), "items")
                continue
            pending[job["id"]] = (name, path, time.monotonic())

        def done(tag: tuple[str, Path, float], job: dict) -> None:
            name, path, started = tag
            output, error, variant = None, job.get("error"), job.get("variant")
            if job["state"] == "succeeded":
                content, media_type, variant = client.result(job["id"])
                target = options.out / (str(Path(name).with_suffix("")) + SUFFIX_OF.get(media_type.split(";")[0], ".bin"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                output, error = str(target), None
            elif error is None:
                error = {"code": job["state"], "message": f"the job was {job['state']}"}
            counts["ok" if error is None else "failed"] += 1
            lines[name] = manifest_line(str(path), output, error, variant, time.monotonic() - started)
            on_progress(len(lines), len(files), "items")

        _wait(client, pending, done)
        manifest = options.out / "manifest.jsonl"
        manifest.write_text("".join(lines[name] for name, _ in files))
        return {"manifest": str(manifest), "output": str(options.out), "total": len(files), **counts}


# ---- the command ----


def main(paths: list[Path], options: Options, url: str | None) -> int:
    """Run ``pixelfleet upscale`` with a rich progress bar; print a summary. Exit code: 0 all
    done, 1 some items failed or the app answered an error, 2 bad arguments."""
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from pixelfleet.models.errors import PixelfleetError

    console = Console(stderr=True)
    try:
        video = is_video(paths)
        if not video:
            image_files(paths)
    except ValueError as err:
        console.print(f"[red]{err}[/]")
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("frames" if video else "images", total=None)

        def on_progress(done: int, total: int, stage: str) -> None:
            progress.update(task, completed=done, total=total, description=stage)

        try:
            summary = run_remote(paths, options, url, on_progress) if url else run_local(paths, options, on_progress)
        except AdminError as err:
            console.print(f"[red]error {err.status}{f' ({err.code})' if err.code else ''}: {err.message}[/]")
            return 1
        except httpx.HTTPError as err:
            console.print(f"[red]cannot reach {url}: {err}[/]")
            return 1
        except PixelfleetError as err:
            console.print(f"[red]{err.code}: {err.message}[/]")
            return 1
    print(json.dumps(summary, indent=2))
    return 1 if summary.get("failed") else 0
