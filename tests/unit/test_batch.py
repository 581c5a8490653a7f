"""jobs/batch.py without Ray: item planning, the manifest, and whole batches (a list, a prefix, a
zip) run through the real shipped x2 model in this process (jobs/local.py), with a bad image
failing only its item and a run that dies mid-way resuming from its checkpoint."""

from __future__ import annotations

import asyncio
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pixelfleet.jobs import batch
from pixelfleet.jobs.batch import BatchParams, plan_items, read_manifest
from pixelfleet.jobs.local import LocalContext, LocalUpscaler
from pixelfleet.jobs.storage import Storage, StorageConfig
from pixelfleet.models.errors import InvalidInput, ModelUnavailable, Unprocessable
from tests.conftest import synthetic_photo
from tests.unit.crashing import CrashingContext


def png(seed: int, size: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_photo(size, size, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def upscaler() -> LocalUpscaler:
    return LocalUpscaler(scale=2, tile_size=16, overlap=4, num_threads=1)


@pytest.fixture
def storage(tmp_path) -> Storage:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    return Storage(StorageConfig(roots=[str(tmp_path / "in")], results=str(tmp_path / "out")))


def test_plan_items_unique_stems_and_refusals() -> None:
    items = plan_items(["a.jpg", "a.png", "sub/b.tif", "noext", "a.jpg", "a.jpg"])
    assert [i.stem for i in items] == ["a", "a.png", "sub/b", "noext", "a.jpg", "a.jpg.5"]
    for bad in ("../x.png", "/abs.png", "a/./b.png", "a\\b.png", ""):
        with pytest.raises(InvalidInput):
            plan_items([bad])


def test_params_need_exactly_one_source(storage, tmp_path) -> None:
    with pytest.raises(Unprocessable):
        batch.validate({"operation": "upscale"}, storage)
    with pytest.raises(Unprocessable):
        batch.validate({"operation": "upscale", "prefix": str(tmp_path / "in"), "zip": str(tmp_path / "in" / "a.zip")}, storage)
    with pytest.raises(Unprocessable):
        batch.validate({"operation": "batch", "prefix": str(tmp_path / "in")}, storage)
    with pytest.raises(InvalidInput):
        batch.validate({"operation": "upscale", "inputs": ["/etc/passwd"]}, storage)
    with pytest.raises(InvalidInput):  # another job's results are no input
        batch.validate({"operation": "upscale", "prefix": str(tmp_path / "out" / "other-job")}, storage)
    with pytest.raises(Unprocessable):  # results go to the job's own folder, nowhere else (another job's, say)
        batch.validate({"operation": "upscale", "prefix": str(tmp_path / "in"), "output": str(tmp_path / "out" / "victim")}, storage)
    assert isinstance(batch.validate({"operation": "upscale", "prefix": str(tmp_path / "in")}, storage), BatchParams)


def test_prefix_batch_with_a_bad_image(storage, tmp_path, upscaler) -> None:
    (tmp_path / "in" / "a.png").write_bytes(png(1))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "in" / "sub" / "c.png").write_bytes(png(3, size=10))
    seen = []
    ctx = LocalContext(upscaler, {"operation": "upscale", "prefix": str(tmp_path / "in"), "params": {"format": "png"}, "chunk_size": 2},
                       on_progress=lambda done, total, stage: seen.append((done, total, stage)))  # fmt: skip
    done = asyncio.run(batch.run_batch(ctx, storage))
    assert done["result"]["total"] == 3 and done["result"]["ok"] == 2 and done["result"]["failed"] == 1 and done["variant"] == "srresnet-x2"
    rows = read_manifest((tmp_path / "out" / ctx.job_id / "manifest.jsonl").read_text())
    assert [r["input"] for r in rows] == ["a.png", "broken.png", "sub/c.png"]  # names below the prefix: no server path
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["error"]["code"] == "invalid_input" and rows[1]["output"] is None
    assert rows[2]["output"] == "sub/c.png" and rows[0]["variant"] == "srresnet-x2" and rows[0]["seconds"] > 0
    assert Image.open(tmp_path / "out" / ctx.job_id / "sub" / "c.png").size == (20, 20)  # x2 of 10x10
    assert sorted(seen)[-1] == (3, 3, "items") and len(seen) == 3
    assert ctx.checkpoints[-2]["next"] == 3 and len(ctx.checkpoints) == 3  # one per chunk of 2, then the result
    assert ctx.checkpoints[-1]["done"] == done
    assert not (tmp_path / "out" / ctx.job_id / ".manifest-parts").exists()


def test_zip_batch_resumes_after_a_crash(storage, tmp_path, upscaler) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(5):
            archive.writestr(f"photos/{n}.png", png(10 + n))
        archive.writestr("photos/readme.txt", "not an image")
    (tmp_path / "in" / "photos.zip").write_bytes(buffer.getvalue())
    params = {"operation": "upscale", "zip": str(tmp_path / "in" / "photos.zip"), "chunk_size": 2, "concurrency": 1}
    first = CrashingContext(upscaler, params, crash_on=4, job_id="job-zip")
    with pytest.raises(ModelUnavailable):  # 5xx: the whole run fails, so the worker retries the job
        asyncio.run(batch.run_batch(first, storage))
    assert first.checkpoints[-1]["next"] == 2  # the first chunk was done when it died (in the second)
    second = CrashingContext(upscaler, params, resume_state=first.checkpoints[-1], job_id="job-zip")
    done = asyncio.run(batch.run_batch(second, storage))
    assert second.calls == 4  # from item 2 on: three images and the text file (the first chunk is not redone)
    rows = read_manifest((tmp_path / "out" / "job-zip" / "manifest.jsonl").read_text())
    assert [r["input"] for r in rows] == [*(f"photos/{n}.png" for n in range(5)), "photos/readme.txt"]
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed"] and done["result"] == {
        "manifest": "manifest.jsonl", "total": 6, "ok": 5, "failed": 1,
    }  # fmt: skip
    for n in range(5):
        assert np.asarray(Image.open(tmp_path / "out" / "job-zip" / "photos" / f"{n}.png")).shape == (24, 24, 3)


