"""The super-resolution network as ONNX: export, int8 dynamic quantization, and inference on
ONNX Runtime (CUDA execution provider where present, CPU otherwise).

``pixelfleet export onnx --model DIR`` writes ``model.onnx`` (and ``model.int8.onnx`` with
``--int8``) into a model folder. A replica configured with ``backend: onnx`` uses those files,
or exports them into a cache folder (keyed by the weights' SHA-256) when the folder has none.
Batch, height and width are dynamic, so any tile size runs on one file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pixelfleet.models.srnet import load_model

logger = logging.getLogger(__name__)

ONNX_FILES = {"none": "model.onnx", "int8": "model.int8.onnx"}
CACHE_DIR = Path(os.environ.get("PIXELFLEET_CACHE", Path.home() / ".cache" / "pixelfleet"))


def export_onnx(folder: Path, output_dir: Path | None = None, int8: bool = False, opset: int = 18) -> dict[str, Path]:
    """Export the model of ``folder`` to ONNX (fp32) and optionally int8 (dynamic quantization).

    Input ``lr``: ``(N, 3, h, w)`` float32 in [0, 1]; output ``sr``: ``(N, 3, h*s, w*s)`` float32.
    Files go to ``output_dir`` (default: ``folder``). Returns ``{"none": path[, "int8": path]}``.

    Raises:
        FileNotFoundError: ``folder`` is not a model folder.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, _ = load_model(folder)
    output_dir = output_dir or folder
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"none": output_dir / ONNX_FILES["none"]}
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("height", min=8, max=4096), 3: torch.export.Dim("width", min=8, max=4096)}
    torch.onnx.export(
        model, (torch.rand(2, 3, 32, 32),), str(paths["none"]), input_names=["lr"], output_names=["sr"],
        dynamic_shapes={"lr": dims}, opset_version=opset, external_data=False, verbose=False,
    )  # fmt: skip
    if int8:
        paths["int8"] = output_dir / ONNX_FILES["int8"]
        quantize_dynamic(str(paths["none"]), str(paths["int8"]), weight_type=QuantType.QInt8)
    return paths


def _weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def onnx_file(folder: Path, quantize: str) -> Path:
    """The ONNX file for a model folder and quantization (``none`` or ``int8``): the folder's own
    export, else one in the cache, exported now if missing."""
    shipped = folder / ONNX_FILES[quantize]
    if shipped.is_file():
        return shipped
    cached = CACHE_DIR / "onnx" / _weights_digest(folder) / ONNX_FILES[quantize]
    if not cached.is_file():
        logger.info("exporting %s to %s", folder, cached.parent)
        export_onnx(folder, cached.parent, int8=quantize == "int8")
    return cached


class OnnxSR:
    """ONNX Runtime inference of an exported SR model.

    Args:
        path: ``.onnx`` file from :func:`export_onnx`.
        device: ``cuda`` asks for the CUDA execution provider (falls back to CPU with a warning
            where onnxruntime offers none); ``cpu``.
        num_threads: intra-op threads.
    """

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 1) -> None:
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning("onnxruntime offers no CUDAExecutionProvider: super-resolution runs on CPU")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.path = path
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, 3, t, t)`` float32 in [0, 1] -> ``(N, 3, t*s, t*s)`` float32 (unclamped)."""
        return self.session.run(["sr"], {"lr": np.ascontiguousarray(tiles, dtype=np.float32)})[0]

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, in priority order."""
        return self.session.get_providers()
