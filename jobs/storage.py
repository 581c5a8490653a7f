"""Job inputs and results by URL, through fsspec: a local folder by default, ``s3://`` by s3fs.

A job names its inputs by URL (``/data/in/a.png``, ``file:///data/in/a.png``,
``s3://bucket/in/a.png``). Every URL a request names is checked against the configured roots
before anything is opened (:meth:`Storage.locate`): only the protocols of the roots (``file``,
``s3``), only paths below a root, no ``..`` or ``.`` segments, no percent-escapes (names are
literal), no query or fragment, no control characters or backslashes; a local path is resolved
with its symlinks (``os.path.realpath``) and must still lie below a root's resolved path, and
I/O goes to the resolved path, so a symlink inside a root that points out of it is refused. A
refused URL raises :class:`~pixelfleet.models.errors.InvalidInput` (400). Results are written
below ``results`` only.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import split_protocol
from pydantic import Field, field_validator

from pixelfleet.deployments.spec import Strict
from pixelfleet.models.errors import InvalidInput, NotFound, PayloadTooLarge

DEFAULT_ROOT = "~/.pixelfleet/jobs/files"
DEFAULT_RESULTS = "~/.pixelfleet/jobs/results"
LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")
MAX_URL_CHARS = 2048
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_SEGMENT = re.compile(r"^[^\x00-\x1f\x7f\\]+$")


class StorageConfig(Strict):
    """Where job files may come from and where results go (``jobs.storage`` in the app's args).

    Local roots are paths (``~`` expanded) or ``file://`` URLs; S3 roots are ``s3://bucket`` or
    ``s3://bucket/prefix``. ``options`` are fsspec's storage options per protocol, e.g.
    ``{"s3": {"endpoint_url": "http://minio:9000"}}`` (credentials come from the usual AWS
    environment variables or instance role; keep secrets out of config files).
    """

    roots: list[str] = Field(default_factory=lambda: [DEFAULT_ROOT], min_length=1, description="URLs below which a job may read inputs")
    results: str = Field(DEFAULT_RESULTS, description="URL below which results are written (and may be read)")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="fsspec storage options per protocol (s3: endpoint_url, ...)")
    max_input_bytes: int = Field(1 << 30, gt=0, description="largest input file a job may read, bytes")

    @field_validator("roots", "results")
    @classmethod
    def _known_protocol(cls, value: Any) -> Any:
        for url in value if isinstance(value, list) else [value]:
            protocol = split_protocol(url)[0] or "file"
            if protocol not in LOCAL_PROTOCOLS + S3_PROTOCOLS:
                raise ValueError(f"storage root {url!r}: only local paths, file:// and s3:// are supported")
        return value


@dataclass(frozen=True)
class Location:
    """A checked place in storage: its filesystem, the path fsspec takes, and the canonical URL."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    @property
    def local(self) -> bool:
        """Whether the place is on this machine's file system (``file://``)."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return "file" in protocols

    @property
    def name(self) -> str:
        """The last path segment (the file's name), ``""`` for a bucket's root."""
        return posixpath.basename(self.path.rstrip("/"))


@dataclass(frozen=True)
class _Root:
    protocol: str  # "file" or "s3"
    path: str  # resolved absolute path (local) or "bucket[/prefix]" (s3), no trailing slash


def _protocol_of(url: str) -> tuple[str, str]:
    protocol, path = split_protocol(url)
    protocol = protocol or "file"
    if protocol in LOCAL_PROTOCOLS:
        return "file", path
    if protocol in S3_PROTOCOLS:
        return "s3", path
    return protocol, path


def _parse_root(url: str) -> _Root:
    protocol, path = _protocol_of(url)
    if protocol == "file":
        return _Root("file", os.path.realpath(os.path.expanduser(path)))
    return _Root(protocol, path.strip("/"))


def _within(path: str, root: str, sep: str = "/") -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


def check_url_syntax(url: object) -> str:
    """The checks that need no configuration: a string of at most 2048 characters without
    control characters, backslashes, percent-escapes, ``?`` or ``#``, and no ``.``/``..`` path
    segment. Returns ``url``.

    Raises:
        InvalidInput: any of those.
    """
    if not isinstance(url, str) or not url:
        raise InvalidInput("a storage URL must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput(f"a storage URL may have at most {MAX_URL_CHARS} characters")
    if not _SEGMENT.match(url):
        raise InvalidInput("a storage URL may not hold control characters or backslashes")
    if _ESCAPE.search(url) or "?" in url or "#" in url:
        raise InvalidInput("a storage URL is taken literally: no percent-escapes, query or fragment")
    path = _protocol_of(url)[1]
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidInput("a storage URL may not hold '.' or '..' segments")
    return url


class Storage:
    """Read inputs and write results by URL, only below the configured roots.

    Every method takes URLs as a request names them and checks them first (:meth:`locate`).
    Methods do blocking I/O: call them from a thread (``asyncio.to_thread``) inside an event loop.
    """

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig()
        self._roots = [_parse_root(url) for url in self.config.roots]
        self._results = _parse_root(self.config.results)

    # ---- checking ----

    def _fs(self, protocol: str) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem(protocol, **self.config.options.get(protocol, {}))

    def locate(self, url: str, write: bool = False, results: bool = True) -> Location:
        """Check ``url`` and return where it points.

        ``write``: the URL must lie below the results root; otherwise below an input root or (with
        ``results``) the results root. What a request names as an input should be checked with
        ``results=False``: results belong to their job's owner. A local path is returned resolved
        (symlinks followed).

        Raises:
            InvalidInput: malformed (:func:`check_url_syntax`), another protocol, another bucket,
                or a path outside the roots (also after resolving symlinks).
        """
        check_url_syntax(url)
        protocol, path = _protocol_of(url)
        roots = [self._results] if write else [*self._roots, *([self._results] if results else [])]
        if protocol not in {root.protocol for root in roots}:
            raise InvalidInput(f"storage protocol {protocol!r} is not allowed here")
        if protocol == "file":
            if not path.startswith("/"):
                raise InvalidInput("a local storage path must be absolute")
            resolved = os.path.realpath(path)
            if not any(_within(resolved, root.path, os.sep) for root in roots if root.protocol == "file"):
                raise InvalidInput("the storage URL is outside the configured roots")
            fs = self._fs("file")
            trailing = "/" if path.endswith("/") else ""
            return Location(fs, resolved + trailing, "file://" + resolved + trailing)
        if "//" in path.strip("/") or path.startswith("/"):
            raise InvalidInput("a storage URL may not hold empty path segments")
        if not any(_within(path.rstrip("/"), root.path) for root in roots if root.protocol == protocol):
            raise InvalidInput("the storage URL is outside the configured roots (bucket or prefix)")
        return Location(self._fs(protocol), path, f"{protocol}://{path}")

    def result_url(self, job_id: str, *names: str) -> str:
        """The URL of ``names`` (path segments) inside job ``job_id``'s results folder.

        Raises:
            InvalidInput: a segment that is empty, ``.``/``..`` or holds ``/``, control characters or escapes.
        """
        for segment in (job_id, *names):
            if not segment or segment in (".", "..") or "/" in segment:
                raise InvalidInput(f"bad result path segment {segment!r}")
        root = self._results
        base = f"file://{root.path}" if root.protocol == "file" else f"{root.protocol}://{root.path}"
        return check_url_syntax("/".join([base, job_id, *names]))

    # ---- reading ----

    def size(self, url: str) -> int:
        """Size of the file at ``url``, bytes. Raises InvalidInput, NotFound."""
        where = self.locate(url)
        try:
            info = where.fs.info(where.path)
        except FileNotFoundError:
            raise NotFound(f"no such input file: {url}") from None
        if info.get("type") != "file":
            raise NotFound(f"not a file: {url}")
        return int(info["size"])

    def read_bytes(self, url: str, max_bytes: int | None = None) -> bytes:
        """The whole file at ``url``.

        Raises:
            InvalidInput: the URL is refused. NotFound: no such file.
            PayloadTooLarge: over ``max_bytes`` (default: ``max_input_bytes``).
        """
        limit = max_bytes or self.config.max_input_bytes
        if self.size(url) > limit:
            raise PayloadTooLarge(f"input file over {limit} bytes: {url}")
        where = self.locate(url)
        return where.fs.cat_file(where.path)

    def list_files(self, prefix: str, max_files: int = 100_000) -> list[tuple[str, str]]:
        """Every file below the folder ``prefix`` (recursively), sorted: ``(name, url)`` pairs,
        ``name`` relative to the prefix (``sub/a.png``), ``url`` canonical and checked as
        :meth:`locate` checks (a local symlink pointing out of the roots is refused).

        Raises:
            InvalidInput: the prefix, or a file below it, is refused; more than ``max_files``.
            NotFound: nothing below the prefix.
        """
        where = self.locate(prefix)
        folder = where.path.rstrip("/")
        found = sorted(where.fs.find(folder))
        if not found:
            raise NotFound(f"no files below {prefix}")
        if len(found) > max_files:
            raise InvalidInput(f"more than {max_files} files below {prefix}")
        protocol = "file" if where.local else _protocol_of(where.url)[0]
        return [
            (path[len(folder) + 1 :], self.locate(f"file://{path}" if protocol == "file" else f"{protocol}://{path}").url)
            for path in found
        ]

    @contextlib.contextmanager
    def local_copy(self, url: str) -> Iterator[Path]:
        """A local file holding ``url``'s content: the file itself when local, else a temporary
        download (deleted on exit). For readers that need a path or a seekable file (PyAV).

        Raises:
            InvalidInput, NotFound, PayloadTooLarge: as :meth:`read_bytes`.
        """
        if self.size(url) > self.config.max_input_bytes:
            raise PayloadTooLarge(f"input file over {self.config.max_input_bytes} bytes: {url}")
        where = self.locate(url)
        if where.local:
            yield Path(where.path)
            return
        with tempfile.TemporaryDirectory(prefix="pixelfleet-") as folder:
            target = Path(folder) / (where.name or "input")
            where.fs.get_file(where.path, str(target))
            yield target

    # ---- writing (below the results root only) ----

    def write_bytes(self, url: str, data: bytes) -> str:
        """Write ``data`` to ``url`` (below the results root; parents made); returns the canonical URL.

        Raises:
            InvalidInput: the URL is not below the results root.
        """
        where = self.locate(url, write=True)
        if where.local:
            where.fs.makedirs(posixpath.dirname(where.path), exist_ok=True)
        where.fs.pipe_file(where.path, data)
        return where.url

    def upload(self, local_path: Path, url: str) -> str:
        """Copy a local file to ``url`` (below the results root); returns the canonical URL."""
        where = self.locate(url, write=True)
        if where.local:
            where.fs.makedirs(posixpath.dirname(where.path), exist_ok=True)
        where.fs.put_file(str(local_path), where.path)
        return where.url

    def download(self, url: str, local_path: Path) -> None:
        """Copy ``url`` (any readable root) to a local file."""
        where = self.locate(url)
        where.fs.get_file(where.path, str(local_path))

    def exists(self, url: str) -> bool:
        """Whether a file or folder is at ``url`` (checked as :meth:`locate` checks)."""
        where = self.locate(url)
        return where.fs.exists(where.path)

    def delete(self, url: str, recursive: bool = False) -> None:
        """Remove ``url`` (below the results root); no error when it is absent."""
        where = self.locate(url, write=True)
        with contextlib.suppress(FileNotFoundError):
            where.fs.rm(where.path, recursive=recursive)
