"""One worker's LoRA training state and its optimizer step, without Ray.

:class:`LoraTraining` holds the adapted modules, AdamW, the learning-rate schedule, the gradient
scaler, the step and the random generator that draws flips, VAE samples, timesteps and noise.
Its :meth:`~LoraTraining.state_dict` is the whole of it, so a run restored from a checkpoint
takes exactly the steps the uninterrupted run took (tested). ``train/lora/loop.py`` drives it on
each Ray Train worker.

The step is the noise-prediction objective of latent diffusion (Ho et al. 2020,
arXiv:2006.11239; Rombach et al. 2022, arXiv:2112.10752) as diffusers' ``train_text_to_image_lora.py``
computes it: VAE latents of the images, noise added at a random timestep by the DDPM forward
process, MSE between the UNet's prediction and the noise (or the velocity, for
``v_prediction`` models such as SD 2.x 768), optionally Min-SNR weighted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pixelfleet.train.lora.config import LoraTrainConfig
from pixelfleet.train.lora.sampler import batch_indices, to_model_input
from pixelfleet.train.lora.model import SDParts, add_adapters, load_parts
from pixelfleet.train.srgan.steps import Precision, resolve_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rng_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s generator: distinct per rank, fixed by the run's seed."""
    return seed * 1_000_003 + rank


