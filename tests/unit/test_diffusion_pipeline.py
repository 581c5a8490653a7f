"""The diffusion family without Ray, on the tiny SD pipeline: safe model loading, one pipeline
call per group (a job's images do not depend on the other jobs of its call), the step callback
that stops a streamed request, and the adapter catalog."""

from __future__ import annotations

import numpy as np
import pytest
from pixelfleet.deployments.diffusion import pipeline
from pixelfleet.deployments.diffusion.adapters import AdapterCatalog, check_fits
from pixelfleet.models.errors import (
    CorruptModelFile,
    ModelFileError,
    ModelFileNotFound,
    NotFound,
    Unprocessable,
    UnrecognizedModelFile,
    UnsafeModelFile,
)
from pixelfleet.models.modelfiles import inspect

from tests import tinysd


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipes(tiny_sd):
    return pipeline.load_pipelines(str(tiny_sd["folder"]))


def _job(prompt: str, seed: int, n: int = 1, **kw) -> pipeline.Job:
    return pipeline.Job("txt2img", prompt, "", 3, 7.5, 16, 16, seed, n, None, (), **kw)


def _none(pipe, jobs) -> None:
    pass


def test_unsafe_or_unreadable_models_are_refused(tmp_path, tiny_sd):
    with pytest.raises(ModelFileNotFound):
        pipeline.check_model_path(str(tmp_path / "missing"), allow_pickle=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnrecognizedModelFile):
        pipeline.check_model_path(str(tmp_path / "empty"), allow_pickle=False)
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeModelFile, match="allow_pickle"):
        pipeline.check_model_path(str(tmp_path / "model.ckpt"), allow_pickle=False)
    data = tiny_sd["single_file"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelFile) as err:
        pipeline.load_pipelines(str(tmp_path / "cut.safetensors"), config=str(tiny_sd["folder"]))
    assert str(tmp_path) not in err.value.message  # file names, never paths


def test_same_seed_same_images_and_batches_do_not_leak(pipes):
    alone_a = pipeline.run_group(pipes, [_job("a red cat", 1)], _none)[0]
    alone_b = pipeline.run_group(pipes, [_job("the sea", 5, n=2)], _none)[0]
    together = pipeline.run_group(pipes, [_job("a red cat", 1), _job("the sea", 5, n=2)], _none)
    assert alone_a.shape == (1, 16, 16, 3) and together[1].shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(pipeline.run_group(pipes, [_job("a red cat", 1)], _none)[0], alone_a)
    np.testing.assert_allclose(together[0], alone_a, atol=1e-4)  # float sums of a batch round differently
    np.testing.assert_allclose(together[1], alone_b, atol=1e-4)
    assert np.abs(alone_a - alone_b[:1]).max() > 0.1
    euler = _job("a red cat", 1)
    euler.scheduler = "EulerDiscreteScheduler"
    assert np.abs(pipeline.run_group(pipes, [euler], _none)[0] - alone_a).max() > 1e-3
    np.testing.assert_array_equal(pipeline.run_group(pipes, [_job("a red cat", 1)], _none)[0], alone_a)


def test_step_callback_counts_and_interrupts(pipes):
    seen = []

    def on_step(step: int, total: int) -> None:
        seen.append((step, total))
        if step == 2:
            raise pipeline.Interrupted(step)

    with pytest.raises(pipeline.Interrupted):
        pipeline.run_group(pipes, [_job("a", 0)], _none, on_step)
    assert seen == [(1, 3), (2, 3)]


def test_encode_images_round_trip():
    images = np.random.default_rng(0).random((2, 8, 16, 3)).astype(np.float32)
    encoded = pipeline.encode_images(images, "png")
    import base64
    import io

    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded[1]))))
    assert len(encoded) == 2 and decoded.shape == (8, 16, 3)
    assert np.abs(decoded / 255.0 - images[1]).max() <= 0.5 / 255 + 1e-6


def test_adapter_catalog(tmp_path, tiny_sd):
    folder = tmp_path / "loras"
    tinysd.make_lora(folder / "style.safetensors", rank=4)
    tinysd.make_lora_for_other_base(folder / "wide.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (folder / "notes.txt").write_text("not an adapter")
    catalog = AdapterCatalog([str(folder), str(tmp_path / "absent")])
    model = inspect(tiny_sd["folder"])
    listing = {a["id"]: a for a in catalog.listing(model)}
    assert set(listing) == {"style", "wide", "broken"}
    assert listing["style"]["rank"] == 4 and listing["style"]["fits"] and listing["style"]["cross_attention_dim"] == 32
    assert not listing["wide"]["fits"] and "48" in listing["wide"]["mismatch"]
    assert listing["style"]["base"] == "custom" and listing["style"]["style"] == "peft" and "path" not in listing["style"]
    assert listing["broken"]["error"]["code"] == "corrupt_model_file"
    with pytest.raises(NotFound):
        catalog.get("nope")
    with pytest.raises(ModelFileError):
        catalog.get("broken")
    with pytest.raises(Unprocessable, match="does not fit"):
        check_fits(catalog.get("wide"), model)
    check_fits(catalog.get("style"), model)
    tinysd.make_lora(folder / "later.safetensors", rank=2)  # appears on the next look-up
    assert catalog.get("later").rank == 2
