"""The tiny test pipeline: deterministic, its single file round-trips through diffusers' own
single-file loader, and its LoRA loads and changes the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tinysd


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _generate(pipe, seed: int = 0) -> np.ndarray:
    return pipe("a red cat", num_inference_steps=2, height=16, width=16,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


def test_same_seed_same_weights():
    a, b = tinysd.build_pipeline(0), tinysd.build_pipeline(0)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.unet.conv_in.weight, tinysd.build_pipeline(1).unet.conv_in.weight)


def test_single_file_loads_with_diffusers_converter(tiny_sd):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    with safe_open(str(tiny_sd["single_file"]), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # SD's original layout
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    loaded = StableDiffusionPipeline.from_single_file(
        str(tiny_sd["single_file"]), config=str(tiny_sd["folder"]), local_files_only=True, safety_checker=None)
    ref = tinysd.build_pipeline(0)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(ref, name).state_dict(), getattr(loaded, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_lora_loads_and_changes_output(tiny_sd):
    pipe = tinysd.build_pipeline(0)
    base = _generate(pipe)
    pipe.load_lora_weights(str(tiny_sd["lora"]), adapter_name="style")
    styled = _generate(pipe)
    assert np.abs(styled - base).max() > 0.02
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    np.testing.assert_allclose(_generate(pipe), base, atol=1e-5)
