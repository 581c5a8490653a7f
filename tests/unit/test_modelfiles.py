"""models/modelfiles: inspection of real files made here (SD 1.x/2.x/SDXL single files with the
real markers at their real widths, the tiny pipeline of tests/tinysd.py as a folder and a single
file, LoRAs in each key style, ONNX, the shipped SR weights) and safe loading (pickles refused,
truncated, bombed and mislabeled files refused before any tensor data is read)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixelfleet.models.errors import CorruptModelFile, ModelFileNotFound, UnrecognizedModelFile, UnsafeModelFile
from pixelfleet.models.modelcard import BUILTIN_WEIGHTS
from pixelfleet.models.modelfiles import inspect, load_state_dict, lora_base_matches, lora_mismatch, read_safetensors_header, sniff_format
from pixelfleet.models.srnet import load_model
from tests.modelfile_samples import U, kohya_lora, onnx_model, raw_safetensors, save, sd_checkpoint, synthetic_diffusers_folder, zeros


@pytest.mark.parametrize(
    "arch, in_channels, base, architecture, capabilities, text_dims",
    [
        ("sd1", 4, "sd1", "sd", ["txt2img", "img2img", "inpaint"], {"text_encoder": 768}),
        ("sd2", 4, "sd2", "sd", ["txt2img", "img2img", "inpaint"], {"text_encoder": 1024}),
        ("sdxl", 4, "sdxl", "sdxl", ["txt2img", "img2img", "inpaint"], {"text_encoder": 768, "text_encoder_2": 1280}),
        ("sd1", 9, "sd1", "sd", ["inpaint"], {"text_encoder": 768}),
    ],
)
def test_single_file_checkpoints_are_told_apart_by_keys_and_shapes(tmp_path, arch, in_channels, base, architecture, capabilities, text_dims):
    state = sd_checkpoint(arch, in_channels)
    info = inspect(save(tmp_path / f"{arch}.safetensors", state))
    assert (info.kind, info.format, info.base, info.architecture) == ("checkpoint", "safetensors", base, architecture)
    assert info.cross_attention_dim == state[f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    assert info.unet_in_channels == in_channels and info.capabilities == capabilities
    assert info.text_encoder_dims == text_dims
    # counts from the header equal the tensors' own, EMA left out of the total; memory by dtype
    used = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
    assert info.parameters == sum(v.numel() for v in used.values())
    assert info.memory.stored_bytes == sum(v.numel() * v.element_size() for v in used.values())
    floats = [v for v in used.values() if v.is_floating_point()]
    ints = sum(v.numel() * v.element_size() for v in used.values() if not v.is_floating_point())
    assert info.memory.fp16_bytes == 2 * sum(v.numel() for v in floats) + ints
    assert info.memory.fp32_bytes == 4 * sum(v.numel() for v in floats) + ints
    by_name = {c.name: c.parameters for c in info.components}
    assert by_name["ema"] == 1 and by_name["unet"] == sum(v.numel() for k, v in state.items() if k.startswith(U))
    assert any("EMA" in note for note in info.notes)


def test_sdxl_refiner_single_file(tmp_path):
    state = sd_checkpoint("sdxl")
    state[f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = zeros(32, 1280)
    state[f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"] = zeros(32, 1280)
    del state["conditioner.embedders.1.model.token_embedding.weight"], state["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"]
    state["conditioner.embedders.0.model.token_embedding.weight"] = zeros(6, 1280)
    info = inspect(save(tmp_path / "refiner.safetensors", state))
    assert (info.base, info.architecture, info.cross_attention_dim) == ("sdxl-refiner", "sdxl", 1280)
    assert info.text_encoder_dims == {"text_encoder_2": 1280} and "txt2img" not in info.capabilities


# ---- the tiny pipeline of tests/tinysd.py -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tinysd = pytest.importorskip("tests.tinysd")
    root = tmp_path_factory.mktemp("tinysd")
    return {
        "folder": tinysd.save_folder(root / "tiny"),
        "single": tinysd.save_single_file(root / "tiny.safetensors"),
        "lora": tinysd.make_lora(root / "loras" / "fits.safetensors", rank=4),
        "other": tinysd.make_lora_for_other_base(root / "loras" / "other.safetensors", rank=2),
    }


def test_tiny_pipeline_folder_and_single_file_agree(tiny):
    folder, single = inspect(tiny["folder"]), inspect(tiny["single"])
    index = json.loads((tiny["folder"] / "model_index.json").read_text())
    unet_config = json.loads((tiny["folder"] / "unet" / "config.json").read_text())
    assert folder.kind == "diffusers" and folder.class_name == index["_class_name"]
    classes = {c.name: c.class_name for c in folder.components}
    assert classes["unet"] == "UNet2DConditionModel" and classes["vae"] == "AutoencoderKL" and classes["text_encoder"] == "CLIPTextModel"
    assert single.kind == "checkpoint"
    for info in (folder, single):
        # its own widths, which no SD release has: "custom", with the width a LoRA must match
        assert info.architecture == "sd" and info.base == "custom"
        assert info.cross_attention_dim == unet_config["cross_attention_dim"] and info.unet_in_channels == 4
        assert info.capabilities == ["txt2img", "img2img", "inpaint"]
    weights = {c: load_file(str(next((tiny["folder"] / c).glob("*.safetensors")))) for c in ("unet", "vae", "text_encoder")}
    counts = {c: sum(t.numel() for t in w.values()) for c, w in weights.items()}
    assert {c.name: c.parameters for c in folder.components if c.name in counts} == counts
    assert {c.name: c.parameters for c in single.components} == counts  # the same weights, LDM keys
    assert folder.parameters == single.parameters == sum(counts.values())
    assert folder.memory.fp32_bytes == 4 * folder.parameters == 2 * folder.memory.fp16_bytes


def test_tiny_lora_style_rank_targets_and_fit(tiny):
    from tests.tinysd import LORA_TARGETS

    lora, other = inspect(tiny["lora"]), inspect(tiny["other"])
    assert lora.kind == "lora" and lora.lora.style == "peft"
    assert (lora.lora.rank, other.lora.rank) == (4, 2)
    assert lora.lora.target_modules == sorted(LORA_TARGETS) and lora.lora.components == ["unet"]
    assert not lora.lora.touches_text_encoder
    assert lora.cross_attention_dim == 32 and other.cross_attention_dim == 48
    assert lora.parameters == sum(t.numel() for t in load_file(str(tiny["lora"])).values())
    for model in (inspect(tiny["folder"]), inspect(tiny["single"])):
        assert lora_base_matches(lora, model)
        assert not lora_base_matches(other, model)
        assert "48" in lora_mismatch(other, model) and "32" in lora_mismatch(other, model)


def to_kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A peft-style ``unet.<module>.lora_A/B.weight`` state dict in kohya's key style."""
    out = {}
    for key, value in state.items():
        module, part = key.removeprefix("unet.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def test_tiny_lora_in_kohya_style_reads_the_same(tiny, tmp_path):
    peft = inspect(tiny["lora"])
    kohya = inspect(save(tmp_path / "kohya.safetensors", to_kohya(load_file(str(tiny["lora"])), alpha=2.0)))
    assert kohya.lora.style == "kohya" and kohya.lora.alpha == 2.0 and peft.lora.alpha is None
    for field in ("rank", "ranks", "layers", "target_modules", "components", "cross_attention_dim", "base", "architecture"):
        assert getattr(kohya.lora, field) == getattr(peft.lora, field), field
    assert kohya.parameters == peft.parameters + kohya.lora.layers  # one scalar alpha per layer
    assert lora_base_matches(kohya, inspect(tiny["folder"])) and lora_base_matches(kohya, inspect(tiny["single"]))
    other = inspect(save(tmp_path / "other.safetensors", to_kohya(load_file(str(tiny["other"])), alpha=2.0)))
    assert other.cross_attention_dim == 48 and not lora_base_matches(other, inspect(tiny["folder"]))


def test_tiny_lora_fit_is_checked_layer_by_layer_against_the_folder(tiny, tmp_path):
    model = inspect(tiny["folder"])
    state = load_file(str(tiny["lora"]))
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    moved = {k.replace("down_blocks.1.", "down_blocks.0.") if k.startswith(key) else k: v for k, v in state.items()}
    missing = inspect(save(tmp_path / "moved.safetensors", moved))  # down_blocks.0 has no attention
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in lora_mismatch(missing, model)
    wider = inspect(save(tmp_path / "wider.safetensors", {**state, f"{key}.lora_A.weight": torch.zeros(4, 48)}))
    assert wider.cross_attention_dim == 32  # the summary agrees; the layer does not
    assert "maps 48 -> 64 features, the model's maps 64 -> 64" in lora_mismatch(wider, model)
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    with_te = inspect(save(tmp_path / "te.safetensors", {**state, f"{te}.lora_A.weight": torch.zeros(2, 32), f"{te}.lora_B.weight": torch.zeros(32, 2)}))
    assert with_te.lora.touches_text_encoder and with_te.lora.ranks == [2, 4]
    assert lora_base_matches(with_te, model)


# ---- LoRA key styles, built here at real widths ---------------------------------------------------


def test_kohya_lora_sd1_with_text_encoder(tmp_path):
    path = save(tmp_path / "k.safetensors", kohya_lora(768, te={"lora_te": 768}), {"ss_base_model_version": "sd_v1"})
    info = inspect(path)
    lora = info.lora
    assert lora.style == "kohya" and lora.rank == 8 and lora.ranks == [4, 8] and lora.alpha == 4.0
    assert lora.target_modules == ["ff.net.0.proj", "q_proj", "to_k"]
    assert lora.components == ["text_encoder", "unet"] and lora.touches_text_encoder
    assert (info.base, info.architecture, info.cross_attention_dim) == ("sd1", "sd", 768)
    assert lora.text_encoder_dims == {"text_encoder": 768} and lora.base_hint == "ss_base_model_version=sd_v1"
    sd1 = inspect(save(tmp_path / "sd1.safetensors", sd_checkpoint("sd1")))
    sd2 = inspect(save(tmp_path / "sd2.safetensors", sd_checkpoint("sd2")))
    assert lora_base_matches(info, sd1) and not lora_base_matches(info, sd2)


def test_kohya_sdxl_lora_and_old_diffusers_style(tmp_path):
    sdxl_lora = inspect(save(tmp_path / "xl.safetensors", kohya_lora(2048, te={"lora_te1": 768, "lora_te2": 1280}, ldm_unet=True)))
    assert (sdxl_lora.base, sdxl_lora.architecture) == ("sdxl", "sdxl")
    assert sdxl_lora.lora.components == ["text_encoder", "text_encoder_2", "unet"]
    assert sdxl_lora.lora.text_encoder_dims == {"text_encoder": 768, "text_encoder_2": 1280}
    old = {  # diffusers before peft: <module>.lora.down/up.weight
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora.down.weight": torch.randn(16, 1024),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight": torch.randn(640, 16),
    }
    sd2_lora = inspect(save(tmp_path / "old.safetensors", old))
    assert (sd2_lora.lora.style, sd2_lora.lora.rank, sd2_lora.base, sd2_lora.lora.target_modules) == ("diffusers", 16, "sd2", ["to_v"])
    models = {arch: inspect(save(tmp_path / f"{arch}.safetensors", sd_checkpoint(arch))) for arch in ("sd1", "sd2", "sdxl")}
    assert [arch for arch, model in models.items() if lora_base_matches(sdxl_lora, model)] == ["sdxl"]
    assert [arch for arch, model in models.items() if lora_base_matches(sd2_lora, model)] == ["sd2"]
    assert "text_encoder_2" in lora_mismatch(sdxl_lora, models["sd1"]) or "2048" in lora_mismatch(sdxl_lora, models["sd1"])


def test_peft_adapter_folder_takes_alpha_from_its_config(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    key = "base_model.model.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    save(folder / "adapter_model.safetensors", {f"{key}.lora_A.weight": torch.randn(4, 64), f"{key}.lora_B.weight": torch.randn(64, 4)})
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    info = inspect(folder)
    assert info.kind == "lora" and info.format == "folder" and info.lora.alpha == 8.0 and info.lora.rank == 4
    assert info.lora.target_modules == ["to_q"] and info.base is None  # self-attention alone does not tell the base


# ---- ONNX ------------------------------------------------------------------------------------------


def test_onnx_inputs_outputs_and_parameters_from_the_graph(tmp_path):
    info = inspect(onnx_model(tmp_path / "conv.onnx"))
    assert info.kind == "onnx" and info.class_name == "tiny-conv" and info.onnx.opsets == {"ai.onnx": 17}
    assert [(s.name, s.dtype, s.shape) for s in info.onnx.inputs] == [("image", "float", ["batch", 3, "height", "width"])]
    assert [(s.name, s.dtype, s.shape) for s in info.onnx.outputs] == [("features", "float", ["batch", 8, "height", "width"])]
    assert info.parameters == 8 * 3 * 3 * 3 + 8 and info.memory.stored_bytes == 4 * info.parameters
    assert info.onnx.producer.startswith("pixelfleet-test") and not info.onnx.external_data


def test_truncated_onnx_is_corrupt(tmp_path):
    path = onnx_model(tmp_path / "conv.onnx")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptModelFile):
        inspect(path)


# ---- shipped SR weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in BUILTIN_WEIGHTS.iterdir() if (p / "model.json").is_file()))
def test_shipped_sr_weights_inspect_and_load_safely(name):
    folder = BUILTIN_WEIGHTS / name
    info = inspect(f"builtin:{name}")
    model, card = load_model(folder)  # through load_state_dict
    assert info.kind == "superres" and info.capabilities == ["superres"] and info.scale == card.scale
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert inspect(folder / "model.safetensors").path == str(folder)  # the weights file of a model folder
    expected = load_file(str(folder / card.weights))
    loaded = load_state_dict(folder / card.weights)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_sr_folder_with_pickled_weights_is_refused(tmp_path):
    folder = tmp_path / "sr"
    folder.mkdir()
    card = json.loads((BUILTIN_WEIGHTS / "srresnet-x2" / "model.json").read_text())
    card["weights"] = "model.pt"
    (folder / "model.json").write_text(json.dumps(card))
    torch.save(load_file(str(BUILTIN_WEIGHTS / "srresnet-x2" / "model.safetensors")), folder / "model.pt")
    with pytest.raises(UnsafeModelFile, match="allow_pickle"):
        load_model(folder)


# ---- safe loading ------------------------------------------------------------------------------------


@pytest.fixture
def state():
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4), "steps": torch.tensor([7], dtype=torch.int64)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pickles_are_refused_unless_allowed_then_weights_only(tmp_path, state):
    zip_ckpt, legacy = tmp_path / "model.ckpt", tmp_path / "model.bin"
    torch.save({"state_dict": state, "global_step": 3}, zip_ckpt)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert (sniff_format(zip_ckpt), sniff_format(legacy)) == ("torch-zip", "pickle")
    for path in (zip_ckpt, legacy):
        with pytest.raises(UnsafeModelFile, match="allow_pickle"):
            load_state_dict(path)
        with pytest.raises(UnsafeModelFile, match="allow-pickle"):
            inspect(path)
        assert _same(load_state_dict(path, allow_pickle=True), state)  # the ckpt's state_dict unwrapped
    info = inspect(zip_ckpt, allow_pickle=True)
    assert info.format == "pickle" and info.kind == "state_dict" and info.parameters == sum(v.numel() for v in state.values())


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_even_when_allowed(tmp_path, state):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"weight": state["conv.weight"], "payload": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeModelFile, match="weights_only"):
        load_state_dict(path, allow_pickle=True)
    assert not marker.exists()


