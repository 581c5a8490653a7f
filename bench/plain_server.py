"""A plain single-process FastAPI + uvicorn server of the pixelfleet pipeline: the baseline of
`bench/serving.py` (bench-only).

One uvicorn worker, no Ray: ``POST /v1/superres`` (raw image body -> x4 PNG) and ``POST /v1/ocr``
(raw image body -> the OCR JSON), both through :class:`serving_pipeline.Pipeline` (the replica's
upscaler and Tesseract engine, same decode and PNG level), run in Starlette's thread pool so
decoding and encoding overlap the model. ``BENCH_SR_WORKERS`` (default 1: one model call at a
time on 2 torch threads, as the replica) and ``BENCH_OCR_WORKERS`` (default 2 engines) set the
pipeline. Run by the bench as::

    uvicorn plain_server:app --app-dir bench --port PORT --workers 1
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from serving_pipeline import Pipeline

pipeline = Pipeline(sr_workers=int(os.environ.get("BENCH_SR_WORKERS", "1")), ocr_workers=int(os.environ.get("BENCH_OCR_WORKERS", "2")))
app = FastAPI(title="plain pipeline server (bench)")


@app.get("/healthz")
async def healthz() -> dict:
    """200 once the models are loaded (module import loads them)."""
    return {"ok": True}


@app.post("/v1/superres")
async def upscale(request: Request) -> Response:
    """Raw image body -> x4 upscale as PNG (``image/png``)."""
    return Response(await run_in_threadpool(pipeline.upscale, await request.body()), media_type="image/png")


@app.post("/v1/ocr")
async def ocr(request: Request) -> JSONResponse:
    """Raw image body -> ``{"text", "lines"}``."""
    return JSONResponse(await run_in_threadpool(pipeline.ocr, await request.body()))
