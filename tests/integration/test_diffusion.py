"""The diffusion family end to end on the tiny SD pipeline (``tests/tinysd.py``), in an app of its
own beside the session's (``sdapp``, route prefix ``/sdapp``): REST JSON and multipart, streaming
with disconnect, LoRA adapters (listing, 404/422, A1111 tags, batches of two adapter sets, a file
added while running), OIP v2, handles, and the same model from a single file."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import tinysd
from tests.conftest import synthetic_photo
from tests.integration.apps import beside_session
from tests.integration.conftest import png_bytes

pytestmark = pytest.mark.integration

APP = "sdapp"
BASE = {"prompt": "a red cat", "steps": 3, "width": 16, "height": 16, "seed": 7}
MAX_STEPS = 400


@pytest.fixture(scope="module")
def sd(app_url, tiny_sd, tmp_path_factory):
    """``(url, adapters folder)`` of app ``sdapp``: variant ``tiny`` (the diffusers folder, adapters
    from a folder holding ``tiny-style``, ``tiny-other`` and ``wide``, a LoRA for another base; at
    most 2 loaded at once, so the tests also evict) and ``single``
    (the same weights from the SD-layout single file)."""
    from ray.serve.schema import ServeApplicationSchema

    loras = tmp_path_factory.mktemp("loras")
    shutil.copy(tiny_sd["lora"], loras / "tiny-style.safetensors")
    shutil.copy(tiny_sd["lora_other_base"], loras / "wide.safetensors")
    tinysd.make_lora(loras / "tiny-other.safetensors", rank=8, seed=2)
    common = {"max_width": 64, "max_height": 64, "max_steps": MAX_STEPS, "max_images": 4, "num_threads": 1}
    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
        args={
            "families": {"diffusion": {"kind": "diffusion", "default": "tiny", "variants": {
                "tiny": {"model": str(tiny_sd["folder"]), "adapters": [str(loras)], "max_loaded_adapters": 2,
                         "max_adapters_per_request": 2, "max_batch_size": 8, "batch_wait_timeout_s": 0.3, **common},
                "single": {"model": str(tiny_sd["single_file"]), "config": str(tiny_sd["folder"]), "warmup": False, **common},
            }}},
            "state": {"path": str(tmp_path_factory.mktemp("sd-state") / "state.json")},
        },
        deployments=[
            {"name": "Ingress", "ray_actor_options": {"num_cpus": 0}},
            {"name": "diffusion-tiny", "max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0}},
            {"name": "diffusion-single", "ray_actor_options": {"num_cpus": 0}},
        ],
    )  # fmt: skip
    with beside_session(app):
        yield f"{app_url}/{APP}", loras


@pytest.fixture(scope="module")
def http(sd):
    with httpx.Client(base_url=sd[0], timeout=120) as client:
        yield client


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


def txt2img(http: httpx.Client, **fields) -> dict:
    response = http.post("/v1/diffusion/txt2img", json={**BASE, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def events_of(response: httpx.Response) -> list[tuple[str, dict]]:
    """Server-sent events as ``(event, data)``: ``event:`` and ``data:`` lines, blank-line separated."""
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.partition(":")[2])))
            name = "message"
    return events


def test_txt2img_same_seed_same_image(http):
    first, again, other = txt2img(http), txt2img(http), txt2img(http, seed=8)
    assert first["images"] == again["images"] and first["seeds"] == [7]
    assert first["media_type"] == "image/png" and (first["width"], first["height"]) == (16, 16)
    assert pixels(first["images"][0]).shape == (16, 16, 3)
    assert np.abs(pixels(first["images"][0]) - pixels(other["images"][0])).max() > 10
    two = txt2img(http, num_images=2)  # image i has seed + i: image 0 is the one-image answer's
    assert two["seeds"] == [7, 8] and two["images"][0] == first["images"][0]
    assert np.abs(pixels(two["images"][1]) - pixels(other["images"][0])).max() <= 1
    euler = txt2img(http, scheduler="EulerDiscreteScheduler")
    assert euler["scheduler"] == "EulerDiscreteScheduler" and euler["images"] != first["images"]
    assert txt2img(http, scheduler="EulerDiscreteScheduler")["images"] == euler["images"]
    assert txt2img(http)["images"] == first["images"]  # the default scheduler is back


@pytest.mark.parametrize(
    "fields, field",
    [({"steps": 0}, "steps"), ({"width": 12}, "width"), ({"guidance_scale": 99}, "guidance_scale"), ({"scheduler": "Nope"}, "scheduler"),
     ({"num_images": 17}, "num_images"), ({"prompt": ""}, "prompt"), ({"seed": -1}, "seed"), ({"colour": "red"}, "colour"),
     ({"loras": [{"id": "../etc/passwd"}]}, "loras"), ({"loras": [{"id": "a", "scale": 9}]}, "loras")],
)  # fmt: skip
def test_fields_are_validated(http, fields, field):
    assert field in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, **fields}), 422)


def test_variant_bounds_and_bad_bodies(http):
    assert "steps" in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, "steps": MAX_STEPS + 1}), 422)
    assert "64x64" in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, "width": 72}), 422)
    assert "num_images" in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, "num_images": 5}), 422)
    assert error_of(http.post("/v1/diffusion/txt2img", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert error_of(http.post("/v1/diffusion/txt2img", content=b"x", headers={"Content-Type": "text/plain"}), 415)
    assert "image" in error_of(http.post("/v1/diffusion/img2img", json=BASE), 422)
    assert "base64" in error_of(http.post("/v1/diffusion/img2img", json={**BASE, "image": "%%%"}), 422)


def test_img2img_and_inpaint_json_and_multipart(http):
    photo = png_bytes(synthetic_photo(16, 16, seed=3))
    mask = np.zeros((16, 16, 1), np.uint8)
    mask[4:12, 4:12] = 255
    fields = {**BASE, "strength": 0.6}
    as_json = http.post("/v1/diffusion/img2img", json={**fields, "image": base64.b64encode(photo).decode()})
    form = {k: str(v) for k, v in fields.items()}
    as_form = http.post("/v1/diffusion/img2img", data=form, files={"image": ("p.png", photo, "image/png")})
    assert as_json.status_code == as_form.status_code == 200, as_json.text + as_form.text
    assert as_json.json()["images"] == as_form.json()["images"]
    assert as_json.json()["images"] != txt2img(http)["images"]
    def inpaint(mask: np.ndarray, prompt: str) -> np.ndarray:
        files = {"image": ("p.png", photo, "image/png"), "mask": ("m.png", png_bytes(mask), "image/png")}
        response = http.post("/v1/diffusion/inpaint", data={**form, "prompt": prompt}, files=files)
        assert response.status_code == 200, response.text
        return pixels(response.json()["images"][0])

    # outside the mask the final latents are the input's: under a black mask (repaint nothing)
    # the prompt changes nothing, under a white one (repaint everything) it does
    keep, repaint = np.zeros((16, 16, 1), np.uint8), np.full((16, 16, 1), 255, np.uint8)
    assert np.array_equal(inpaint(keep, "a red cat"), inpaint(keep, "the blue sea"))
    assert np.abs(inpaint(repaint, "a red cat") - inpaint(repaint, "the blue sea")).max() > 0
    assert np.abs(inpaint(mask, "a red cat") - inpaint(mask, "the blue sea")).max() > 0
    missing = http.post("/v1/diffusion/inpaint", data=form, files={"image": ("p.png", photo, "image/png")})
    assert "mask" in error_of(missing, 422)


def test_loras_listed_checked_and_applied(http, sd):
    listing = http.get("/v1/diffusion/loras")
    assert listing.status_code == 200, listing.text
    adapters = {a["id"]: a for a in listing.json()["adapters"]}
    assert adapters["tiny-style"]["rank"] == 4 and adapters["tiny-style"]["fits"] is True
    assert adapters["tiny-style"]["cross_attention_dim"] == 32
    assert adapters["wide"]["fits"] is False and adapters["wide"]["cross_attention_dim"] == 48
    assert "path" not in adapters["wide"]
    assert "nope" in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, "loras": [{"id": "nope"}]}), 404)
    assert "wide" in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, "loras": [{"id": "wide"}]}), 422)
    plain = txt2img(http)
    styled = txt2img(http, loras=[{"id": "tiny-style", "scale": 1.0}])
    assert np.abs(pixels(styled["images"][0]) - pixels(plain["images"][0])).max() > 10
    tagged = txt2img(http, prompt="a red <lora:tiny-style:1> cat")
    assert tagged["prompt"] == "a red cat" and tagged["loras"] == [{"id": "tiny-style", "scale": 1.0}]
    assert tagged["images"] == styled["images"]
    assert txt2img(http, loras=[{"id": "tiny-style", "scale": 0.0}])["images"] == plain["images"]
    assert "twice" in error_of(http.post("/v1/diffusion/txt2img", json={**BASE, "prompt": "<lora:tiny-style> a", "loras": [{"id": "tiny-style"}]}), 422)
    # a file added while the app runs is listed and served without a restart
    tinysd.make_lora(sd[1] / "fresh.safetensors", rank=2, seed=5)
    fresh = {a["id"]: a for a in http.get("/v1/diffusion/loras").json()["adapters"]}["fresh"]
    assert fresh["rank"] == 2 and fresh["fits"]
    assert txt2img(http, prompt="a red cat <lora:fresh:0.8>")["images"] != plain["images"]


def test_two_adapter_sets_batched_apart(http):
    """Concurrent requests of two adapter sets: each answer equals the one made alone (within one
    level of 255: a batch's float sums round differently), and same-set requests share calls."""
    sets = {"a": [{"id": "tiny-style", "scale": 1.0}], "b": [{"id": "tiny-other", "scale": 0.7}, {"id": "tiny-style", "scale": 0.3}]}
    requests = [(name, seed) for seed in (11, 12, 13) for name in sets]
    alone = {(name, seed): txt2img(http, seed=seed, loras=sets[name])["images"][0] for name, seed in requests}
    assert np.abs(pixels(alone["a", 11]) - pixels(alone["b", 11])).max() > 10
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: txt2img(http, seed=r[1], loras=sets[r[0]]), requests))
    for (name, seed), answer in zip(requests, answers):
        assert np.abs(pixels(answer["images"][0]) - pixels(alone[name, seed])).max() <= 1, (name, seed)
    assert max(answer["batch_images"] for answer in answers) >= 2  # some same-set requests shared a call


