"""Model files made in code for the tests of models/modelfiles and `pixelfleet inspect`: SD
single files with the real markers at their real widths, LoRAs in kohya style, an ONNX graph, a
diffusers folder with a variant and a pickled component, raw safetensors bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

U = "model.diffusion_model."


def save(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def zeros(*shape, dtype=torch.float16) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def sd_checkpoint(arch: str, in_channels: int = 4) -> dict[str, torch.Tensor]:
    """The keys and widths that tell SD releases apart, at their real sizes along the telling
    dimension (cross-attention 768 / 1024 / 2048; CLIP-L 768, OpenCLIP-H 1024, bigG 1280); the
    other dimensions are cut small."""
    cross = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[arch]
    state = {
        f"{U}input_blocks.0.0.weight": zeros(32, in_channels, 3, 3),
        f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": zeros(32, cross),
        f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": zeros(32, cross),
        f"{U}out.2.weight": zeros(4, 32, 3, 3),
        "first_stage_model.decoder.conv_out.weight": zeros(3, 8, 3, 3),
        "model_ema.decay": torch.tensor(0.999),
        "alphas_cumprod": torch.zeros(10, dtype=torch.float32),
    }
    if arch == "sd1":
        state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = zeros(6, 768)
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(6)[None]
    elif arch == "sd2":
        state["cond_stage_model.model.token_embedding.weight"] = zeros(6, 1024)
    else:
        state[f"{U}label_emb.0.0.weight"] = zeros(8, 2816)
        state["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = zeros(6, 768)
        state["conditioner.embedders.1.model.token_embedding.weight"] = zeros(6, 1280)
    return state


def kohya_lora(cross: int, rank: int = 8, alpha: float = 4.0, te: dict[str, int] | None = None, ldm_unet: bool = False) -> dict:
    module = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" if ldm_unet else "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {
        f"{module}.lora_down.weight": torch.randn(rank, cross),
        f"{module}.lora_up.weight": torch.randn(320, rank),
        f"{module}.alpha": torch.tensor(alpha),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight": torch.randn(rank // 2, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight": torch.randn(2560, rank // 2),
    }
    for prefix, width in (te or {}).items():
        name = f"{prefix}_text_model_encoder_layers_0_self_attn_q_proj"
        state[f"{name}.lora_down.weight"] = torch.randn(rank, width)
        state[f"{name}.lora_up.weight"] = torch.randn(width, rank)
        state[f"{name}.alpha"] = torch.tensor(alpha)
    return state


def onnx_model(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(8, np.float16).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["features"], pads=[1, 1, 1, 1])],
        "tiny-conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, "height", "width"])],
        [weight, bias],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pixelfleet-test"), str(path))
    return path


def raw_safetensors(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def synthetic_diffusers_folder(root: Path) -> tuple[dict, dict]:
    """An SD 2.x-shaped inpainting folder: unet (safetensors + an fp16 variant), text_encoder as a
    pickle (.bin), vae listed but missing. Returns the unet and text encoder tensors."""
    (root / "unet").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None],
    }))  # fmt: skip
    (root / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 1024, "in_channels": 9, "sample_size": 96}))
    unet = {"conv_in.weight": zeros(32, 9, 3, 3, dtype=torch.float32), "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": zeros(32, 1024, dtype=torch.float32)}
    save(root / "unet" / "diffusion_pytorch_model.safetensors", unet)
    save(root / "unet" / "diffusion_pytorch_model.fp16.safetensors", {k: v.half() for k, v in unet.items()})
    (root / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 1024, "num_hidden_layers": 23}))
    te = {"text_model.embeddings.token_embedding.weight": torch.zeros(5, 1024)}
    torch.save(te, root / "text_encoder" / "pytorch_model.bin")
    return unet, te
