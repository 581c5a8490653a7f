"""A reference for pixelfleet's per-request cost: the bench's pipeline in a bare Ray Serve app of
pixelfleet's shape (bench-only).

``bench/serving.py`` runs it as the server ``serve``: the same :class:`serving_pipeline.Pipeline`
as the plain FastAPI server (same decode, model, tiles, PNG level, Tesseract engines), placed in
the graph that ``pixelfleet up`` deploys, with nothing of pixelfleet's serving code::

    HTTP -> Serve's proxy -> Front (FastAPI ingress) -> handle call -> SuperRes / OCR replica

``Front`` forwards the raw body to the family's replica and returns its answer: no auth, no
validation, no A/B choice, no spans or metrics, no access line. Its throughput and latency
against the plain server are what Ray Serve's two extra processes per request cost on this
machine for this pipeline. It is not a strict lower bound for pixelfleet, whose replicas differ
(tile batches, two forward passes at once, an engine pool), but a goal this app misses by far is
beyond what Ray Serve's hops leave on this CPU.

Ray is started and the app deployed as ``pixelfleet up`` does it (its worker setup hook that keeps
pandas and pyarrow out of Serve's processes, no dashboard, Serve's logs to files; a Serve config
with an import path, ``bare_serve:app``, so Serve's build task imports the app in a fresh worker),
so its start to ready is a reference for ``up``'s too. Each family replica reserves 1 logical
CPU; torch uses 2 threads, 2 Tesseract engines, as the plain server. Run by the bench as::

    python bench/bare_serve.py --port PORT

and ready when ``GET /healthz`` answers 200 (Serve's proxy answers 404 until the app runs);
SIGTERM stops Ray.
"""

# (no `from __future__ import annotations`: FastAPI reads the route annotations of the pickled class)

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from pixelfleet.serve.skip_imports import skip_unused_imports  # noqa: E402

skip_unused_imports()  # before Ray and Serve come in, as `pixelfleet up` does: no pandas, no pyarrow

from fastapi import FastAPI, Request, Response  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.handle import DeploymentHandle  # noqa: E402

front_api = FastAPI(title="bare Ray Serve pipeline (bench)")


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class Family:
    """One family of the plain server's pipeline in a replica: ``superres`` (raw image bytes ->
    x4 PNG bytes, one model call at a time on 2 torch threads) or ``ocr`` (raw image bytes ->
    the result dict, 2 Tesseract engines)."""

    def __init__(self, family: str) -> None:
        sys.path.insert(0, str(BENCH))
        from serving_pipeline import Pipeline

        pipeline = Pipeline(sr_workers=1, ocr_workers=2, families=(family,))
        self.run = pipeline.upscale if family == "superres" else pipeline.ocr

    async def __call__(self, body: bytes) -> bytes | dict:
        """An encoded image -> PNG bytes (``superres``) or the OCR result dict (``ocr``). Raises
        what the pipeline raises for a bad image (InvalidInput, PayloadTooLarge; a 500 here)."""
        return await asyncio.to_thread(self.run, body)

    def ready(self) -> bool:
        """True: the constructor (model load) has returned."""
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(front_api)
class Front:
    """The ingress: forwards the body to the family's replica (one handle call, as pixelfleet's)."""

    def __init__(self, superres: DeploymentHandle, ocr: DeploymentHandle) -> None:
        self.superres, self.ocr = superres, ocr

    @front_api.get("/healthz")
    async def healthz(self) -> dict:
        """200 once both replicas answer (the models are loaded in their constructors)."""
        await asyncio.gather(self.superres.ready.remote(), self.ocr.ready.remote())
        return {"ok": True}

    @front_api.post("/v1/superres")
    async def upscale(self, request: Request) -> Response:
        """Raw image body -> x4 upscale as PNG."""
        return Response(await self.superres.remote(await request.body()), media_type="image/png")

    @front_api.post("/v1/ocr")
    async def ocr_line(self, request: Request) -> JSONResponse:
        """Raw image body -> ``{"text", "lines"}``."""
        return JSONResponse(await self.ocr.remote(await request.body()))


app = Front.bind(Family.options(name="SuperRes").bind("superres"), Family.options(name="OCR").bind("ocr"))


def main(argv: list[str] | None = None) -> int:
    """Start Ray, deploy ``app`` from a config, serve until SIGTERM or SIGINT. Returns the exit
    code: 0 after a signal, 1 when the app's deploy failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import ray
    from pixelfleet.ray_private import serve_start
    from pixelfleet.serve.skip_imports import SETUP_HOOK
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    stop = threading.Event()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, runtime_env={"worker_process_setup_hook": SETUP_HOOK})
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after ray.init, whose own handler aborts
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    http = {"host": "127.0.0.1", "port": args.port}
    client = serve_start(http, "HeadOnly")
    schema = ServeDeploySchema.model_validate({
        "http_options": http, "proxy_location": "HeadOnly",
        "applications": [{"name": "bare", "route_prefix": "/", "import_path": "bare_serve:app",
                          "runtime_env": {"env_vars": {"PYTHONPATH": str(BENCH), "HF_HUB_OFFLINE": "1"}}}],
    })  # fmt: skip
    client.deploy_apps(schema, _blocking=False)  # as `pixelfleet up` deploys: Serve's build task imports the app
    print(f"bare Ray Serve pipeline deploying at http://127.0.0.1:{args.port}", flush=True)
    while not stop.wait(0.5):  # until the app runs (then no more controller calls from here) or fails
        status = serve.status().applications.get("bare")
        if status is not None and status.status == ApplicationStatus.RUNNING:
            break
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            print(f"the bare app failed to deploy: {status.message}", flush=True)
            ray.shutdown()
            return 1
    stop.wait()
    ray.shutdown()  # the bench signals the whole process group: Ray's own processes stop with it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
