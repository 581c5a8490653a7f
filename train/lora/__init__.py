"""LoRA fine-tuning of Stable Diffusion on Ray Train (``pixelfleet train lora``; issue 13)."""
