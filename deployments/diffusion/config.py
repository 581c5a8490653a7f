"""The diffusion family's config: a variant is one Stable Diffusion model on disk (a diffusers
folder or a single checkpoint file), its device and precision, its request bounds, and the
folders its LoRA adapters come from."""

from __future__ import annotations

from typing import Literal

from pixelfleet.deployments.spec import FamilyConfig, Strict
from pydantic import Field, model_validator


class DiffusionVariant(Strict):
    """One diffusion variant (one deployment). Sizes in pixels.

    CPU float32 is the default (the safest, most portable setting); a GPU variant sets
    ``device: cuda`` and ``precision: float16`` here and ``num_gpus`` (fractional is fine, e.g.
    0.5) in the Serve config's ``ray_actor_options`` for ``diffusion-<variant>``.
    """

    model: str = Field(description="a diffusers folder (model_index.json) or a single checkpoint file (.safetensors; .ckpt only with allow_pickle)")
    config: str | None = Field(
        None,
        description="for a single file: a diffusers folder (or one with only the configs and tokenizer) of the same "
        "architecture, read offline; without it diffusers would fetch the configs from the Hub",
    )  # fmt: skip
    allow_pickle: bool = Field(False, description="load pickle checkpoints (.ckpt/.bin), with torch.load(weights_only=True)")
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["float32", "float16", "bfloat16"] = "float32"
    cpu_offload: bool = Field(False, description="GPU: keep components on the CPU and move each to the GPU while it runs (accelerate)")
    attention_slicing: bool = Field(False, description="compute attention in slices: less memory, a little slower")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: the replica's CPUs")
    adapters: list[str] = Field(default_factory=list, description="folders of LoRA .safetensors files; the file name (stem) is the adapter id")
    max_loaded_adapters: int = Field(4, ge=1, le=64, description="LoRA adapters kept loaded per replica (least recently used evicted)")
    max_adapters_per_request: int = Field(4, ge=0, le=8, description="adapters one request may combine")
    max_width: int = Field(1024, ge=8, le=8192, multiple_of=8, description="pixels")
    max_height: int = Field(1024, ge=8, le=8192, multiple_of=8, description="pixels")
    max_steps: int = Field(100, ge=1, le=500)
    max_images: int = Field(4, ge=1, le=16, description="images per request")
    max_batch_size: int = Field(4, ge=1, le=64, description="images per pipeline call across requests with the same settings and adapters")
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=5, description="seconds a request waits for others to batch with")
    warmup: bool = Field(True, description="run one 1-step generation at load, so the first request is not slower")

    @model_validator(mode="after")
    def _check(self) -> DiffusionVariant:
        if self.max_adapters_per_request > self.max_loaded_adapters:
            raise ValueError("max_adapters_per_request must be <= max_loaded_adapters (a request's adapters are loaded together)")
        if self.device == "cpu" and self.precision == "float16":
            raise ValueError("float16 is for device: cuda; on the CPU use float32 (or bfloat16)")
        return self


class DiffusionConfig(FamilyConfig):
    """``families.diffusion``: the variants and the traffic between them."""

    kind: Literal["diffusion"] = "diffusion"
    variants: dict[str, DiffusionVariant]
