"""Batch jobs (``operation: "batch"``): one operation of the job's family over many images.

The images are a list of storage URLs, every file below a folder prefix, or the files of a zip;
each answer is written into the job's results folder ``OUT`` (``<results root>/<job id>``, never
elsewhere) under the input's relative name (its suffix replaced by the answer's:
``photos/a.jpg`` -> ``OUT/photos/a.png``), with a manifest beside them, ``OUT/manifest.jsonl``: one JSON object per input, in input order,
``{"input", "output", "status": "ok"|"failed", "error": {"code", "message"}|null, "variant",
"seconds"}``. A bad image (any 4xx: not an image, missing, too large) fails only its own item;
an error of the service (5xx) ends the run, and the worker's retry resumes it.

Items run in chunks of ``chunk_size`` (``concurrency`` of them in flight, so the family's
``@serve.batch`` fills); after each chunk its manifest lines are written as a part file and the
job checkpoints ``{"next", "parts", "ok", "failed"}``, so a rerun after a crash redoes at most
one chunk. The parts are joined into the manifest at the end. Progress is reported per item.
"""

from __future__ import annotations

import asyncio
import io
import json
import posixpath
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

from pydantic import Field, model_validator

from pixelfleet.deployments.spec import Strict
from pixelfleet.jobs.context import JobContext
from pixelfleet.jobs.storage import Storage, check_url_syntax
from pixelfleet.jobs.work import SUFFIXES, WorkResult, is_item_error, parse_params, variants_of
from pixelfleet.models.errors import InvalidInput, PayloadTooLarge

MANIFEST = "manifest.jsonl"
PARTS = ".manifest-parts"
MEDIA_TYPE = "application/x-ndjson"


