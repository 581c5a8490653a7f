"""LoRA adapters on disk: the catalog of a variant's adapter folders, read again on every look-up
(so files added while the app runs are served without a restart), each file inspected once per
version (path, size, mtime) from its safetensors header alone, and whether it fits the variant.

Inspection and the fit check are :mod:`pixelfleet.models.modelfiles`' (``inspect``,
``lora_mismatch``); :func:`_minimal_inspect` stands in where that module is not installed.
Only ``.safetensors`` files are adapters (a LoRA never needs a pickle).
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pixelfleet.deployments.diffusion.params import ADAPTER_ID
from pixelfleet.models.errors import CorruptModelFile, ModelFileError, NotFound, Unprocessable

_ID = re.compile(ADAPTER_ID)
#: cross-attention width -> the SD release it belongs to
RELEASES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter file: ``id`` (its stem), ``rank``, ``base`` (``sd1``, ``sd2``, ``sdxl``,
    ``custom``, or None when the shapes do not tell), ``cross_attention_dim`` (input features of
    its cross-attention ``to_k``/``to_v`` layers), key ``style``, ``size_bytes``."""

    id: str
    path: str
    rank: int
    base: str | None
    cross_attention_dim: int | None
    style: str
    size_bytes: int
    details: Any = None  # modelfiles' ModelFileInfo, when that module inspected it

    def listing(self) -> dict:
        """What ``GET /v1/diffusion/loras`` shows (no path: ids, never paths, leave the replica)."""
        out = asdict(self)
        out.pop("path"), out.pop("details")
        return out


@dataclass(frozen=True)
class ModelFacts:
    """What the fit check needs of the variant's model: its cross-attention width, ``sd`` or
    ``sdxl``, and modelfiles' ``ModelFileInfo`` of its path where available."""

    cross_attention_dim: int
    architecture: str
    details: Any = None


def _minimal_inspect(path: Path) -> AdapterInfo:
    """Rank and cross-attention width from the safetensors header (peft ``lora_A``/``lora_B``,
    older diffusers ``lora.down``/``lora.up``, kohya ``lora_down``/``lora_up`` keys)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        raise CorruptModelFile(f"adapter {path.stem}: not a readable safetensors file ({type(err).__name__})") from None
    downs = {k: s for k, s in shapes.items() if re.search(r"(lora_A|lora\.down|lora_down)\.weight$", k) and len(s) >= 2}
    if not downs:
        raise CorruptModelFile(f"adapter {path.stem}: no LoRA weights in the file")
    cross = [s[1] for k, s in downs.items() if re.search(r"attn2[._]to_[kv]", k)]
    style = "kohya" if any(k.startswith("lora_unet_") for k in downs) else "peft" if any("lora_A" in k for k in downs) else "diffusers"
    dim = max(set(cross), key=cross.count) if cross else None
    return AdapterInfo(path.stem, str(path), max(s[0] for s in downs.values()), RELEASES.get(dim, "custom") if dim else None, dim, style, path.stat().st_size)


def inspect_adapter(path: Path) -> AdapterInfo:
    """An adapter file's :class:`AdapterInfo`. Raises CorruptModelFile (and modelfiles' errors)."""
    try:
        from pixelfleet.models.modelfiles import inspect
    except ImportError:
        return _minimal_inspect(path)
    info = inspect(path)
    if info.lora is None:
        raise CorruptModelFile(f"adapter {path.stem}: the file holds no LoRA weights")
    lora = info.lora
    return AdapterInfo(path.stem, str(path), lora.rank, lora.base, lora.cross_attention_dim, lora.style, path.stat().st_size, info)


def inspect_model(path: str, cross_attention_dim: int, architecture: str) -> ModelFacts:
    """:class:`ModelFacts` of the variant's model (the loaded UNet's width and the pipeline kind;
    modelfiles' inspection of ``path`` where available, or None where it cannot read it)."""
    details = None
    try:
        from pixelfleet.models.modelfiles import inspect

        details = inspect(path, allow_pickle=True)
    except (ImportError, ModelFileError):
        pass
    return ModelFacts(cross_attention_dim, architecture, details)


def mismatch(adapter: AdapterInfo, model: ModelFacts) -> str | None:
    """Why ``adapter`` does not fit ``model``, or None (as far as the shapes tell)."""
    if adapter.details is not None and model.details is not None:
        from pixelfleet.models.modelfiles import lora_mismatch

        return lora_mismatch(adapter.details, model.details)
    if adapter.cross_attention_dim is not None and adapter.cross_attention_dim != model.cross_attention_dim:
        return (
            f"adapter {adapter.id} was made for a model with cross-attention width {adapter.cross_attention_dim} "
            f"({adapter.base}); this variant's is {model.cross_attention_dim}"
        )
    return None


class AdapterCatalog:
    """The adapters of a variant's folders, by id (the first folder wins a duplicate id).

    Thread-safe; every call lists the folders again (a directory listing), and inspects only the
    files that are new or changed since the last call.
    """

    def __init__(self, folders: list[str]) -> None:
        self.folders = [Path(f).expanduser() for f in folders]
        self._seen: dict[tuple[str, int, int], AdapterInfo | ModelFileError] = {}
        self._lock = threading.Lock()

    def _files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.safetensors")):
                if _ID.match(path.stem) and path.stem not in found:
                    found[path.stem] = path
        return found

    def _info(self, path: Path) -> AdapterInfo | ModelFileError:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._seen:
                try:
                    self._seen[key] = inspect_adapter(path)
                except ModelFileError as err:
                    self._seen[key] = err
            return self._seen[key]

    def get(self, adapter_id: str) -> AdapterInfo:
        """The adapter called ``adapter_id``.

        Raises:
            NotFound: no such adapter (404). ModelFileError: the file is not a usable LoRA (422).
        """
        path = self._files().get(adapter_id)
        if path is None:
            raise NotFound(f"unknown adapter {adapter_id!r}; GET /v1/diffusion/loras lists them")
        info = self._info(path)
        if isinstance(info, ModelFileError):
            raise type(info)(info.message)
        return info

    def listing(self, model: ModelFacts) -> list[dict]:
        """Every adapter with its rank, base and whether it fits ``model`` (unreadable files
        listed with their error)."""
        out = []
        for adapter_id, path in self._files().items():
            info = self._info(path)
            if isinstance(info, ModelFileError):
                out.append({"id": adapter_id, "error": {"code": info.code, "message": info.message}})
                continue
            why = mismatch(info, model)
            out.append({**info.listing(), "fits": why is None, **({"mismatch": why} if why else {})})
        return out


def check_fits(adapter: AdapterInfo, model: ModelFacts) -> None:
    """Raises Unprocessable (422) when ``adapter`` does not fit ``model``."""
    why = mismatch(adapter, model)
    if why is not None:
        raise Unprocessable(f"adapter {adapter.id!r} does not fit this variant: {why}")
