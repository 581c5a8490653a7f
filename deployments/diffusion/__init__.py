"""The diffusion family: Stable Diffusion pipelines from a local diffusers folder or single file,
with LoRA adapters chosen per request (issue 13)."""
