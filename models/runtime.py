"""Precision and device choice, shared by training and serving."""

from __future__ import annotations

import torch


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