class LoraTraining:
    """The training state of one worker.

    ``wrap`` wraps a trainable module for data parallelism (Ray Train's ``prepare_model``: DDP
    across workers); the default leaves it as it is (one process). Frozen weights live in the
    precision's dtype (fp16/bf16 halve their memory) and the adapter's in float32, as diffusers'
    script keeps them (``cast_training_params``).

    Raises:
        BaseModelError: ``cfg.base_model`` is not an SD 1.x/2.x diffusers folder.
    """

    def __init__(
        self,
        cfg: LoraTrainConfig,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda module: module,
    ) -> None:
        self.cfg, self.device, self.rank, self.world_size = cfg, device, rank, world_size
        self.precision = Precision(resolve_precision(cfg.precision, device), device)
        self.parts: SDParts = load_parts(cfg.base_model)
        torch.manual_seed(cfg.seed)  # peft draws lora_A from the global generator
        add_adapters(self.parts, cfg.lora)
        weight_dtype = DTYPES[self.precision.name]
        for module in (self.parts.unet, self.parts.vae, self.parts.text_encoder):
            module.to(device)
            if weight_dtype != torch.float32:
                module.to(dtype=weight_dtype)
            for param in module.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        self.unet = wrap(self.parts.unet)
        self.text_encoder = wrap(self.parts.text_encoder) if cfg.lora.text_encoder else self.parts.text_encoder
        self.trainable = [p for module in (self.parts.unet, self.parts.text_encoder) for p in module.parameters() if p.requires_grad]
        optim = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=optim.learning_rate, betas=(optim.adam_beta1, optim.adam_beta2),
            weight_decay=optim.weight_decay, eps=optim.adam_epsilon,
        )  # fmt: skip
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(optim.lr_scheduler, self.optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=optim.steps)
        self.generator = torch.Generator().manual_seed(rng_seed(cfg.seed, rank))
        self.step = 0
        self.train_seconds = 0.0

    # ---- the step ----

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Captions -> ``(N, L)`` int64 token ids, padded/truncated to the tokenizer's length (77 for CLIP)."""
        tokenizer = self.parts.tokenizer
        return tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids

    def batch(self, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's batch of the current step from the run's examples (rows of
        ``captioned_dataset``, in a fixed order): ``(N, 3, R, R)`` float32 in [-1, 1], randomly
        flipped, and ``(N, L)`` token ids."""
        per_worker = self.cfg.optim.batch_size // self.world_size
        chosen = [examples[i] for i in batch_indices(self.step, len(examples), self.rank, self.world_size, per_worker, self.cfg.seed)]
        flips = torch.rand(len(chosen), generator=self.generator) < 0.5
        if not self.cfg.data.random_flip:
            flips = torch.zeros_like(flips)
        pixels = to_model_input([np.asarray(row["pixels"]) for row in chosen], flips)
        return pixels, self.tokenize([str(row["caption"]) for row in chosen])

    def _randn(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def loss(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The (Min-SNR weighted) MSE of the noise (or velocity) prediction, a float32 scalar."""
        parts, optim = self.parts, self.cfg.optim
        weight_dtype = DTYPES[self.precision.name]
        with torch.no_grad():
            posterior = parts.vae.encode(pixels.to(self.device, dtype=weight_dtype)).latent_dist
            # latent_dist.sample() with the run's generator: mean + std * eps
            latents = (posterior.mean + posterior.std * self._randn(posterior.mean.shape).to(posterior.mean.dtype)) * parts.vae.config.scaling_factor
        noise = self._randn(latents.shape)
        if optim.noise_offset:
            noise += optim.noise_offset * self._randn(torch.Size((latents.shape[0], latents.shape[1], 1, 1)))
        count = parts.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, count, (latents.shape[0],), generator=self.generator).to(self.device)
        latents = latents.float()
        noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction_type = parts.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = parts.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r} in {parts.folder}/scheduler")
        with self.precision.autocast():
            with torch.set_grad_enabled(self.cfg.lora.text_encoder):
                hidden = self.text_encoder(input_ids.to(self.device), return_dict=False)[0]
            prediction = self.unet(noisy.to(weight_dtype), timesteps, hidden, return_dict=False)[0]
        if optim.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean")
        from diffusers.training_utils import compute_snr

        snr = compute_snr(parts.noise_scheduler, timesteps)
        weights = torch.stack([snr, optim.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        weights = weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_image * weights).mean()

    def train_step(self, examples: list[dict]) -> dict[str, float]:
        """One optimizer step on this step's batch; returns ``{"loss", "learning_rate"}``."""
        self.unet.train()
        pixels, input_ids = self.batch(examples)
        loss = self.loss(pixels, input_ids)
        scaler = self.precision.scaler
        scaler.scale(loss).backward()
        if self.cfg.optim.max_grad_norm is not None:
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.optim.max_grad_norm)
        learning_rate = self.lr_scheduler.get_last_lr()[0]
        scaler.step(self.optimizer)
        scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": float(loss.detach()), "learning_rate": float(learning_rate)}

    # ---- state ----

    def adapter_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The adapter's weights in peft's keys: ``{"unet": ..., "text_encoder": ...}`` (the
        second only when the text encoder is adapted)."""
        from peft.utils import get_peft_model_state_dict

        state = {"unet": get_peft_model_state_dict(self.parts.unet)}
        if self.cfg.lora.text_encoder:
            state["text_encoder"] = get_peft_model_state_dict(self.parts.text_encoder)
        return {part: {k: v.detach().cpu().clone() for k, v in weights.items()} for part, weights in state.items()}

    def rng_state(self) -> dict[str, torch.Tensor]:
        """This rank's random state: its generator, and torch's global ones (LoRA dropout)."""
        state = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self, rng_states: list[dict[str, torch.Tensor]] | None = None) -> dict:
        """The whole training state: step, adapter, optimizer, LR schedule, gradient scaler and the
        random state of every rank (``rng_states``, rank order; default: this rank's only)."""
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "adapter": self.adapter_state(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng_states if rng_states is not None else [self.rng_state()],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s output.

        Raises:
            ValueError: the state holds no random state for this rank (another number of workers).
        """
        from peft.utils import set_peft_model_state_dict

        if self.rank >= len(state["rng"]):
            raise ValueError(f"the checkpoint holds the random state of {len(state['rng'])} workers; this is worker {self.rank}")
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        set_peft_model_state_dict(self.parts.unet, state["adapter"]["unet"])
        if "text_encoder" in state["adapter"]:
            set_peft_model_state_dict(self.parts.text_encoder, state["adapter"]["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.rank]
        self.generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
