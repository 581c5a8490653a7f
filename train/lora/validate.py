"""Validation images: the adapted pipeline's output for fixed prompts and seeds, saved as PNG.

The same prompt, seed and settings at two steps differ only by what the adapter learnt in
between, so the images show training progress side by side (``<run_dir>/validation/``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pixelfleet.train.lora.config import Validation
from pixelfleet.train.lora.model import validation_pipeline
from pixelfleet.train.lora.steps import LoraTraining


def validation_images(training: LoraTraining, validation: Validation, size: int) -> list[tuple[int, int, Image.Image]]:
    """One image per prompt and seed, ``size`` x ``size`` pixels (the training resolution):
    ``[(prompt index, seed, RGB image)]``. Runs the pipeline over the run's own modules in eval
    mode under the run's autocast, each image from a CPU generator seeded with its seed."""
    parts = training.parts
    pipe = validation_pipeline(parts, parts.unet, parts.text_encoder)
    images = []
    parts.unet.eval()
    parts.text_encoder.eval()
    try:
        with torch.no_grad(), training.precision.autocast():
            for index, prompt in enumerate(validation.prompts):
                for seed in validation.seeds:
                    out = pipe(
                        prompt,
                        num_inference_steps=validation.num_inference_steps,
                        guidance_scale=validation.guidance_scale,
                        height=size,
                        width=size,
                        generator=torch.Generator().manual_seed(seed),
                        output_type="pil",
                    )
                    images.append((index, seed, out.images[0]))
    finally:
        parts.unet.train()
        if training.cfg.lora.text_encoder:
            parts.text_encoder.train()
    return images


def save_validation(images: list[tuple[int, int, Image.Image]], folder: Path, step: int) -> list[Path]:
    """Write ``<folder>/step-<step, 6 digits>/prompt<i>-seed<s>.png``; returns the paths."""
    target = folder / f"step-{step:06d}"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, seed, image in images:
        path = target / f"prompt{index}-seed{seed}.png"
        image.save(path)
        paths.append(path)
    return paths
