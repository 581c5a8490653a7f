"""The access-log middleware (serve/access_log.py) around a small FastAPI app, without Ray."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from pixelfleet.serve.access_log import MARKER, AccessLogMiddleware, console_line, format_line, logger


def app_with_log() -> FastAPI:
    api = FastAPI()

    @api.post("/v1/{family}/run")
    async def run(family: str) -> Response:
        return Response("ok", headers={"X-Pixelfleet-Variant": f"{family}/small"})

    @api.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    api.add_middleware(AccessLogMiddleware, request_id=lambda: "req-1")
    return api


def test_one_line_per_request_with_route_template_status_variant_and_id(caplog):
    client = TestClient(app_with_log(), raise_server_exceptions=False)
    logger.addHandler(caplog.handler)  # the logger does not propagate to the root's handlers
    try:
        assert client.post("/v1/ocr/run").status_code == 200
        assert client.get("/nowhere").status_code == 404
        assert client.get("/boom").status_code == 500
    finally:
        logger.removeHandler(caplog.handler)
    lines = [record.getMessage() for record in caplog.records if record.name == "pixelfleet.access"]
    assert len(lines) == 3
    method, route, status, variant, ms, unit, request_id = lines[0].split()
    assert (method, route, status, variant, unit, request_id) == ("POST", "/v1/{family}/run", "200", "ocr/small", "ms", "req-1")
    assert float(ms) >= 0
    assert lines[1].split()[:4] == ["GET", "-", "404", "-"]
    assert lines[2].split()[:4] == ["GET", "/boom", "500", "-"]


def test_console_line_picks_marked_lines_only():
    line = format_line("GET", "/healthz", 200, "", 3.2, "abc")
    assert line == "GET /healthz 200 - 3 ms abc"
    assert console_line(f"(ServeReplica:pixelfleet:Ingress pid=12) {MARKER}{line}") == line
    assert console_line("INFO 2026-12-02 replica.py:123 -- Started replica") is None