def test_list_batch_with_a_missing_file_and_another_format(storage, tmp_path, upscaler) -> None:
    (tmp_path / "in" / "a.png").write_bytes(png(5))
    params = {"operation": "upscale", "inputs": [str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "gone.png")],
              "params": {"format": "jpeg"}}  # fmt: skip
    done = asyncio.run(batch.run_batch(LocalContext(upscaler, params, job_id="mine"), storage))
    rows = read_manifest((tmp_path / "out" / "mine" / "manifest.jsonl").read_text())
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[1]["error"]["code"] == "not_found"
    assert rows[0]["input"] == str(tmp_path / "in" / "a.png") and rows[0]["output"] == "a.jpg" and Image.open(tmp_path / "out" / "mine" / "a.jpg").format == "JPEG"
    assert done["result"]["failed"] == 1 and done["media_type"] == "application/x-ndjson"


def test_cli_upscale_here_without_an_app(tmp_path) -> None:
    """``pixelfleet upscale DIR --out DIR`` without --url: the batch runs in this process."""
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / "a.png").write_bytes(png(7))
    (tmp_path / "photos" / "sub" / "b.png").write_bytes(png(8, size=10))
    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--scale", "2", "--format", "webp"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "sub" / "b.webp").size == (20, 20) and Image.open(tmp_path / "out" / "a.webp").format == "WEBP"
    rows = read_manifest((tmp_path / "out" / "manifest.jsonl").read_text())
    assert [(r["status"], r["variant"]) for r in rows] == [("ok", "srresnet-x2")] * 2
    missing = CliRunner().invoke(app, ["upscale", str(tmp_path / "nothing"), "--out", str(tmp_path / "out2")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
