"""Model files, shared by every family: what a path holds (:func:`inspect`) and safe loading
(:func:`load_state_dict`: safetensors by default, pickles refused unless allowed).

- ``safeload``: format by magic bytes, the checked safetensors header, ``load_state_dict``;
- ``sd``: Stable Diffusion 1.x / 2.x / SDXL told apart from keys and shapes;
- ``lora``: LoRA key styles, rank, targets, the base they fit, ``lora_base_matches``;
- ``detect``: ``inspect`` for diffusers folders, single files, LoRAs, ONNX and SR folders;
- ``info``: the pydantic models it returns.
"""

from pixelfleet.models.modelfiles.detect import inspect
from pixelfleet.models.modelfiles.info import Component, LoraInfo, Memory, ModelFileInfo, OnnxInfo, TensorSpec
from pixelfleet.models.modelfiles.lora import lora_base_matches, lora_mismatch
from pixelfleet.models.modelfiles.safeload import (
    SafetensorsHeader,
    TensorEntry,
    load_state_dict,
    read_safetensors_header,
    sniff_format,
)

__all__ = [
    "Component", "LoraInfo", "Memory", "ModelFileInfo", "OnnxInfo", "SafetensorsHeader", "TensorEntry", "TensorSpec",
    "inspect", "load_state_dict", "lora_base_matches", "lora_mismatch", "read_safetensors_header", "sniff_format",
]  # fmt: skip
