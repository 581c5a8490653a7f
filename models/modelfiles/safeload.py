"""Safe reading of weight files: a file's format from its magic bytes, a checked safetensors header,
and :func:`load_state_dict` (safetensors by default; pickles refused unless allowed, then
``torch.load(weights_only=True)``).

The safetensors checks follow the format's specification (``huggingface/safetensors``, README
"Format" and ``safetensors/src/tensor.rs``): 8 bytes little-endian header length ``N``, ``N``
bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str:
str}}``, then the data buffer, which the tensors cover exactly, contiguously and without overlap.
Everything is checked against the file size before a byte of tensor data is read, so a truncated
file, a header-length bomb or a mislabeled file is a :class:`CorruptModelFile`, never a crash, a
huge allocation or a hang.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pixelfleet.models.errors import CorruptModelFile, ModelFileNotFound, UnrecognizedModelFile, UnsafeModelFile

#: what :func:`sniff_format` tells apart
FileFormat = Literal["safetensors", "torch-zip", "pickle", "onnx", "gguf", "numpy", "hdf5", "empty", "unknown"]

#: bits per element of every safetensors dtype (safetensors/src/tensor.rs ``Dtype``)
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
#: dtypes that hold floating-point weights (converted when a model is cast to fp16/fp32)
FLOAT_DTYPES = frozenset(d for d in DTYPE_BITS if d.startswith(("F", "BF", "E8")))
#: the header-length limit of the safetensors library (``MAX_HEADER_SIZE``, 100 MB)
MAX_HEADER_BYTES = 100_000_000
#: file name endings that promise a pickle-based PyTorch file
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: torch dtype name -> safetensors dtype name, for pickled state dicts
TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "complex64": "C64",
}  # fmt: skip

FORMAT_WORDS = {
    "safetensors": "a safetensors file", "torch-zip": "a PyTorch zip checkpoint (pickle)",
    "pickle": "a pickle (legacy PyTorch checkpoint)", "onnx": "an ONNX model", "gguf": "a GGUF file",
    "numpy": "a NumPy .npy array", "hdf5": "an HDF5 file", "empty": "empty", "unknown": "of no known model format",
}  # fmt: skip


def sniff_format(path: Path) -> FileFormat:
    """The format of the file at ``path`` by its first bytes, whatever its name says.

    ``safetensors``: a header length that fits the file, then ``{``; ``torch-zip``: a zip archive
    (``PK\\x03\\x04``, what ``torch.save`` writes); ``pickle``: pickle protocol 2-5 (legacy
    ``torch.save``); ``onnx``: a protobuf starting with ``ir_version`` (field 1, varint) then a
    known ModelProto field; also ``gguf``, ``numpy``, ``hdf5``, ``empty``, else ``unknown``.
    Reads at most 16 bytes. Raises ModelFileNotFound, UnrecognizedModelFile (not a regular file).
    """
    if not path.exists():
        raise ModelFileNotFound(f"{path.name}: no such file")
    if not path.is_file():  # a FIFO or a device would block or never end: refused unopened
        raise UnrecognizedModelFile(f"{path.name}: not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        return "empty"
    # first: a safetensors header length may begin with any bytes (640 = 80 02 .., like a pickle)
    if len(head) >= 9 and int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    # ModelProto: ir_version = 1 (tag 0x08, a small varint), then opset_import (8: 0x42),
    # producer_name (2: 0x12), producer_version (3: 0x1a), domain (4: 0x22), graph (7: 0x3a)...
    if len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72):
        return "onnx"
    return "unknown"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: ``dtype`` (safetensors name, e.g. ``F16``), ``shape``,
    and its byte range ``[begin, end)`` in the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Elements in the tensor."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header: ``tensors`` by name, ``metadata`` (``__metadata__``, str ->
    str), ``header_bytes`` (N) and ``file_bytes``."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    file_bytes: int = 0


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys")
    return dict(pairs)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read and check the header of a ``.safetensors`` file without reading any tensor data.

    Checks: the 8-byte header length is at most 100 MB and fits the file; the header is UTF-8
    JSON, an object without duplicate keys; ``__metadata__`` maps str to str; each tensor has a
    known dtype, a shape of non-negative ints and ``data_offsets`` whose span equals shape x dtype
    size; the tensors cover the data buffer exactly (sorted by offset: no gap, no overlap, nothing
    missing or left over). Raises ModelFileNotFound, UnrecognizedModelFile (not a regular file),
    CorruptModelFile (with what is wrong).
    """
    name = path.name
    if not path.exists():
        raise ModelFileNotFound(f"{name}: no such file")
    if not path.is_file():
        raise UnrecognizedModelFile(f"{name}: not a regular file")
    size = path.stat().st_size
    if size < 8:
        raise CorruptModelFile(f"{name}: {size} bytes, shorter than a safetensors header (8 bytes of length first)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise CorruptModelFile(
                f"{name}: the safetensors header claims {n} bytes, but the file has {size - 8} after the length "
                f"(limit {MAX_HEADER_BYTES}): truncated or not a safetensors file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptModelFile(f"{name}: the safetensors header is not valid JSON ({type(err).__name__}: {str(err)[:80]})") from None
    if not isinstance(header, dict):
        raise CorruptModelFile(f"{name}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptModelFile(f"{name}: __metadata__ must map strings to strings")
    tensors = {key: _entry(name, key, spec) for key, spec in header.items()}
    data_bytes = size - 8 - n
    expected = 0
    for key, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != expected:
            problem = "overlaps the one before it" if entry.begin < expected else f"leaves a gap of {entry.begin - expected} bytes"
            raise CorruptModelFile(f"{name}: tensor {key!r} {problem} (offsets must be contiguous)")
        expected = entry.end
    if expected > data_bytes:
        raise CorruptModelFile(f"{name}: truncated: the tensors need {expected} bytes of data, the file has {data_bytes}")
    if expected < data_bytes:
        raise CorruptModelFile(f"{name}: {data_bytes - expected} bytes after the last tensor's data")
    return SafetensorsHeader(tensors, metadata, n, size)


def _entry(name: str, key: str, spec) -> TensorEntry:
    if not isinstance(spec, dict):
        raise CorruptModelFile(f"{name}: tensor {key!r} is not described by an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise CorruptModelFile(f"{name}: tensor {key!r} has an unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptModelFile(f"{name}: tensor {key!r} has a bad shape (a list of non-negative integers expected)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise CorruptModelFile(f"{name}: tensor {key!r} has bad data_offsets (two integers, begin <= end, expected)")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise CorruptModelFile(
            f"{name}: tensor {key!r} ({dtype} {shape}) needs {bits / 8:g} bytes but its offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _mislabeled(path: Path, actual: FileFormat) -> CorruptModelFile:
    return CorruptModelFile(f"{path.name} is not what its name says: by its first bytes it is {FORMAT_WORDS[actual]}")


def check_name_matches(path: Path, actual: FileFormat) -> None:
    """Refuse a file whose name promises safetensors or ONNX but whose bytes are something else
    (e.g. a pickle renamed ``.safetensors``). Raises CorruptModelFile."""
    # bytes of no known format under a known name are left to that format's reader, which says
    # precisely what is wrong (e.g. a header length beyond the file: truncated, or a bomb)
    expected = {".safetensors": "safetensors", ".onnx": "onnx"}.get(path.suffix.lower())
    if expected is not None and actual not in (expected, "unknown", "empty"):
        raise _mislabeled(path, actual)


def claimed_format(path: Path, actual: FileFormat) -> FileFormat:
    """The format to read ``path`` as: its bytes' (:func:`sniff_format`), else what its name says
    when the bytes match no format (so that reader reports the damage)."""
    if actual in ("unknown", "empty"):
        return {".safetensors": "safetensors", ".onnx": "onnx"}.get(path.suffix.lower(), actual)
    return actual


def load_state_dict(path: str | Path, allow_pickle: bool = False, device: str = "cpu") -> dict:
    """The tensors of a weight file, as ``{name: torch.Tensor}`` on ``device`` at the stored dtype.

    safetensors (chosen by the file's bytes, not its name): header checked by
    :func:`read_safetensors_header`, then read by ``safetensors.torch.load_file``. Pickle-based
    files (``torch.save`` zip or legacy; ``.ckpt``/``.pt``/``.bin``): refused unless
    ``allow_pickle``, and then read with ``torch.load(weights_only=True)`` (PyTorch's restricted
    unpickler: tensors, containers and primitive values only); a checkpoint dict's ``state_dict``
    is unwrapped and non-tensor entries dropped.

    Raises:
        ModelFileNotFound: nothing at ``path``.
        UnsafeModelFile: a pickle without ``allow_pickle``, or one holding objects besides tensors.
        CorruptModelFile: a truncated or malformed file, or a name that lies about the format.
        UnrecognizedModelFile: bytes of no weight format (e.g. ONNX, GGUF, text).
    """
    path = Path(path)
    if path.is_dir():
        raise UnrecognizedModelFile(f"{path.name} is a folder, not a weight file")
    actual = sniff_format(path)
    check_name_matches(path, actual)
    actual = claimed_format(path, actual)
    if actual == "safetensors":
        header = read_safetensors_header(path)
        unreadable = sorted({e.dtype for e in header.tensors.values()} - set(TORCH_DTYPES.values()))
        if unreadable:
            raise UnrecognizedModelFile(f"{path.name}: dtype {', '.join(unreadable)} cannot be loaded into torch here")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=device)
        except (SafetensorError, OSError, ValueError) as err:  # checked above; a file changed underneath
            raise CorruptModelFile(f"{path.name}: {err}") from None
    if actual in ("torch-zip", "pickle"):
        if not allow_pickle:
            raise UnsafeModelFile(
                f"{path.name} is {FORMAT_WORDS[actual]}, which can run code when loaded: refused. Convert it to "
                "safetensors, or set allow_pickle: true for this model to load it with torch.load(weights_only=True)"
            )
        return _state_dict_of(_torch_load(path, actual, device), path)
    raise UnrecognizedModelFile(f"{path.name} is {FORMAT_WORDS[actual]}, not a weight file (safetensors or a PyTorch checkpoint)")


def _torch_load(path: Path, actual: FileFormat, device: str):
    import torch

    try:
        # mmap: tensors of a zip checkpoint are mapped, not read, until used
        return torch.load(path, map_location=device, weights_only=True, mmap=actual == "torch-zip")
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            first = str(err).split("\n\n")[-1].strip().splitlines()[0][:160] if str(err).strip() else ""
            raise UnsafeModelFile(
                f"{path.name} holds objects besides tensors, which torch.load(weights_only=True) refuses ({first})"
            ) from None
        raise CorruptModelFile(f"{path.name}: damaged pickle ({str(err)[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError) as err:
        raise CorruptModelFile(f"{path.name}: damaged or truncated PyTorch checkpoint ({type(err).__name__}: {str(err)[:120]})") from None


def _state_dict_of(obj, path: Path) -> dict:
    import torch

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CorruptModelFile(f"{path.name}: holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CorruptModelFile(f"{path.name}: holds no tensors")
    return tensors
