"""Batch and video jobs, S3 storage and signed webhooks through the session's running app
(``/v1/jobs``): inputs in the session's S3 server (moto, ``conftest.s3_options``), results in its
local results root, webhooks to a receiver in this test that fails twice then succeeds, and
``pixelfleet upscale --url`` against the app."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from pathlib import Path

import fsspec
import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook

from tests.conftest import synthetic_photo
from tests.integration.conftest import S3_INPUTS, WEBHOOK_SECRET, png_bytes
from tests.unit.test_video import FRAMES, SIDE, make_video, probe

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "cancelled"}
OWNER = {"X-Client-Id": "jobs-io"}


def wait_for(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    """Poll the job until it has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=OWNER).json()
        if job["state"] in TERMINAL or time.monotonic() > deadline:
            assert job["state"] in TERMINAL, job
            return job
        time.sleep(0.2)


def results_root() -> Path:
    """The session app's local results root (``jobs.storage.results`` of its deployed config)."""
    from pixelfleet.serve import control

    app = next(a for a in control.deployed_config().applications if a.name == "pixelfleet")
    return Path(app.args["jobs"]["storage"]["results"])


@pytest.fixture(scope="module")
def s3(s3_options) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("s3", skip_instance_cache=True, **s3_options)


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: 503 to the first two deliveries, then 204; keeps what it got."""

    got: ClassVar[list[tuple[dict, bytes]]] = []

    def do_POST(self) -> None:  # http.server's method name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(503 if len(self.got) <= 2 else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/pixelfleet"
    server.shutdown()
    server.server_close()


def test_batch_from_s3_with_a_bad_image_and_a_signed_webhook(client, s3, receiver) -> None:
    s3.pipe_file(f"{S3_INPUTS}/batch/a.png", png_bytes(synthetic_photo(16, 16, seed=1)))
    s3.pipe_file(f"{S3_INPUTS}/batch/deep/b.png", png_bytes(synthetic_photo(12, 20, seed=2)))
    s3.pipe_file(f"{S3_INPUTS}/batch/broken.png", b"not an image")
    body = {
        "family": "superres", "operation": "batch", "callback_url": receiver,
        "params": {"operation": "upscale", "prefix": f"s3://{S3_INPUTS}/batch/", "model": "srresnet-x2", "params": {"format": "png"}},
    }  # fmt: skip
    answer = client.post("/v1/jobs", json=body, headers=OWNER)
    assert answer.status_code == 202, answer.text
    job = wait_for(client, answer.json()["id"])
    assert job["state"] == "succeeded" and job["progress"]["percent"] == 100 and job["variant"] == "superres/srresnet-x2"
    summary = client.get(f"/v1/jobs/{job['id']}/result", headers=OWNER).json()
    assert (summary["total"], summary["ok"], summary["failed"]) == (3, 2, 1)
    folder = results_root() / job["id"]  # the job's own results folder; the API shows no server path
    assert summary["manifest"] == "manifest.jsonl" and "/" not in json.dumps(summary).replace("manifest.jsonl", "")
    rows = [json.loads(line) for line in (folder / summary["manifest"]).read_text().splitlines()]
    assert [r["input"] for r in rows] == ["a.png", "broken.png", "deep/b.png"]  # names below the prefix
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"] and rows[1]["error"]["code"] == "invalid_input"
    assert Image.open(folder / rows[2]["output"]).size == (40, 24)  # x2 of 20x12, under its relative name
    assert rows[2]["output"] == "deep/b.png" and rows[0]["variant"] == "superres/srresnet-x2"
    # results belong to their job's owner: no request may name them as its input
    for refused in (
        {"family": "superres", "operation": "batch", "params": {"operation": "upscale", "prefix": str(folder)}},
        {"family": "superres", "operation": "upscale", "input": {"url": str(folder / rows[0]["output"])}},
    ):
        answer = client.post("/v1/jobs", json=refused, headers={"X-Client-Id": "someone-else"})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_input", answer.text
    # the webhook: refused twice by the receiver, then delivered; every attempt recorded in the job
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job['id']}", headers=OWNER).json()["webhook"]["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    webhook = client.get(f"/v1/jobs/{job['id']}", headers=OWNER).json()["webhook"]
    assert webhook["state"] == "delivered" and [d["status_code"] for d in webhook["deliveries"]] == [503, 503, 204]
    assert webhook["deliveries"][0]["next_attempt_at"] and webhook["deliveries"][2]["error"] is None
    headers, payload = Receiver.got[-1]
    event = Webhook(WEBHOOK_SECRET).verify(payload, headers)  # the receiver's check, as the README shows it
    assert event["type"] == "job.completed" and event["data"]["id"] == job["id"] and event["data"]["state"] == "succeeded"
    assert len({h["webhook-id"] for h, _ in Receiver.got}) == 1


def test_storage_urls_outside_the_roots_are_refused_at_submit(client, s3) -> None:
    s3.mkdir("elsewhere")
    for source in (
        {"prefix": "s3://elsewhere/"}, {"prefix": f"s3://{S3_INPUTS}/../elsewhere/"}, {"zip": "/etc/passwd"},
        {"inputs": ["http://example.com/a.png"]}, {"inputs": [f"s3://{S3_INPUTS}/a%2e%2e/b.png"]},
    ):  # fmt: skip
        body = {"family": "superres", "operation": "batch", "params": {"operation": "upscale", **source}}
        answer = client.post("/v1/jobs", json=body, headers=OWNER)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_input", (source, answer.text)
    body = {"family": "superres", "operation": "video", "params": {"input": f"s3://{S3_INPUTS}/clip.mp4", "codec": "nope"}}
    assert client.post("/v1/jobs", json=body, headers=OWNER).status_code == 422


def test_video_from_s3_through_the_app(client, s3, tmp_path) -> None:
    make_video(tmp_path / "clip.mp4")
    s3.put_file(str(tmp_path / "clip.mp4"), f"{S3_INPUTS}/videos/clip.mp4")
    body = {"family": "superres", "operation": "video",
            "params": {"input": f"s3://{S3_INPUTS}/videos/clip.mp4", "model": "srresnet-x2", "chunk_frames": 4}}  # fmt: skip
    answer = client.post("/v1/jobs", json=body, headers=OWNER)
    assert answer.status_code == 202, answer.text
    job = wait_for(client, answer.json()["id"])
    assert job["state"] == "succeeded", job
    result = client.get(f"/v1/jobs/{job['id']}/result", headers=OWNER)
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    out = tmp_path / "out.mp4"
    out.write_bytes(result.content)
    source, upscaled = probe(tmp_path / "clip.mp4"), probe(out)
    assert upscaled["size"] == (2 * SIDE, 2 * SIDE) and upscaled["frames"] == source["frames"] == FRAMES
    assert upscaled["rate"] == source["rate"] and upscaled["codec"] == source["codec"]
    assert abs(upscaled["duration_s"] - source["duration_s"]) < 0.15
    assert upscaled["audio"] == source["audio"] and upscaled["audio_packets"] == source["audio_packets"]
    assert job["variant"] == "superres/srresnet-x2" and job["progress"]["percent"] == 100


def test_cli_upscale_against_the_app(app_url, tmp_path) -> None:
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    (tmp_path / "photos").mkdir()
    for n in range(2):
        Image.fromarray(synthetic_photo(12, 16, seed=20 + n)).save(tmp_path / "photos" / f"{n}.jpg")
    (tmp_path / "photos" / "bad.png").write_bytes(b"nope")
    command = ["upscale", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--url", app_url, "--model", "srresnet-x2"]
    result = CliRunner().invoke(app, command, env={"PIXELFLEET_API_KEY": ""})
    assert result.exit_code == 1, result.output  # one item failed
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["status"], r["variant"]) for r in rows] == [("ok", "superres/srresnet-x2"), ("ok", "superres/srresnet-x2"), ("failed", None)]
    assert Image.open(tmp_path / "out" / "0.png").size == (32, 24) and rows[2]["error"]["code"] == "invalid_input"
    # run again: the same files and options are the same jobs (Idempotency-Key), nothing new is submitted
    with httpx.Client(base_url=app_url) as http:
        before = len(http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
        assert CliRunner().invoke(app, command, env={"PIXELFLEET_API_KEY": ""}).exit_code == 1
        assert len(http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before


def test_cli_upscale_a_video_against_the_app(app_url, tmp_path) -> None:
    """``pixelfleet upscale in.mp4 --out out.mp4 --url``: the video travels as the job's input."""
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    make_video(tmp_path / "in.mp4", frames=6)
    command = ["upscale", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "x2" / "out.mp4"), "--url", app_url, "--model", "srresnet-x2",
               "--chunk-frames", "4"]  # fmt: skip
    result = CliRunner().invoke(app, command, env={"PIXELFLEET_API_KEY": ""})
    assert result.exit_code == 0, result.output
    upscaled = probe(tmp_path / "x2" / "out.mp4")
    assert upscaled["size"] == (2 * SIDE, 2 * SIDE) and upscaled["frames"] == 6 and upscaled["audio"] == probe(tmp_path / "in.mp4")["audio"]