def test_damaged_pickle_is_corrupt_when_allowed(tmp_path, state):
    path = tmp_path / "model.pt"
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptModelFile):
        load_state_dict(path, allow_pickle=True)


def test_safetensors_load_equals_the_saved_tensors(tmp_path, state):
    path = save(tmp_path / "w.safetensors", state, {"format": "pt"})
    assert _same(load_state_dict(path), state)
    header = read_safetensors_header(path)
    assert header.metadata == {"format": "pt"} and header.tensors["conv.weight"].shape == (4, 3, 3, 3)
    assert header.tensors["steps"].dtype == "I64"


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}


@pytest.mark.parametrize(
    "header, data, length, words",
    [
        (GOOD, bytes(16), 2**62, "header claims"),  # header-length bomb: refused before allocating
        (GOOD, bytes(16), 10**9, "header claims"),  # longer than the file
        (b"{not json", bytes(16), None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}', bytes(4), None, "not valid JSON"),
        ({**GOOD, "a": {**GOOD["a"], "dtype": "F33"}}, bytes(16), None, "unknown dtype"),
        ({**GOOD, "a": {**GOOD["a"], "shape": [3]}}, bytes(16), None, "needs 12 bytes"),
        ({**GOOD, "a": {**GOOD["a"], "shape": [-2]}}, bytes(16), None, "bad shape"),
        ({**GOOD, "b": {**GOOD["b"], "data_offsets": [6, 14]}}, bytes(16), None, "overlaps"),
        ({**GOOD, "b": {**GOOD["b"], "data_offsets": [12, 20]}}, bytes(20), None, "gap"),
        ({**GOOD, "b": {**GOOD["b"], "data_offsets": [16, 8]}}, bytes(16), None, "bad data_offsets"),
        (GOOD, bytes(10), None, "truncated"),
        (GOOD, bytes(24), None, "after the last tensor"),
        ({**GOOD, "__metadata__": {"k": 1}}, bytes(16), None, "__metadata__"),
    ],
)
def test_bad_safetensors_headers_are_clear_errors(tmp_path, header, data, length, words):
    path = raw_safetensors(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(CorruptModelFile, match=words):
        read_safetensors_header(path)
    with pytest.raises(CorruptModelFile):
        load_state_dict(path)


def test_a_header_length_whose_bytes_look_like_a_pickle_is_still_safetensors(tmp_path):
    blob = json.dumps(GOOD).encode()
    blob += b" " * (640 - len(blob))  # 640 = 80 02 00 ..: a pickle's protocol-2 opening
    path = raw_safetensors(tmp_path / "640.safetensors", blob, bytes(16))
    assert path.read_bytes()[:2] == b"\x80\x02" and sniff_format(path) == "safetensors"
    assert load_state_dict(path)["a"].shape == (2,)


def test_the_hand_made_good_header_loads(tmp_path):
    loaded = load_state_dict(raw_safetensors(tmp_path / "good.safetensors", GOOD, bytes(16)))
    assert loaded["a"].shape == (2,) and loaded["b"].dtype == torch.float16 and not loaded["b"].any()


def test_truncated_copy_of_a_real_file_is_corrupt(tmp_path, state):
    path = save(tmp_path / "w.safetensors", state)
    cut = tmp_path / "cut.safetensors"
    for size in (path.stat().st_size - 5, 12, 4):
        cut.write_bytes(path.read_bytes()[:size])
        with pytest.raises(CorruptModelFile):
            load_state_dict(cut)
        with pytest.raises(CorruptModelFile):
            inspect(cut)


def test_mislabeled_files_are_detected_by_magic_bytes(tmp_path, state):
    pickled = tmp_path / "renamed.safetensors"
    torch.save(state, pickled)
    with pytest.raises(CorruptModelFile, match="PyTorch zip checkpoint"):
        load_state_dict(pickled, allow_pickle=True)  # allowing pickles does not make a lying name fine
    with pytest.raises(CorruptModelFile, match="PyTorch zip checkpoint"):
        inspect(pickled, allow_pickle=True)
    onnx_file = onnx_model(tmp_path / "m.onnx")
    renamed = tmp_path / "onnx.safetensors"
    renamed.write_bytes(onnx_file.read_bytes())
    with pytest.raises(CorruptModelFile, match="ONNX"):
        load_state_dict(renamed)
    safet = save(tmp_path / "real.safetensors", state)
    as_onnx = tmp_path / "real.onnx"
    as_onnx.write_bytes(safet.read_bytes())
    with pytest.raises(CorruptModelFile, match="safetensors file"):
        inspect(as_onnx)
    # a safetensors file under a pickle's name is read as what it is (safely)
    as_ckpt = tmp_path / "real.ckpt"
    as_ckpt.write_bytes(safet.read_bytes())
    assert _same(load_state_dict(as_ckpt), state)


def test_unrecognized_and_missing_paths(tmp_path):
    gguf, text, empty = tmp_path / "m.gguf", tmp_path / "notes.txt", tmp_path / "empty.safetensors"
    gguf.write_bytes(b"GGUF" + bytes(60))
    text.write_text("hello, not a model\n")
    empty.write_bytes(b"")
    for path in (gguf, text, tmp_path):
        with pytest.raises(UnrecognizedModelFile):
            inspect(path)
    with pytest.raises(CorruptModelFile, match="0 bytes, shorter than a safetensors header"):
        inspect(empty)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it would block until a writer came: refused unopened
    with pytest.raises(UnrecognizedModelFile, match="not a regular file"):
        inspect(fifo)
    with pytest.raises(UnrecognizedModelFile, match="not a regular file"):
        load_state_dict(fifo)
    with pytest.raises(ModelFileNotFound):
        inspect(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileNotFound):
        load_state_dict(tmp_path / "nope.safetensors")


# ---- a diffusers folder with variants and a pickled component -----------------------------------------


def test_diffusers_folder_variants_pickles_and_configs(tmp_path):
    root = tmp_path / "pipe"
    unet, te = synthetic_diffusers_folder(root)
    info = inspect(root)
    assert (info.base, info.architecture, info.unet_in_channels, info.capabilities) == ("sd2", "sd", 9, [])  # no VAE folder
    assert any("vae" in note and "missing" in note for note in info.notes)
    comps = {c.name: c for c in info.components}
    assert comps["unet"].files == ["unet/diffusion_pytorch_model.safetensors"] and comps["unet"].variants == ["fp16"]
    assert comps["unet"].parameters == sum(v.numel() for v in unet.values()) and comps["unet"].config["cross_attention_dim"] == 1024
    assert comps["text_encoder"].format == "pickle" and comps["text_encoder"].parameters is None and info.parameters is None
    allowed = inspect(root, allow_pickle=True)
    assert allowed.parameters == sum(v.numel() for v in [*unet.values(), *te.values()])
    assert allowed.text_encoder_dims == {"text_encoder": 1024}


def test_diffusers_folder_shards_and_widths_from_the_weights(tmp_path):
    root = tmp_path / "pipe"
    unet, _ = synthetic_diffusers_folder(root)
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "unet" / "config.json").write_text(json.dumps({"sample_size": 96}))  # widths left to the weights
    keys = sorted(unet)
    for i, key in enumerate(keys):  # sharded: one tensor per shard, plus diffusers' index
        save(root / "unet" / f"diffusion_pytorch_model-{i + 1:05d}-of-{len(keys):05d}.safetensors", {key: unet[key]})
    (root / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    info = inspect(root)
    comp = next(c for c in info.components if c.name == "unet")
    assert len(comp.files) == len(keys) and comp.variants == ["fp16"]
    assert comp.parameters == sum(v.numel() for v in unet.values())
    assert (info.cross_attention_dim, info.unet_in_channels, info.base) == (1024, 9, "sd2")
    assert any("to_k weights" in note for note in info.notes)
