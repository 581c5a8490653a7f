"""LoRA files: their key style, rank and targets, the base they fit (from the shapes of the adapted
layers), and whether they fit a given model.

Key styles (LoRA: Hu et al. 2021, arXiv:2106.09685; ``down``/``A`` is ``(rank, in_features)``,
``up``/``B`` is ``(out_features, rank)``; convolutions add ``(kh, kw)``):

- peft / diffusers >= 0.25: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (also with a
  ``text_encoder.`` / ``text_encoder_2.`` prefix, a ``base_model.model.`` prefix, an adapter name
  before ``.weight``, or no prefix at all: a bare UNet);
- older diffusers: ``<module>.lora.down.weight`` / ``lora.up.weight`` and the attention
  processors' ``<attn>.processor.to_k_lora.down.weight``;
- kohya (sd-scripts, A1111): ``lora_unet_<module with _>.lora_down.weight`` / ``lora_up.weight``
  + a scalar ``.alpha``; ``lora_te_``, ``lora_te1_``, ``lora_te2_`` for the text encoders.

The base follows from the cross-attention ``to_k``/``to_v`` input width (the text encoder's
output: SD 1.x 768, SD 2.x 1024, SDXL 2048, SDXL refiner 1280) and from the text encoders adapted
(a second one: SDXL).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pixelfleet.models.modelfiles.info import LoraInfo, ModelFileInfo
from pixelfleet.models.modelfiles.safeload import read_safetensors_header, sniff_format
from pixelfleet.models.modelfiles.sd import release

_PEFT = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")
_DIFFUSERS = re.compile(r"^(?P<module>.+)\.lora\.(?P<part>down|up)\.weight$")
_PROCESSOR = re.compile(r"^(?P<module>.+)\.processor\.(?P<leaf>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")
_KOHYA = re.compile(r"^(?P<module>lora_(?P<comp>unet|te\d?)_.+)\.(?P<part>lora_down|lora_up)\.weight$")
_KOHYA_ALPHA = re.compile(r"^lora_(unet|te\d?)_.+\.alpha$")
_KOHYA_COMPONENTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
#: kohya flattens module paths with "_": the leaf names it may end with, longest first
_KOHYA_LEAVES = (
    "ff_net_0_proj", "ff_net_2", "to_out_0", "self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
    "self_attn_out_proj", "mlp_fc1", "mlp_fc2", "time_emb_proj", "conv_shortcut", "proj_in", "proj_out",
    "to_q", "to_k", "to_v", "conv1", "conv2", "conv",
)  # fmt: skip
_TEXT_Q = ("q_proj", "self_attn.q_proj")


@dataclass
class _Layer:
    component: str
    module: str  # the module path, dotted where the style keeps dots
    leaf: str  # normalised leaf name: to_k, to_out.0, q_proj, ...
    cross: bool  # a cross-attention to_k / to_v
    down: tuple[int, ...] | None = None
    up: tuple[int, ...] | None = None


def _leaf_of_dotted(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[-1].isdigit():
        return ".".join(parts[-2:])  # to_out.0, ff.net.2
    if len(parts) >= 3 and parts[-3:-1] == ["ff", "net"]:
        return ".".join(parts[-3:])
    return parts[-1]


def _kohya_leaf(module: str) -> str:
    for leaf in _KOHYA_LEAVES:
        if module.endswith("_" + leaf):
            return {"ff_net_0_proj": "ff.net.0.proj", "ff_net_2": "ff.net.2", "to_out_0": "to_out.0"}.get(
                leaf, leaf.removeprefix("self_attn_").removeprefix("mlp_")
            )
    return module.rsplit("_", 1)[-1]


def _split_component(module: str) -> tuple[str, str]:
    module = module.removeprefix("base_model.model.")
    head, _, rest = module.partition(".")
    if head in ("unet", "text_encoder", "text_encoder_2", "transformer"):
        return head, rest.removeprefix("base_model.model.")
    return "unet", module  # a bare UNet state dict (peft's get_peft_model_state_dict(unet))


def parse_lora_keys(shapes: dict[str, tuple[int, ...]]) -> tuple[str, list[_Layer]] | None:
    """The style (the most common among the keys) and adapted layers of a state dict ``{key:
    shape}``, or None when no key is a LoRA key."""
    layers: dict[tuple[str, str], _Layer] = {}
    styles: Counter[str] = Counter()
    for key, shape in shapes.items():
        if m := _KOHYA.match(key):
            style, component = "kohya", _KOHYA_COMPONENTS.get(m["comp"], m["comp"])
            module, leaf = m["module"], _kohya_leaf(m["module"])
            cross = module.endswith(("attn2_to_k", "attn2_to_v"))
            part = "down" if m["part"] == "lora_down" else "up"
        elif m := _PROCESSOR.match(key):
            style = "diffusers"
            component, prefix = _split_component(m["module"])
            leaf = "to_out.0" if m["leaf"] == "to_out" else m["leaf"]
            module = f"{prefix}.{leaf}"
            cross = prefix.endswith("attn2") and leaf in ("to_k", "to_v")
            part = m["part"]
        elif (m := _PEFT.match(key)) or (m := _DIFFUSERS.match(key)):
            style = "peft" if m.re is _PEFT else "diffusers"
            component, module = _split_component(m["module"])
            leaf = _leaf_of_dotted(module)
            cross = module.endswith(("attn2.to_k", "attn2.to_v"))
            part = {"A": "down", "B": "up"}.get(m["part"], m["part"])
        else:
            continue
        styles[style] += 1
        layer = layers.setdefault((component, module), _Layer(component, module, leaf, cross))
        setattr(layer, part, tuple(shape))
    if not layers:
        return None
    return styles.most_common(1)[0][0], list(layers.values())


def _most_common(values: list[int]) -> int | None:
    return Counter(values).most_common(1)[0][0] if values else None


_HINTS = (  # substrings of kohya / modelspec metadata -> base
    ("refiner", "sdxl-refiner"), ("xl", "sdxl"), ("v2", "sd2"), ("sd_2", "sd2"), ("v1", "sd1"), ("sd_1", "sd1"),
)  # fmt: skip


def base_hint(metadata: dict[str, str]) -> str | None:
    """What the metadata of a kohya or modelspec LoRA claims as its base, verbatim."""
    for key in ("ss_base_model_version", "modelspec.architecture", "pixelfleet_base"):
        if metadata.get(key):
            return f"{key}={metadata[key][:80]}"
    return None


def lora_info(
    shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], alpha_values: dict[str, float] | None = None, adapter_config: dict | None = None
) -> LoraInfo | None:
    """A :class:`LoraInfo` from a state dict's ``{key: shape}`` and the file's metadata, or None
    when it holds no LoRA keys. ``alpha_values``: kohya ``.alpha`` values by key, when read;
    ``adapter_config``: a peft ``adapter_config.json`` beside the file."""
    parsed = parse_lora_keys(shapes)
    if parsed is None:
        return None
    style, layers = parsed
    complete = [layer for layer in layers if layer.down is not None and len(layer.down) >= 2]
    ranks = sorted({layer.down[0] for layer in complete})
    cross = _most_common([layer.down[1] for layer in complete if layer.cross and layer.component == "unet"])
    text_dims = {}
    for component in ("text_encoder", "text_encoder_2"):
        dim = _most_common([layer.down[1] for layer in complete if layer.component == component and layer.leaf in _TEXT_Q])
        if dim is not None:
            text_dims[component] = dim
    components = sorted({layer.component for layer in layers})
    kohya_ldm_unet = style == "kohya" and any(
        layer.component == "unet" and layer.module.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block"))
        for layer in layers
    )  # sd-scripts names SDXL UNet modules in the original layout
    if "text_encoder_2" in components or cross in (2048, 1280) or kohya_ldm_unet:
        architecture = "sdxl"
    elif cross is not None or "text_encoder" in text_dims:
        architecture = "sd"
    else:
        architecture = None
    if cross is not None:
        base = release(architecture, cross)
    elif text_dims.get("text_encoder_2") == 1280:
        base = "sdxl"
    elif text_dims.get("text_encoder") == 1024:
        base = "sd2"
    else:
        base = None  # e.g. self-attention only, or CLIP-L alone (SD 1.x and SDXL share it)
    alpha = None
    if alpha_values:
        alpha = _most_common(list(alpha_values.values()))
    elif adapter_config and isinstance(adapter_config.get("lora_alpha"), (int, float)):
        alpha = float(adapter_config["lora_alpha"])
    elif "lora_adapter_metadata" in metadata:
        try:
            packed = json.loads(metadata["lora_adapter_metadata"])
            alpha = next((float(v) for k, v in packed.items() if k.endswith("lora_alpha") and isinstance(v, (int, float))), None)
        except (ValueError, AttributeError):
            alpha = None
    return LoraInfo(
        style=style,
        rank=max(ranks) if ranks else 0,
        ranks=ranks,
        alpha=alpha,
        layers=len(layers),
        target_modules=sorted({layer.leaf for layer in layers}),
        components=components,
        touches_text_encoder=any(c.startswith("text_encoder") for c in components),
        cross_attention_dim=cross,
        text_encoder_dims=text_dims,
        architecture=architecture,
        base=base,
        base_hint=base_hint(metadata),
    )


def component_of_key(key: str) -> str:
    """The component a LoRA key adapts: ``unet``, ``text_encoder``, ``text_encoder_2`` (any style)."""
    if key.startswith("lora_"):
        comp = key[5:].split("_", 1)[0]
        return _KOHYA_COMPONENTS.get(comp, "unet")
    return _split_component(key)[0]


def kohya_alpha_keys(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The scalar ``.alpha`` keys of a kohya LoRA (to read their values: a few bytes each)."""
    return [key for key in shapes if _KOHYA_ALPHA.match(key)]


