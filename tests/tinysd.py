"""A tiny Stable Diffusion 1.x-style pipeline built in code, for tests (no hub, no download).

Every component is made from a config with seeded weights, so two builds with the same seed
are identical tensor for tensor:

- ``UNet2DConditionModel``: 2 levels, ``block_out_channels=(32, 64)``, one layer per block,
  cross-attention (dim 32) in the second down and the first up block (the blocks LoRA targets),
  ``sample_size=8``: 8x8 latents, i.e. 16x16-pixel images by default (:data:`SIZE`); any
  width/height that is a multiple of 8 works.
- ``AutoencoderKL``: 2 levels (32, 64) -> ``vae_scale_factor`` 2, 4 latent channels.
- ``CLIPTextModel`` from a tiny ``CLIPTextConfig`` (hidden 32, 2 layers, 77 positions) and a
  ``CLIPTokenizer`` whose byte-level BPE vocabulary is the 256 byte symbols (plain and with the
  ``</w>`` end-of-word mark) plus a few merges of common letters and the two special tokens;
  it is built from Python dicts, not files.
- ``DDIMScheduler`` with SD 1.x's beta schedule.

Functions:

- :func:`build_pipeline` -> a ``StableDiffusionPipeline`` (CPU, float32, safety checker off).
- :func:`save_folder` -> a diffusers folder (``model_index.json`` + components), what
  ``StableDiffusionPipeline.from_pretrained(folder)`` and
  ``AutoPipelineForImage2Image.from_pretrained(folder)`` load offline.
- :func:`save_single_file` -> one ``.safetensors`` checkpoint in the original (CompVis/LDM) key
  layout of SD 1.x: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE; attention
  weights as 1x1 convolutions), ``cond_stage_model.transformer.*`` (CLIP text model). The key
  mapping is the inverse of the one diffusers applies when it loads a single file
  (``diffusers.loaders.single_file_utils``), generalised to any number of levels and layers per
  block; ``tests/unit/test_tinysd.py`` proves it round-trips. A tiny model's shapes do not match
  any real SD release, so diffusers cannot infer its config from the keys: load it with the
  folder as config, offline::

      StableDiffusionPipeline.from_single_file(path, config=str(folder), local_files_only=True)

- :func:`make_lora` -> a LoRA ``.safetensors`` for the tiny UNet in the diffusers/peft key style
  (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, what ``pipe.load_lora_weights`` takes and
  ``get_peft_model_state_dict`` + ``StableDiffusionPipeline.save_lora_weights`` write) on the
  attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0``; rank ``rank``; seeded random
  A and B (B is non-zero, so the adapter measurably changes the output).
  :func:`make_lora_for_other_base` writes the same kind of file for a UNet with other attention
  widths (a LoRA that does not fit this base, for 422 tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: the attention projections LoRA adapts (peft's ``target_modules``)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: width/height in pixels the tiny pipeline makes by default (latents 8x8 at vae_scale_factor 2)
SIZE = 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer():
    """A ``CLIPTokenizer`` with a tiny byte-level vocabulary (~530 tokens), made in code."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    merges = [("t", "h"), ("a", "n"), ("e", "r"), ("o", "n"), ("i", "n"), ("th", "e</w>")]
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["th", "an", "er", "on", "in", "the</w>"]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _unet(seed: int, cross_attention_dim: int = 32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_pipeline(seed: int = 0):
    """The tiny ``StableDiffusionPipeline`` (CPU, float32), its weights fixed by ``seed``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = _unet(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=SIZE,
    )
    torch.manual_seed(seed + 2)
    tok = tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tok),
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tok,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_folder(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a diffusers folder at ``path`` (safetensors); returns ``path``."""
    path = Path(path)
    build_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return path


# --- diffusers -> original SD (LDM) key layout ------------------------------------------------

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, table) -> str:
    for new, old in table:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_key(key: str, layers: int, up_has_attention: dict[int, bool]) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in fixed:
        return fixed[key]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.X
            return f"input_blocks.{(b + 1) * (layers + 1)}.0.op." + ".".join(parts[5:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        block = 1 + b * (layers + 1) + j
        if kind == "resnets":
            return f"input_blocks.{block}.0." + _rename(rest, _RESNET)
        return f"input_blocks.{block}.1." + rest
    if parts[0] == "mid_block":
        k, rest = int(parts[2]), ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"middle_block.{2 * k}." + _rename(rest, _RESNET)
        return "middle_block.1." + rest
    if parts[0] == "up_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":
            return f"output_blocks.{b * (layers + 1) + layers}.{2 if up_has_attention[b] else 1}.conv." + ".".join(parts[5:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        block = b * (layers + 1) + j
        if kind == "resnets":
            return f"output_blocks.{block}.0." + _rename(rest, _RESNET)
        return f"output_blocks.{block}.1." + rest
    raise KeyError(f"no SD key for UNet key {key}")


def _vae_key(key: str, n_up: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    parts = key.split(".")
    side = parts[0]  # encoder / decoder
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{side}.mid.block_{int(parts[3]) + 1}." + _rename(".".join(parts[4:]), (("conv_shortcut", "nin_shortcut"),))
        return f"{side}.mid.attn_1." + _rename(".".join(parts[4:]), _VAE_ATTN)
    level = int(parts[2]) if side == "encoder" else n_up - 1 - int(parts[2])
    name = "down" if side == "encoder" else "up"
    if parts[3] in ("downsamplers", "upsamplers"):
        return f"{side}.{name}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.conv." + ".".join(parts[6:])
    return f"{side}.{name}.{level}.block.{parts[4]}." + _rename(".".join(parts[5:]), (("conv_shortcut", "nin_shortcut"),))


def single_file_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights under SD 1.x's original checkpoint keys (see the module docstring)."""
    unet, vae = pipe.unet, pipe.vae
    layers = unet.config.layers_per_block
    up_attn = {i: hasattr(blk, "attentions") for i, blk in enumerate(unet.up_blocks)}
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(key, layers, up_attn)] = value.contiguous()
    n_up = len(vae.config.up_block_types)
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + _vae_key(key, n_up)] = value.contiguous()
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers 5 names CLIPTextModel's weights without the "text_model." level SD keeps
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value.contiguous()
    return out


def save_single_file(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as one SD 1.x-layout ``.safetensors`` checkpoint; returns ``path``.

    Loading it needs the diffusers folder (:func:`save_folder`) as ``config=`` (see above).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_state_dict(build_pipeline(seed)), str(path), metadata={"format": "pt"})
    return path


# --- LoRA ---------------------------------------------------------------------------------------

def _lora_state_dict(unet, rank: int, seed: int, scale: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(LORA_TARGETS) or ".attn" not in name:
            continue
        a = torch.randn(rank, module.in_features, generator=gen) / module.in_features**0.5
        b = torch.randn(module.out_features, rank, generator=gen) * scale
        state[f"unet.{name}.lora_A.weight"] = a.contiguous()
        state[f"unet.{name}.lora_B.weight"] = b.contiguous()
    return state


def make_lora(path: str | Path, rank: int = 4, seed: int = 1, scale: float = 0.5) -> Path:
    """Write a LoRA ``.safetensors`` (diffusers/peft keys) that fits the tiny UNet; returns ``path``.

    ``lora_A``: ``(rank, in_features)`` float32, ``lora_B``: ``(out_features, rank)`` float32, both
    seeded by ``seed``; ``scale`` sets the size of B (0.5 changes the tiny model's output visibly).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _lora_state_dict(_unet(0), rank, seed, scale)
    save_file(state, str(path), metadata={"format": "pt", "pixelfleet_base": "tiny-sd1"})
    return path


def make_lora_for_other_base(path: str | Path, rank: int = 4, seed: int = 1) -> Path:
    """A LoRA for a UNet whose cross-attention width is 48, not 32: it does not fit the tiny base."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_lora_state_dict(_unet(0, cross_attention_dim=48), rank, seed, 0.5), str(path), metadata={"format": "pt"})
    return path


def write_card(path: str | Path, **fields) -> Path:
    """A JSON card beside an adapter file (``<stem>.json``), as train/lora writes one."""
    path = Path(path)
    card = path.with_suffix(".json")
    card.write_text(json.dumps(fields, indent=2))
    return card
