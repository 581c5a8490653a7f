"""What a replica may use of its machine (shared by the family deployments)."""

from __future__ import annotations

import math
import os

import ray
import torch


def replica_threads(requested: int | None = None) -> int:
    """Compute threads for this replica: ``requested``, else its Ray CPUs rounded up (>= 1).

    Ray sets ``OMP_NUM_THREADS=1`` inside replicas, which would leave a replica granted several
    CPUs on one core. Outside Ray (tests, benchmarks) the default is every core.
    """
    if requested:
        return requested
    if not ray.is_initialized():
        return os.cpu_count() or 1
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, math.ceil(cpus)) if cpus else 1


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX): there bf16
    autocast is 2-3x faster than float32; elsewhere it is emulated and slower."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def auto_precision(device: str) -> str:
    """The autocast dtype that ``precision: auto`` means on ``device``: float16 on CUDA, bfloat16
    on CPUs with native bf16 (:func:`cpu_has_native_bf16`), else float32."""
    if device == "cuda":
        return "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"