def lora_mismatch(lora: ModelFileInfo, model: ModelFileInfo) -> str | None:
    """Why the LoRA ``lora`` does not fit ``model`` (a diffusers folder or SD checkpoint), or None
    when it fits as far as the shapes tell: the adapted cross-attention layers' input width must be
    the model's cross-attention width, each text encoder adapted must exist with the adapted width,
    an SDXL adapter needs an SDXL model (and the other way round), and for a diffusers folder with
    an adapter in diffusers module names, each adapted layer must exist with the adapter's in/out
    features (read from both files' safetensors headers). The message names no paths (it may
    answer a request: 422)."""
    info = lora.lora
    if info is None:
        return f"{_name(lora)} is not a LoRA file"
    if model.kind not in ("diffusers", "checkpoint") or model.architecture is None:
        return f"{_name(model)} is not a Stable Diffusion model"
    what = f"the adapter ({_base_words(info.base, info.cross_attention_dim)}) does not fit the model ({_base_words(model.base, model.cross_attention_dim)})"
    if info.cross_attention_dim is not None and model.cross_attention_dim is not None and info.cross_attention_dim != model.cross_attention_dim:
        return f"{what}: its cross-attention layers take {info.cross_attention_dim} features, the model's give {model.cross_attention_dim}"
    for component, dim in info.text_encoder_dims.items():
        have = model.text_encoder_dims.get(component)
        if component not in model.text_encoder_dims and not any(c.name == component for c in model.components):
            return f"{what}: it adapts {component}, which the model lacks"
        if have is not None and have != dim:
            return f"{what}: it adapts a {component} of width {dim}, the model's is {have}"
    if "text_encoder_2" in info.components and not any(c.name == "text_encoder_2" for c in model.components) and "text_encoder_2" not in model.text_encoder_dims:
        return f"{what}: it adapts text_encoder_2, which the model lacks"
    if info.architecture is not None and info.architecture != model.architecture:
        return f"{what}: an {info.architecture.upper()} adapter on an {model.architecture.upper()} model"
    if info.cross_attention_dim is None and info.base not in (None, "custom") and model.base not in (None, "custom") and info.base != model.base:
        return what
    return _layer_mismatch(lora, model)


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        shapes.update({k: e.shape for k, e in read_safetensors_header(file).tensors.items()})
    return shapes


