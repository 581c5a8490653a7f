"""The order a LoRA run draws its images in, and the tensors a batch becomes.

Every worker holds the whole captioned set (``train/lora/data.py``) and draws its share of each
step by an order that is a pure function of the seed and the step (:func:`batch_indices`, the
scheme of ``torch.utils.data.DistributedSampler``), so a resumed run draws exactly the batches
the uninterrupted run would have drawn, without any data-loader state in the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


class NotEnoughImagesError(ValueError):
    """Fewer images than one step's batch needs."""


def steps_per_epoch(examples: int, world_size: int, per_worker: int) -> int:
    """Batches each worker draws per pass over ``examples`` images (a partial batch is dropped).

    Raises:
        NotEnoughImagesError: fewer images than one step needs.
    """
    per_rank = -(-examples // world_size)  # DistributedSampler pads the ranks to equal shares
    if per_rank < per_worker:
        raise NotEnoughImagesError(
            f"{examples} images cannot fill one step of {per_worker} images on each of {world_size} workers: "
            "add images or lower optim.batch_size"
        )
    return per_rank // per_worker


def batch_indices(step: int, examples: int, rank: int, world_size: int, per_worker: int, seed: int) -> list[int]:
    """The example indices rank ``rank`` trains on at optimizer step ``step`` (0-based).

    Each epoch is a permutation of the examples drawn from ``seed + epoch``; as
    ``DistributedSampler`` does, it is padded by repeating its head to a multiple of
    ``world_size`` and dealt to the ranks round-robin. The result depends on nothing but the
    arguments: the same step gives the same batch in a run that resumed.
    """
    per_epoch = steps_per_epoch(examples, world_size, per_worker)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(examples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = -(-examples // world_size)
    order += order[: per_rank * world_size - examples]
    mine = order[rank::world_size]
    return mine[index * per_worker : (index + 1) * per_worker]


def to_model_input(pixels: list[np.ndarray], flips: torch.Tensor) -> torch.Tensor:
    """``(R, R, 3)`` uint8 images -> ``(N, 3, R, R)`` float32 in [-1, 1] (the VAE's range), each
    flipped left-right where ``flips`` (``(N,)`` bool) says so."""
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return torch.where(flips[:, None, None, None], batch.flip(-1), batch).contiguous()