class BatchParams(Strict):
    """A batch job's ``params``: exactly one of ``inputs``, ``prefix``, ``zip``."""

    operation: str = Field(description="the family's operation run on every image, e.g. upscale")
    inputs: list[str] | None = Field(None, min_length=1, max_length=10_000, description="storage URLs of the images")
    prefix: str | None = Field(None, description="a storage folder: every file below it (recursively)")
    zip: str | None = Field(None, description="the storage URL of a zip of images")
    params: dict = Field(default_factory=dict, description="the operation's options (as its REST route takes them)")
    model: str | None = Field(None, description="a variant to force; default: the A/B split")
    chunk_size: int = Field(8, ge=1, le=1000, description="items between checkpoints")
    concurrency: int = Field(4, ge=1, le=64, description="items in flight at once")
    max_items: int = Field(10_000, ge=1, le=100_000, description="refuse a batch of more items")

    @model_validator(mode="after")
    def _one_source(self) -> BatchParams:
        given = [name for name in ("inputs", "prefix", "zip") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of inputs, prefix, zip")
        if self.operation in ("batch", "video"):
            raise ValueError(f"a batch runs one operation of a family, not {self.operation!r}")
        return self


@dataclass(frozen=True)
class Item:
    """One input: ``source`` is a storage URL, or the member name inside the zip; ``stem`` is the
    output's name relative to the output folder, without suffix; ``label`` what the manifest calls
    the input (the URL as the request gave it, or the name below the prefix or in the zip: never
    a resolved server path)."""

    index: int
    source: str
    stem: str
    label: str = ""


def _strip_suffix(name: str) -> str:
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem and not stem.endswith("/") else name


def plan_items(names: list[str], sources: list[str] | None = None, labels: list[str] | None = None) -> list[Item]:
    """Items for relative ``names`` (``sub/a.jpg``), in the given order, each with a unique
    output stem: the name less its suffix, or the whole name when two names share a stem
    (``a.jpg``, ``a.png`` -> ``a``, ``a.png``), or the index before it after that.

    Raises:
        InvalidInput: a name that is empty, absolute or holds ``.``/``..`` segments or backslashes.
    """
    items, taken = [], set()
    for index, name in enumerate(names):
        if not name or name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
            raise InvalidInput(f"item {index}: bad file name in the batch")
        for stem in (_strip_suffix(name), name, f"{name}.{index}"):
            if stem not in taken:
                break
        taken.add(stem)
        items.append(Item(index, sources[index] if sources else name, stem, labels[index] if labels else name))
    return items


def validate(params: dict, storage: Storage) -> BatchParams:
    """Check a batch job's params at submit time: their shape, and every URL against the
    input roots (never the results root: results are their owner's). Lists nothing.

    Raises:
        Unprocessable: params of the wrong shape. InvalidInput: a refused URL.
    """
    batch = parse_params(BatchParams, params)
    for url in sources(batch):
        storage.locate(url, results=False)
    return batch


def sources(batch: BatchParams) -> list[str]:
    """The URLs a batch names as its inputs. They must lie below an input root, not the results
    root: one caller's job may not read another's results."""
    return [*(batch.inputs or []), *filter(None, (batch.prefix, batch.zip))]


def list_items(batch: BatchParams, storage: Storage, zip_file: zipfile.ZipFile | None) -> list[Item]:
    """The batch's items in a fixed order (the given list, else sorted names), at most ``max_items``.

    Raises:
        InvalidInput: a refused URL or member name, or more than ``max_items``.
        NotFound: an empty prefix.
    """
    if batch.inputs is not None:
        urls = [storage.locate(url).url for url in batch.inputs]
        names = [posixpath.basename(url.rstrip("/")) or "item" for url in urls]
        items = plan_items(names, urls, list(batch.inputs))
    elif batch.prefix is not None:
        found = storage.list_files(batch.prefix, max_files=batch.max_items)
        items = plan_items([name for name, _ in found], [url for _, url in found])
    else:
        members = sorted(info.filename for info in zip_file.infolist() if not info.is_dir())
        items = plan_items(members)
    if len(items) > batch.max_items:
        raise InvalidInput(f"the batch has {len(items)} items; at most {batch.max_items}")
    return items


def manifest_line(input_: str, output: str | None, error: dict | None, variant: str | None, seconds: float) -> str:
    """One line of the manifest (JSON, keys in a fixed order, newline-terminated)."""
    row = {"input": input_, "output": output, "status": "ok" if error is None else "failed", "error": error,
           "variant": variant, "seconds": round(seconds, 4)}  # fmt: skip
    return json.dumps(row) + "\n"


def read_manifest(text: str) -> list[dict]:
    """The rows of a manifest's text."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _Run:
    """One run of a batch job (state shared by its items)."""

    def __init__(self, ctx: JobContext, storage: Storage, batch: BatchParams, out: str, zip_file: zipfile.ZipFile | None) -> None:
        self.ctx, self.storage, self.batch, self.out, self.zip = ctx, storage, batch, out, zip_file
        self.limit = asyncio.Semaphore(batch.concurrency)
        self.done = 0

    def _read(self, item: Item) -> bytes:
        if self.zip is None:
            return self.storage.read_bytes(item.source)
        info = self.zip.getinfo(item.source)
        if info.file_size > self.storage.config.max_input_bytes:
            raise PayloadTooLarge(f"zip member over {self.storage.config.max_input_bytes} bytes")
        return self.zip.read(info)  # reads at most file_size bytes and checks the CRC

    async def item(self, item: Item, total: int) -> tuple[str, str | None]:
        """Run one item; its manifest line and variant."""
        async with self.limit:
            started = time.monotonic()
            output, error, variant = None, None, None
            try:
                data = await asyncio.to_thread(self._read, item)
                answer = await self.ctx.infer(self.ctx.family, self.batch.operation, data, self.batch.params, self.batch.model)
                variant = answer.variant
                content = answer.content if isinstance(answer.content, bytes) else json.dumps(answer.content).encode()
                suffix = SUFFIXES.get(answer.media_type.split(";")[0], ".bin")
                await asyncio.to_thread(self.storage.write_bytes, check_url_syntax(f"{self.out}/{item.stem}{suffix}"), content)
                output = f"{item.stem}{suffix}"
            except (zipfile.BadZipFile, KeyError) as err:  # a corrupt zip member
                error = {"code": "invalid_input", "message": f"cannot read the zip member: {type(err).__name__}"}
            except Exception as err:
                if not is_item_error(err):
                    raise
                error = {"code": err.code, "message": err.message}
            self.done += 1
            await self.ctx.progress(self.done, total, "items")
            return manifest_line(item.label, output, error, variant, time.monotonic() - started), variant


async def run_batch(ctx: JobContext, storage: Storage) -> WorkResult:
    """Run (or resume, from ``ctx.resume_state``) the batch job ``ctx``.

    Returns:
        WorkResult: ``result`` ``{"manifest": "manifest.jsonl", "total", "ok", "failed"}`` (names
        relative to the job's results folder, as the manifest's outputs are) with
        ``result_url`` the manifest (``application/x-ndjson``), ``variant`` every variant that served.

    Raises:
        Unprocessable, InvalidInput, NotFound: the batch as a whole is bad (params, a refused
            URL, an empty prefix, a zip that is not one).
        PixelfleetError: a 5xx of the service; the job should run again (it resumes).
    """
    batch = parse_params(BatchParams, ctx.params)
    for url in sources(batch):  # checked at submit; again here, as the config may have changed
        storage.locate(url, results=False)
    out = storage.result_url(ctx.job_id)
    state = dict(ctx.resume_state or {"next": 0, "parts": 0, "ok": 0, "failed": 0, "variants": []})
    if "done" in state:  # the manifest was written and checkpointed; only the run's end was lost
        return WorkResult(**state["done"])
    with ExitStack() as stack:
        zip_file = None
        if batch.zip is not None:
            path = await asyncio.to_thread(stack.enter_context, storage.local_copy(batch.zip))  # a download, maybe
            try:
                zip_file = stack.enter_context(await asyncio.to_thread(zipfile.ZipFile, path))
            except zipfile.BadZipFile:
                raise InvalidInput("the batch's zip is not a zip file") from None
        items = await asyncio.to_thread(list_items, batch, storage, zip_file)
        run = _Run(ctx, storage, batch, out, zip_file)
        run.done = state["next"]
        for start in range(state["next"], len(items), batch.chunk_size):
            if ctx.cancelled():
                raise asyncio.CancelledError("the job was cancelled")
            chunk = items[start : start + batch.chunk_size]
            lines = await asyncio.gather(*(run.item(item, len(items)) for item in chunk))
            part = "".join(line for line, _ in lines)
            await asyncio.to_thread(storage.write_bytes, f"{out}/{PARTS}/{state['parts']:06d}.jsonl", part.encode())
            rows = read_manifest(part)
            state = {
                "next": start + len(chunk), "parts": state["parts"] + 1,
                "ok": state["ok"] + sum(row["status"] == "ok" for row in rows),
                "failed": state["failed"] + sum(row["status"] != "ok" for row in rows),
                "variants": list(dict.fromkeys([*state["variants"], *(v for _, v in lines if v)])),
            }  # fmt: skip
            await ctx.checkpoint(state)
        manifest = await asyncio.to_thread(_join_parts, storage, out, state["parts"])
    summary = {"manifest": MANIFEST, "total": len(items), "ok": state["ok"], "failed": state["failed"]}
    done = WorkResult(result=summary, result_url=manifest, media_type=MEDIA_TYPE, variant=variants_of(state["variants"]))
    await ctx.checkpoint({**state, "done": done})  # before the parts go: a rerun from here needs none of them
    await asyncio.to_thread(storage.delete, f"{out}/{PARTS}", True)
    return done


def _join_parts(storage: Storage, out: str, parts: int) -> str:
    """Concatenate the manifest parts into ``OUT/manifest.jsonl``; its URL."""
    text = io.BytesIO()
    for number in range(parts):
        text.write(storage.read_bytes(f"{out}/{PARTS}/{number:06d}.jsonl"))
    return storage.write_bytes(f"{out}/{MANIFEST}", text.getvalue())


def iter_rows(storage: Storage, manifest_url: str) -> Iterator[dict]:
    """The rows of a written manifest."""
    yield from read_manifest(storage.read_bytes(manifest_url).decode())