def _layer_mismatch(lora: ModelFileInfo, model: ModelFileInfo) -> str | None:
    """Layer by layer, for a diffusers folder and an adapter in diffusers module names (peft or
    older diffusers style): every adapted module must exist in the model's component with
    ``(out_features, in_features)`` equal to the adapter's ``(up.shape[0], down.shape[1])``.
    Reads safetensors headers only; None where it cannot tell (other formats, kohya names)."""
    if model.kind != "diffusers" or lora.lora is None or lora.lora.style == "kohya":
        return None
    path = Path(lora.path)
    weights = path / "adapter_model.safetensors" if path.is_dir() else path
    if not weights.is_file() or sniff_format(weights) != "safetensors":
        return None
    parsed = parse_lora_keys(_safetensors_shapes([weights]))
    if parsed is None:
        return None
    by_name = {c.name: c for c in model.components}
    model_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for layer in sorted(parsed[1], key=lambda item: (item.component, item.module)):
        component = by_name.get(layer.component)
        if component is None or component.format != "safetensors" or layer.down is None or layer.up is None:
            continue
        if layer.component not in model_shapes:
            model_shapes[layer.component] = _safetensors_shapes([Path(model.path) / f for f in component.files])
        shapes = model_shapes[layer.component]
        # transformers 5 saves CLIPTextModel without the "text_model." level that adapters name
        weight = shapes.get(f"{layer.module}.weight") or shapes.get(f"{layer.module.removeprefix('text_model.')}.weight")
        if weight is None or len(weight) < 2:
            return f"the adapter changes {layer.component} layer {layer.module}, which the model does not have"
        if (weight[0], weight[1]) != (layer.up[0], layer.down[1]):
            return (
                f"the adapter's {layer.component} layer {layer.module} maps {layer.down[1]} -> {layer.up[0]} features, "
                f"the model's maps {weight[1]} -> {weight[0]}"
            )
    return None


def lora_base_matches(lora: ModelFileInfo, model: ModelFileInfo) -> bool:
    """True when the LoRA fits the model as far as the shapes tell (:func:`lora_mismatch`)."""
    return lora_mismatch(lora, model) is None


def _name(info: ModelFileInfo) -> str:
    return info.path.rstrip("/").rsplit("/", 1)[-1]


def _base_words(base: str | None, cross: int | None) -> str:
    names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner", "custom": "custom SD", None: "base unknown"}
    return names[base] + (f", cross-attention {cross}" if cross is not None else "")
