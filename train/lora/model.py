"""The Stable Diffusion parts a LoRA run needs, the adapters peft injects into them, and the
adapter file they leave.

The base is a diffusers folder of a ``StableDiffusionPipeline`` (SD 1.x or 2.x: one CLIP text
encoder, a 4-channel UNet). LoRA (Hu et al. 2021, arXiv:2106.09685) goes on the UNet's attention
projections and optionally the text encoder's, through peft (``add_adapter`` with a
``LoraConfig``, as diffusers' ``train_text_to_image_lora.py`` does); the file is written as
``StableDiffusionLoraLoaderMixin.save_lora_weights`` writes it (diffusers/peft keys
``unet.<module>.lora_A.weight`` / ``lora_B.weight``, ``text_encoder.`` likewise, and the
``LoraConfig`` of each part in the safetensors header), which ``pipe.load_lora_weights`` reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelfleet.train.lora.config import LoraSection

PIPELINE_CLASSES = ("StableDiffusionPipeline",)  # one text encoder and a 4-channel UNet


class BaseModelError(ValueError):
    """The base model path is not a diffusers folder of a pipeline this trainer adapts."""


@dataclass
class SDParts:
    """The components of a Stable Diffusion diffusers folder, on the CPU in float32.

    ``noise_scheduler`` is a ``DDPMScheduler`` made from the folder's scheduler config (the
    forward process training adds noise with); ``inference_scheduler`` is the folder's own
    scheduler class (what validation images are sampled with).
    """

    folder: Path
    pipeline_class: str
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: Any
    inference_scheduler: Any


def read_model_index(folder: Path) -> dict:
    """``model_index.json`` of a diffusers folder, checked to be a pipeline this trainer adapts.

    Raises:
        BaseModelError: not a folder, no ``model_index.json``, another pipeline class (e.g.
            SDXL's two text encoders), or a UNet that does not take 4 latent channels (an
            inpainting model; ``unet/config.json``).
    """
    index = folder / "model_index.json"
    if not index.is_file():
        raise BaseModelError(f"base_model {folder} is not a diffusers folder (no model_index.json)")
    spec = json.loads(index.read_text())
    if spec.get("_class_name") not in PIPELINE_CLASSES:
        raise BaseModelError(f"base_model {folder} holds a {spec.get('_class_name')}; LoRA training takes {', '.join(PIPELINE_CLASSES)} (SD 1.x/2.x)")
    unet_config = folder / "unet" / "config.json"
    channels = json.loads(unet_config.read_text()).get("in_channels") if unet_config.is_file() else None
    if channels != 4:
        raise BaseModelError(f"base_model {folder}: its UNet takes {channels} latent channels (inpainting?); LoRA training takes 4")
    return spec


def load_parts(folder: Path) -> SDParts:
    """Load the tokenizer, text encoder, VAE, UNet and schedulers of ``folder`` (offline, float32).

    Raises:
        BaseModelError: see :func:`read_model_index`.
    """
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    spec = read_model_index(folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    scheduler_class = getattr(diffusers, spec["scheduler"][1])
    return SDParts(
        folder=folder,
        pipeline_class=spec["_class_name"],
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True),
        unet=unet,
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True),
        inference_scheduler=scheduler_class.from_pretrained(folder, subfolder="scheduler", local_files_only=True),
    )


def add_adapters(parts: SDParts, lora: LoraSection) -> None:
    """Freeze every weight of ``parts`` and inject trainable LoRA layers (peft, adapter
    ``default``) into the UNet's ``lora.target_modules`` and, with ``lora.text_encoder``, the text
    encoder's. ``lora_A`` starts Gaussian and ``lora_B`` at zero (peft's ``gaussian`` init, as
    diffusers' script), so the adapted model starts as the base; the draw uses torch's global RNG
    (seed it first).

    Raises:
        ValueError: a target module name matches nothing (peft's error).
    """
    from peft import LoraConfig, inject_adapter_in_model

    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.requires_grad_(False)
    common = {"r": lora.rank, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.dropout, "init_lora_weights": "gaussian"}
    parts.unet.add_adapter(LoraConfig(target_modules=list(lora.target_modules), **common))
    if lora.text_encoder:
        # what transformers' add_adapter does, minus its peft version gate (0.22 since transformers 5)
        config = LoraConfig(target_modules=list(lora.text_encoder_target_modules), **common)
        inject_adapter_in_model(config, parts.text_encoder, adapter_name="default")
        parts.text_encoder.peft_config = {"default": config}


def adapter_layers(unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> dict[str, Any]:
    """The keyword arguments of ``save_lora_weights`` for these adapted modules: each part's LoRA
    weights in diffusers' key style (``get_peft_model_state_dict`` + ``convert_state_dict_to_diffusers``)
    and its ``LoraConfig`` as metadata (as ``diffusers.training_utils._collate_lora_metadata``).
    ``text_encoder``: None when it carries no adapter."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers: dict[str, Any] = {
        "unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict(),
    }
    if text_encoder is not None:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
        layers["text_encoder_lora_adapter_metadata"] = text_encoder.peft_config["default"].to_dict()
    return layers


def save_adapter(folder: Path, name: str, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> Path:
    """Write ``<folder>/<name>.safetensors``, the adapter as ``StableDiffusionPipeline.save_lora_weights``
    writes it (float32 tensors; diffusers/peft keys); returns its path."""
    from diffusers import StableDiffusionPipeline

    layers = {key: ({k: v.detach().float().cpu().contiguous() for k, v in value.items()} if key.endswith("_layers") else value)
              for key, value in adapter_layers(unet, text_encoder).items()}  # fmt: skip
    weight_name = f"{name}.safetensors"
    StableDiffusionPipeline.save_lora_weights(folder, weight_name=weight_name, safe_serialization=True, **layers)
    return folder / weight_name


def validation_pipeline(parts: SDParts, unet: torch.nn.Module, text_encoder: torch.nn.Module):
    """A ``StableDiffusionPipeline`` over the run's (adapted) modules and the folder's own
    scheduler, safety checker off, progress bar off: what validation images are made with."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=text_encoder,
        tokenizer=parts.tokenizer,
        unet=unet,
        scheduler=parts.inference_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