def test_stream_progress_then_result(http):
    with http.stream("POST", "/v1/diffusion/txt2img/stream", json={**BASE, "steps": 4}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = events_of(response)
    names = [name for name, _ in events]
    assert names == ["accepted", "progress", "progress", "progress", "progress", "result"]
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2, 3, 4]
    assert all(data["steps"] == 4 for name, data in events if name == "progress")
    assert events[-1][1]["images"] == txt2img(http, steps=4)["images"]
    assert "steps" in error_of(http.post("/v1/diffusion/txt2img/stream", json={**BASE, "steps": 0}), 422)


def test_stream_disconnect_stops_denoising(http):
    from ray import serve

    replica = serve.get_deployment_handle("diffusion-tiny", app_name=APP)
    before = replica.info.remote().result()["interrupted"]
    with http.stream("POST", "/v1/diffusion/txt2img/stream", json={**BASE, "steps": MAX_STEPS}) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data:") and '"step"' in line
            if seen >= 3:
                break  # the client goes away mid-way
    deadline = time.monotonic() + 30
    while (info := replica.info.remote().result())["interrupted"] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info["interrupted"] == before + 1
    assert info["last_interrupted_step"] < MAX_STEPS


def test_oip_v2(http):
    prompt = {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [BASE["prompt"]]}
    body = {"parameters": {"operation": "txt2img", **{k: v for k, v in BASE.items() if k != "prompt"}}, "inputs": [prompt]}
    response = http.post("/v2/models/diffusion/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "json"
    assert json.loads(output["data"][0])["images"] == txt2img(http)["images"]
    photo = base64.b64encode(png_bytes(synthetic_photo(16, 16, seed=3))).decode()
    body = {"parameters": {"operation": "img2img", **BASE, "strength": 0.6, "loras": '[{"id": "tiny-style"}]'},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [photo], "parameters": {"content_type": "base64"}}]}  # fmt: skip
    response = http.post("/v2/models/diffusion/infer", json=body)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["outputs"][0]["data"][0])["loras"] == [{"id": "tiny-style", "scale": 1.0}]
    metadata = http.get("/v2/models/diffusion").json()
    operations = {op["name"]: op for op in metadata["pixelfleet"]["operations"]}
    assert [i["name"] for i in operations["inpaint"]["signatures"][0]["inputs"]] == ["image", "mask"]
    assert metadata["inputs"] == [] and metadata["outputs"][0]["name"] == "json"  # txt2img: no image in
    bad = http.post("/v2/models/diffusion/infer", json={"parameters": {"operation": "img2img", **BASE}, "inputs": [prompt]})
    assert bad.status_code == 400 and "image" in bad.json()["error"]


