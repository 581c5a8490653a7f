"""LoRA adapters on disk: the catalog of a variant's adapter folders, read again on every look-up
(so files added while the app runs are served without a restart), each file inspected once per
version (path, size, mtime) from its safetensors header alone, and whether it fits the variant.

Inspection and the fit check are :mod:`pixelfleet.models.modelfiles`' (``inspect``,
``lora_mismatch``: layer by layer against a diffusers folder, by widths against a single file).
Only ``.safetensors`` files are adapters (a LoRA never needs a pickle).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from pixelfleet.deployments.diffusion.params import ADAPTER_ID
from pixelfleet.models.errors import (
    CorruptModelFile,
    ModelFileError,
    NotFound,
    Unprocessable,
)
from pixelfleet.models.modelfiles import ModelFileInfo, inspect, lora_mismatch

_ID = re.compile(ADAPTER_ID)


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter file: ``id`` (its stem), ``path``, and modelfiles' inspection of it
    (``details.lora``: rank, base, cross-attention width, key style)."""

    id: str
    path: str
    details: ModelFileInfo

    @property
    def rank(self) -> int:
        return self.details.lora.rank

    def listing(self) -> dict:
        """What ``GET /v1/diffusion/loras`` shows (ids, never paths, leave the replica)."""
        lora = self.details.lora
        return {
            "id": self.id, "rank": lora.rank, "alpha": lora.alpha, "base": lora.base, "cross_attention_dim": lora.cross_attention_dim,
            "style": lora.style, "target_modules": lora.target_modules, "text_encoder": lora.touches_text_encoder,
            "size_bytes": Path(self.path).stat().st_size,
        }  # fmt: skip


def inspect_adapter(path: Path) -> AdapterInfo:
    """An adapter file's :class:`AdapterInfo` (header only). Raises the ModelFileError kinds."""
    info = inspect(path)
    if info.lora is None:
        raise CorruptModelFile(f"adapter {path.stem}: the file holds no LoRA weights")
    return AdapterInfo(path.stem, str(path), info)


def check_fits(adapter: AdapterInfo, model: ModelFileInfo) -> None:
    """Raises Unprocessable (422) when ``adapter`` does not fit the variant's ``model``."""
    why = lora_mismatch(adapter.details, model)
    if why is not None:
        raise Unprocessable(f"adapter {adapter.id!r} does not fit this variant: {why}")


class AdapterCatalog:
    """The adapters of a variant's folders, by id (the first folder wins a duplicate id).

    Thread-safe; every call lists the folders again (a directory listing), and inspects only the
    files that are new or changed since the last call.
    """

    def __init__(self, folders: list[str]) -> None:
        self.folders = [Path(f).expanduser() for f in folders]
        self._seen: dict[tuple[str, int, int], AdapterInfo | ModelFileError] = {}  # grows with file versions seen (small)
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

    def _info(self, path: Path) -> AdapterInfo | ModelFileError | NotFound:
        try:
            stat = path.stat()
        except OSError:  # removed since the folder was listed
            return NotFound(f"unknown adapter {path.stem!r}; GET /v1/diffusion/loras lists them")
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
        if isinstance(info, (ModelFileError, NotFound)):
            raise type(info)(info.message)
        return info

    def listing(self, model: ModelFileInfo) -> list[dict]:
        """Every adapter with its rank, base and whether it fits ``model`` (unreadable files
        listed with their error)."""
        out = []
        for adapter_id, path in self._files().items():
            info = self._info(path)
            if isinstance(info, (ModelFileError, NotFound)):
                out.append({"id": adapter_id, "error": {"code": info.code, "message": info.message}})
                continue
            why = lora_mismatch(info.details, model)
            out.append({**info.listing(), "fits": why is None, **({"mismatch": why} if why else {})})
        return out

