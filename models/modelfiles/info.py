"""What :func:`pixelfleet.models.modelfiles.inspect` reports about a path, as pydantic models (the
JSON of ``pixelfleet inspect --json``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from pixelfleet.models.modelfiles.safeload import DTYPE_BITS, FLOAT_DTYPES

#: ``kind`` values: what a path holds
Kind = Literal["diffusers", "checkpoint", "lora", "onnx", "superres", "state_dict"]
#: a Stable Diffusion base a model is, or a LoRA fits: the releases by their cross-attention
#: width (SD 1.x 768, SD 2.x 1024, SDXL 2048, the SDXL refiner 1280); ``custom``: SD-shaped with
#: other widths (e.g. the tiny test pipeline)
Base = Literal["sd1", "sd2", "sdxl", "sdxl-refiner", "custom"]
Capability = Literal["txt2img", "img2img", "inpaint", "superres", "ocr"]


class Memory(BaseModel):
    """Bytes the weights take: as stored, and cast to fp16 / fp32 (floating tensors only; integer
    tensors such as position ids keep their size)."""

    stored_bytes: int
    fp16_bytes: int
    fp32_bytes: int

    @classmethod
    def of(cls, tensors: Iterable[tuple[str, int]]) -> Memory:
        """From ``(safetensors dtype, element count)`` pairs."""
        stored = fp16 = fp32 = 0
        for dtype, numel in tensors:
            nbytes = numel * DTYPE_BITS[dtype] // 8
            stored += nbytes
            fp16 += numel * 2 if dtype in FLOAT_DTYPES else nbytes
            fp32 += numel * 4 if dtype in FLOAT_DTYPES else nbytes
        return cls(stored_bytes=stored, fp16_bytes=fp16, fp32_bytes=fp32)

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            stored_bytes=self.stored_bytes + other.stored_bytes,
            fp16_bytes=self.fp16_bytes + other.fp16_bytes,
            fp32_bytes=self.fp32_bytes + other.fp32_bytes,
        )


class Component(BaseModel):
    """One part of a model: a diffusers component folder, a key prefix of a single-file checkpoint
    (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``ema``), or an extra file."""

    name: str
    library: str | None = Field(None, description="diffusers, transformers, ... (model_index.json)")
    class_name: str | None = None
    files: list[str] = Field(default_factory=list, description="weight files read, relative to the model path")
    format: Literal["safetensors", "pickle", "onnx", "none"] = "none"
    variants: list[str] = Field(default_factory=list, description="other weight variants present, e.g. fp16")
    parameters: int | None = Field(None, description="elements in its tensors; None: not read (a pickle without allow_pickle)")
    dtypes: dict[str, int] = Field(default_factory=dict, description="elements per stored dtype (safetensors names: F32, F16, ...)")
    memory: Memory | None = None
    config: dict = Field(default_factory=dict, description="the few config fields that matter here (e.g. cross_attention_dim)")


class LoraInfo(BaseModel):
    """A LoRA adapter: its key style, rank, what it adapts, and the base it fits (from the shapes)."""

    style: Literal["peft", "diffusers", "kohya"] = Field(
        description="peft: <module>.lora_A/lora_B.weight; diffusers: <module>.lora.down/up.weight (older diffusers); "
        "kohya: lora_unet_<module>.lora_down/lora_up.weight + .alpha"
    )
    rank: int = Field(description="the largest rank of its layers")
    ranks: list[int] = Field(description="every rank present")
    alpha: float | None = Field(None, description="lora_alpha (kohya .alpha, a peft adapter_config.json, or diffusers metadata)")
    layers: int = Field(description="modules it adapts")
    target_modules: list[str] = Field(description="module leaf names adapted, e.g. to_k, to_out.0, q_proj")
    components: list[str] = Field(description="unet, text_encoder, text_encoder_2")
    touches_text_encoder: bool
    cross_attention_dim: int | None = Field(None, description="input features of the adapted cross-attention to_k/to_v layers")
    text_encoder_dims: dict[str, int] = Field(default_factory=dict, description="hidden size per text encoder adapted")
    architecture: Literal["sd", "sdxl"] | None = None
    base: Base | None = Field(None, description="the base the shapes fit; None: the adapted layers do not tell")
    base_hint: str | None = Field(None, description="what the file's metadata claims (kohya ss_base_model_version, modelspec.architecture)")


class TensorSpec(BaseModel):
    """An ONNX graph input or output: ``shape`` entries are ints, symbolic names, or None (unknown)."""

    name: str
    dtype: str
    shape: list[int | str | None] | None


class OnnxInfo(BaseModel):
    """An ONNX model's interface, read from the graph without its external data."""

    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    initializers: int
    external_data: bool = Field(description="weights in files beside the .onnx")


class ModelFileInfo(BaseModel):
    """What a path holds (``pixelfleet inspect``). Sizes in bytes; ``parameters`` counts tensor
    elements; SD fields are None for what is not Stable Diffusion."""

    path: str
    kind: Kind
    format: Literal["folder", "safetensors", "pickle", "onnx"]
    class_name: str | None = Field(None, description="the pipeline class (model_index.json) or architecture")
    architecture: Literal["sd", "sdxl"] | None = Field(None, description="SD: one CLIP text encoder; SDXL: two + size/crop conditioning")
    base: Base | None = None
    cross_attention_dim: int | None = Field(None, description="context width the UNet's cross-attention reads (to_k input features)")
    unet_in_channels: int | None = Field(None, description="4: txt2img/img2img; 9: an inpainting UNet (latents + mask + masked image)")
    text_encoder_dims: dict[str, int] = Field(default_factory=dict, description="hidden size of each text encoder")
    capabilities: list[Capability] = Field(default_factory=list)
    scale: int | None = Field(None, description="super-resolution scale factor")
    parameters: int | None = Field(None, description="elements in all tensors used for inference (EMA copies left out)")
    memory: Memory | None = None
    components: list[Component] = Field(default_factory=list)
    lora: LoraInfo | None = None
    onnx: OnnxInfo | None = None
    metadata: dict[str, str] = Field(default_factory=dict, description="the safetensors __metadata__ (long values cut)")
    notes: list[str] = Field(default_factory=list)