def test_handle_calls_and_stream(http):
    from ray import serve

    handle = serve.get_app_handle(APP)
    answer = handle.txt2img.remote(**BASE).result()
    assert answer["images"] == txt2img(http)["images"]
    photo = png_bytes(synthetic_photo(16, 16, seed=3))
    by_handle = handle.img2img.remote(photo, **BASE, strength=0.6).result()  # one image's bytes: input "image"
    by_rest = http.post("/v1/diffusion/img2img", json={**BASE, "strength": 0.6, "image": base64.b64encode(photo).decode()})
    assert by_handle["images"] == by_rest.json()["images"]
    assert handle.inpaint.remote({"image": photo, "mask": photo}, **BASE).result()["width"] == 16
    events = list(handle.options(stream=True).txt2img_stream.remote(**{**BASE, "steps": 2}))
    assert [e["event"] for e in events] == ["accepted", "progress", "progress", "result"]


def test_single_file_variant_matches_folder(http):
    response = http.post("/v1/diffusion/txt2img", params={"model": "single"}, json=BASE)
    assert response.status_code == 200, response.text
    assert response.headers["x-pixelfleet-variant"] == "diffusion/single"
    assert response.json()["images"] == txt2img(http)["images"]


def test_openapi_schema_from_the_params(http):
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/v1/diffusion/txt2img"]["post"]["requestBody"]["content"]
    prompt = body["application/json"]["schema"]["properties"]["prompt"]
    assert prompt["maxLength"] == 4000 and "prompt" in body["application/json"]["schema"]["required"]
    assert body["application/json"]["schema"]["properties"]["loras"]["items"]["properties"]["scale"]["maximum"] == 4.0
    img2img = spec["paths"]["/v1/diffusion/img2img"]["post"]["requestBody"]["content"]
    assert img2img["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert "/v1/diffusion/txt2img/stream" in spec["paths"] and "/v1/diffusion/loras" in spec["paths"]
