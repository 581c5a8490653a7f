"""Stable Diffusion 1.x / 2.x / SDXL told apart from a checkpoint's keys and shapes (no tensor read).

The markers are those diffusers uses to infer a single file's config
(``diffusers.loaders.single_file_utils.infer_diffusers_model_type``): the cross-attention
``to_k`` input width (SD 1.x 768, SD 2.x 1024, SDXL 2048, SDXL refiner 1280), SDXL's second text
encoder ``conditioner.embedders.1`` and its added size/crop embedding (``label_emb``, diffusers'
``add_embedding``), and the UNet's first convolution's input channels (9: an inpainting UNet).
Keys are in the original (CompVis/LDM, Stability generative-models) layout of single files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: (architecture, cross-attention width) -> the release
RELEASES = {("sd", 768): "sd1", ("sd", 1024): "sd2", ("sdxl", 2048): "sdxl", ("sdxl", 1280): "sdxl-refiner"}

UNET = "model.diffusion_model."
#: single-file key prefix -> component name, longest first
PREFIXES = (
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
    ("model_ema.", "ema"),
)
_CROSS_K = re.compile(r"\.attn2\.to_k\.weight$")
_TOKEN_EMBEDDINGS = ("transformer.text_model.embeddings.token_embedding.weight", "model.token_embedding.weight")


@dataclass
class SDFacts:
    """What a checkpoint's shapes say: ``architecture`` sd|sdxl, ``base`` (a :data:`RELEASES`
    value or ``custom``), ``cross_attention_dim``, ``unet_in_channels``, text encoder widths,
    ``capabilities`` and notes."""

    architecture: str
    base: str
    cross_attention_dim: int | None
    unet_in_channels: int | None
    text_encoder_dims: dict[str, int] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def component_of(key: str) -> str:
    """The component a single-file key belongs to (``unet``, ``vae``, ``text_encoder``,
    ``text_encoder_2``, ``ema``), else ``other`` (e.g. the noise schedule's buffers)."""
    for prefix, name in PREFIXES:
        if key.startswith(prefix):
            return name
    return "other"


def release(architecture: str, cross_attention_dim: int | None) -> str:
    """The SD release for an architecture and cross-attention width, else ``custom``."""
    return RELEASES.get((architecture, cross_attention_dim), "custom")


def capabilities(unet_in_channels: int | None, has_vae: bool) -> tuple[list[str], list[str]]:
    """Operations a UNet with this many input channels serves, and notes: 4 (latents) ->
    txt2img, img2img and inpaint (diffusers' inpaint pipeline blends latents for a 4-channel
    UNet); 9 (latents + mask + masked-image latents) -> inpaint only; others -> none here."""
    if not has_vae:
        return [], ["no VAE: images cannot be decoded"]
    if unet_in_channels == 4:
        return ["txt2img", "img2img", "inpaint"], []
    if unet_in_channels == 9:
        return ["inpaint"], ["an inpainting UNet (9 input channels)"]
    if unet_in_channels == 8:
        return [], ["8 UNet input channels: an InstructPix2Pix model, not served here"]
    return [], [f"{unet_in_channels} UNet input channels: not a txt2img/img2img/inpaint UNet"]


def detect_single_file(shapes: dict[str, tuple[int, ...]]) -> SDFacts | None:
    """SD facts of a single-file checkpoint from ``{key: shape}``, or None when it has no
    ``model.diffusion_model.`` UNet keys (not an SD checkpoint)."""
    if not any(key.startswith(UNET) for key in shapes):
        return None
    sdxl = any(key.startswith("conditioner.") for key in shapes) or f"{UNET}label_emb.0.0.weight" in shapes
    architecture = "sdxl" if sdxl else "sd"
    cross = next((shapes[k][1] for k in sorted(shapes) if k.startswith(UNET) and _CROSS_K.search(k) and len(shapes[k]) == 2), None)
    conv_in = shapes.get(f"{UNET}input_blocks.0.0.weight")
    in_channels = conv_in[1] if conv_in is not None and len(conv_in) == 4 else None
    dims = {}
    for prefix, name in PREFIXES[2:5]:
        for suffix in _TOKEN_EMBEDDINGS:
            shape = shapes.get(prefix + suffix)
            if shape is not None and len(shape) == 2:
                dims[name] = shape[1]
    if sdxl and not any(k.startswith("conditioner.embedders.1.") for k in shapes) and "conditioner.embedders.0.model.token_embedding.weight" in shapes:
        dims["text_encoder_2"] = dims.pop("text_encoder")  # the refiner: OpenCLIP bigG alone, diffusers' text_encoder_2
    caps, notes = capabilities(in_channels, any(k.startswith("first_stage_model.") for k in shapes))
    facts = SDFacts(architecture, release(architecture, cross), cross, in_channels, dims, caps, notes)
    _refiner(facts)
    if facts.base == "sd2":
        facts.notes.append("SD 2.x: epsilon (512 px) or v-prediction (768 px) cannot be told from the weights")
    if any(k.startswith("model_ema.") for k in shapes):
        facts.notes.append("holds EMA weights (model_ema.*), left out of the parameter count")
    return facts


def detect_diffusers(pipeline_class: str | None, unet_config: dict, text_encoder_dims: dict[str, int], has_vae: bool) -> SDFacts:
    """SD facts of a diffusers folder from its pipeline class, ``unet/config.json`` and text
    encoder widths (``hidden_size`` of each ``text_encoder*/config.json``)."""
    sdxl = (
        unet_config.get("addition_embed_type") == "text_time"
        or "text_encoder_2" in text_encoder_dims
        or "XL" in (pipeline_class or "")
    )
    architecture = "sdxl" if sdxl else "sd"
    cross = unet_config.get("cross_attention_dim")
    cross = cross if isinstance(cross, int) else None
    in_channels = unet_config.get("in_channels")
    caps, notes = capabilities(in_channels, has_vae)
    facts = SDFacts(architecture, release(architecture, cross), cross, in_channels, dict(text_encoder_dims), caps, notes)
    _refiner(facts)
    return facts


def _refiner(facts: SDFacts) -> None:
    """The SDXL refiner only refines images (diffusers' StableDiffusionXLImg2ImgPipeline)."""
    if facts.base == "sdxl-refiner":
        facts.capabilities = [c for c in facts.capabilities if c != "txt2img"]
        facts.notes.append("the SDXL refiner: img2img (and inpaint) on an SDXL base's output, no txt2img")
