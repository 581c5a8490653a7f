"""Video jobs (``operation: "video"``): upscale a video frame by frame through the
super-resolution family, with PyAV (FFmpeg's libraries; no codec of our own).

Frames are decoded from the input, sent as PNG through ``ctx.infer`` (``batch_frames`` of them
in flight, so the family's ``@serve.batch`` fills with their tiles), and encoded again with the
input's codec (or ``codec``) at the input's frame rate: frames are neither dropped nor
duplicated, and get constant-rate timestamps (``index / rate``). The work goes in chunks of
``chunk_frames``: each chunk is encoded as a segment of its own (a Matroska file below the
job's results folder, opened by a keyframe, without B-frames so segments join exactly), then
the job checkpoints ``{"chunks", "segments", "frames", "size"}``; a rerun after a crash decodes
up to the first unfinished chunk without upscaling again. At the end the segments' packets
and the input's audio streams (copied, not re-encoded) are remuxed, interleaved by time, into
the output file (its container from its suffix: ``.mp4`` by default, ``.mkv``, ``.mov``), in the
job's own results folder.

What FFmpeg is handed is bounded: the input is opened with a demuxer chosen from its first bytes
(MP4/QuickTime, Matroska/WebM, AVI; never playlists such as HLS or concat lists, which would
read other files) and the ``file`` protocol only; encoder settings are typed fields
(:class:`EncoderOptions`), never free FFmpeg options (some of which write files).
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image
from pydantic import Field

from pixelfleet.deployments.spec import Strict
from pixelfleet.jobs.context import JobContext
from pixelfleet.jobs.storage import Storage
from pixelfleet.jobs.work import WorkResult, parse_params, variants_of
from pixelfleet.models.errors import InternalError, InvalidInput, Unprocessable
from pixelfleet.models.images import encode_image

SEGMENTS = ".segments"
CONTAINERS = {".mp4": ("mp4", "video/mp4"), ".mov": ("mov", "video/quicktime"), ".mkv": ("matroska", "video/x-matroska")}


class EncoderOptions(Strict):
    """The encoder settings a job may set (FFmpeg's option names; each one used only when set)."""

    crf: int | None = Field(None, ge=0, le=63, description="constant quality (libx264/libx265 0-51, libvpx 0-63): lower is better")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] | None = Field(
        None, description="x264/x265 speed preset"
    )
    tune: Literal["film", "animation", "grain", "stillimage", "fastdecode", "zerolatency"] | None = Field(None, description="x264 tuning")
    qscale: int | None = Field(None, ge=1, le=31, description="fixed quantizer of mpeg4 and other MPEG encoders: lower is better")
    g: int | None = Field(None, ge=1, le=1000, description="frames between keyframes at most")

    def ffmpeg(self) -> dict[str, str]:
        """The set options as FFmpeg's ``{name: value}`` strings."""
        return {name: str(value) for name, value in self.model_dump(exclude_none=True).items()}


def demuxer_of(head: bytes) -> str:
    """The FFmpeg demuxer for a file starting with ``head`` (its first 12+ bytes).

    Raises:
        InvalidInput: not an MP4/QuickTime, Matroska/WebM or AVI file.
    """
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    raise InvalidInput("the input is not a video file this service reads (MP4/MOV, Matroska/WebM, AVI)")


class VideoParams(Strict):
    """A video job's ``params``."""

    input: str | None = Field(None, description="storage URL of the video; default: the job's input")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$",
        description="the output's file name in the job's results folder (.mp4, .mov, .mkv); default: <input name>.upscaled.mp4",
    )
    operation: str = Field("upscale", pattern="^upscale$", description="what runs on every frame (the superres family's upscale)")
    params: dict = Field(default_factory=dict, description="the upscale's options (scale, png_level); frames travel as PNG")
    model: str | None = Field(None, description="a variant to force; default: the A/B split")
    codec: str | None = Field(None, description="video encoder (FFmpeg name: libx264, h264, mpeg4, libvpx-vp9, ...); default: the input's codec")
    pix_fmt: str = Field("yuv420p", description="pixel format of the encoded frames")
    bit_rate: int | None = Field(None, gt=0, description="target video bit rate, bits per second; default: the encoder's")
    options: EncoderOptions = Field(default_factory=lambda: EncoderOptions(), description="encoder settings (typed; see EncoderOptions)")
    chunk_frames: int = Field(48, ge=1, le=10_000, description="frames per segment (between checkpoints)")
    batch_frames: int = Field(4, ge=1, le=64, description="frames in flight through the family at once")
    max_frames: int = Field(100_000, ge=1, description="refuse a longer video")


def validate(params: dict, storage: Storage, has_input: bool = False) -> VideoParams:
    """Check a video job's params at submit time (shape, encoder, URLs against the roots).

    Raises:
        Unprocessable: bad params, an unknown encoder or output suffix, no input.
        InvalidInput: a refused URL.
    """
    video = parse_params(VideoParams, params)
    if video.input is not None:  # below an input root: one caller's job may not read another's results
        storage.locate(video.input, results=False)
    elif not has_input:
        raise Unprocessable("a video job needs params.input (a storage URL) or an input")
    if video.name is not None:
        container_of(video.name)
    if video.codec is not None:
        encoder(video.codec)
    return video


def container_of(url: str) -> tuple[str, str]:
    """FFmpeg's muxer name and the media type for an output URL's suffix.

    Raises:
        Unprocessable: a suffix other than .mp4, .mov, .mkv.
    """
    suffix = Path(url).suffix.lower()
    if suffix not in CONTAINERS:
        raise Unprocessable(f"output must end in one of {', '.join(CONTAINERS)}")
    return CONTAINERS[suffix]


def encoder(name: str) -> av.Codec:
    """The encoder called ``name`` (an FFmpeg codec or encoder name: ``h264`` is libx264).

    Raises:
        Unprocessable: this FFmpeg build has no such video encoder.
    """
    try:
        codec = av.Codec(name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        raise Unprocessable(f"no video encoder {name!r} in this FFmpeg build") from None
    if codec.type != "video":
        raise Unprocessable(f"{name!r} is not a video encoder")
    return codec


def chunk_bounds(total: int, chunk_frames: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` frame ranges of the chunks of a ``total``-frame video."""
    return [(start, min(start + chunk_frames, total)) for start in range(0, total, chunk_frames)]


def frame_png(frame: av.VideoFrame) -> bytes:
    """A decoded frame as PNG bytes (RGB, zlib level 1: fast, lossless)."""
    return encode_image(frame.to_ndarray(format="rgb24"), "png", png_level=1)


def png_frame(data: bytes) -> np.ndarray:
    """PNG bytes from the family -> ``(H, W, 3)`` uint8 RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def encode_segment(frames: list[np.ndarray], first_index: int, path: Path, codec: str, rate: Fraction, video: VideoParams) -> None:
    """Encode ``(H, W, 3)`` uint8 frames, numbered from ``first_index`` at ``rate`` frames per
    second, into a Matroska file at ``path``: one keyframe first, no B-frames."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format="matroska") as output:
        stream = output.add_stream(codec, rate=rate, options=video.options.ffmpeg())
        stream.width, stream.height, stream.pix_fmt = width, height, video.pix_fmt
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.max_b_frames = 0
        if video.bit_rate:
            stream.bit_rate = video.bit_rate
        for offset, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=video.pix_fmt)
            frame.pts, frame.time_base = first_index + offset, 1 / rate
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))


def _timed(packets: Iterator[av.Packet], key) -> Iterator[tuple[float, int, av.Packet]]:
    for order, packet in enumerate(packets):
        if packet.dts is None and packet.pts is None:  # the demuxer's empty flush packet
            continue
        yield key(packet), order, packet


def join(segments: list[Path], source: Path, demuxer: str, target: Path, muxer: str, rate: Fraction) -> int:
    """Remux the segments' video packets (renumbered ``0, 1, ...`` at ``rate``) and ``source``'s
    audio streams (copied) into ``target``, interleaved by time. Returns the video packets written."""
    with ExitStack() as stack:
        opened = [stack.enter_context(av.open(str(path))) for path in segments]
        original = stack.enter_context(av.open(str(source), format=demuxer, options={"protocol_whitelist": "file"}))
        output = stack.enter_context(av.open(str(target), "w", format=muxer))
        video_out = output.add_stream_from_template(opened[0].streams.video[0])
        video_out.time_base = 1 / rate
        audio_out = {s.index: output.add_stream_from_template(s) for s in original.streams.audio}
        counter = iter(range(1 << 62))

        def video_packets() -> Iterator[av.Packet]:
            for container in opened:
                for packet in container.demux(container.streams.video[0]):
                    if packet.size == 0:
                        continue
                    index = next(counter)
                    packet.pts = packet.dts = index
                    packet.duration, packet.time_base = 1, 1 / rate
                    yield packet

        def seconds(packet: av.Packet) -> float:
            return float((packet.dts if packet.dts is not None else packet.pts) * packet.time_base)

        streams = [_timed(video_packets(), seconds)]
        if audio_out:
            streams.append(_timed(original.demux(list(original.streams.audio)), seconds))
        written = 0
        for _, _, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            is_video = packet.stream.type == "video"
            packet.stream = video_out if is_video else audio_out[packet.stream.index]
            output.mux(packet)
            written += is_video
        return written


class _Chunker:
    """One run of a video job: decode, skip the finished chunks, upscale and encode the rest."""

    def __init__(self, ctx: JobContext, storage: Storage, video: VideoParams, folder: str, state: dict) -> None:
        self.ctx, self.storage, self.video, self.folder, self.state = ctx, storage, video, folder, state
        self.variants: list[str] = list(state.get("variants", []))

    async def upscale(self, frames: list[av.VideoFrame]) -> list[np.ndarray]:
        """Frames through the family, ``batch_frames`` at a time; ``(sH, sW, 3)`` uint8 each."""
        limit = asyncio.Semaphore(self.video.batch_frames)
        params = {**self.video.params, "format": "png"}

        async def one(frame: av.VideoFrame) -> np.ndarray:
            async with limit:
                data = await asyncio.to_thread(frame_png, frame)
                answer = await self.ctx.infer(self.ctx.family, "upscale", data, params, self.video.model)
                self.variants.append(answer.variant)
                return await asyncio.to_thread(png_frame, answer.content)

        return await asyncio.gather(*(one(frame) for frame in frames))

    async def chunk(self, frames: list[av.VideoFrame], first_index: int, total: int, codec: str, rate: Fraction) -> None:
        """Upscale, encode and store one chunk, then checkpoint."""
        pixels = []
        for start in range(0, len(frames), self.video.batch_frames * 2):
            pixels += await self.upscale(frames[start : start + self.video.batch_frames * 2])
            await self.ctx.progress(first_index + len(pixels), total, "frames")
        size = [int(pixels[0].shape[1]), int(pixels[0].shape[0])]
        if self.state.get("size", size) != size or any(p.shape[:2] != pixels[0].shape[:2] for p in pixels):
            raise InternalError("the upscaled frames changed size within the video")
        number = self.state["chunks"]
        with tempfile.TemporaryDirectory(prefix="pixelfleet-video-") as folder:
            path = Path(folder) / "segment.mkv"
            await asyncio.to_thread(encode_segment, pixels, first_index, path, codec, rate, self.video)
            url = await asyncio.to_thread(self.storage.upload, path, f"{self.folder}/{SEGMENTS}/{number:06d}.mkv")
        self.state = {
            "chunks": number + 1, "segments": [*self.state["segments"], url], "frames": first_index + len(frames), "size": size,
            "variants": list(dict.fromkeys(self.variants)),
        }  # fmt: skip
        await self.ctx.checkpoint(self.state)


def _take(frames: Iterator[av.VideoFrame], count: int) -> list[av.VideoFrame]:
    """The next ``count`` decoded frames of ``frames`` (fewer at the end; [] when it is done)."""
    return list(itertools.islice(frames, count))


def _input_url(ctx: JobContext, video: VideoParams) -> str:
    if video.input is not None:
        return video.input
    given = getattr(ctx, "input", None)
    if isinstance(given, dict) and given.get("url"):
        return given["url"]
    raise Unprocessable("a video job needs params.input (a storage URL) or an input")


async def run_video(ctx: JobContext, storage: Storage) -> WorkResult:
    """Run (or resume, from ``ctx.resume_state``) the video job ``ctx``.

    Returns:
        WorkResult: ``result_url`` the output video; ``result`` ``{"output", "frames", "width",
        "height", "frame_rate", "codec", "audio_streams", "duration_s"}``.

    Raises:
        Unprocessable: bad params; no video stream; more than ``max_frames`` frames.
        InvalidInput, NotFound, PayloadTooLarge: the input URL (refused, missing, too large), or
            a file FFmpeg cannot read.
        PixelfleetError: what the family raises for a frame (5xx: the job runs again and resumes).
    """
    video = parse_params(VideoParams, ctx.params)
    if video.input is not None:
        storage.locate(video.input, results=False)
    source_url = _input_url(ctx, video)
    folder = storage.result_url(ctx.job_id)
    name = Path(source_url.rstrip("/")).stem or "video"
    target_url = f"{folder}/{video.name or name + '.upscaled.mp4'}"
    muxer, media_type = container_of(target_url)
    state = dict(ctx.resume_state or {"chunks": 0, "segments": [], "frames": 0})
    if "done" in state:  # the output was written and checkpointed; only the run's end was lost
        return WorkResult(**state["done"])
    with ExitStack() as stack:  # downloads, opening and decoding run in threads: the loop may be the ingress's
        source = await asyncio.to_thread(stack.enter_context, storage.local_copy(source_url))
        with open(source, "rb") as file:
            demuxer = demuxer_of(file.read(16))
        try:
            opened = await asyncio.to_thread(av.open, str(source), format=demuxer, options={"protocol_whitelist": "file"})
        except av.FFmpegError:
            raise InvalidInput("the input is not a video FFmpeg can read") from None
        container = stack.enter_context(opened)
        if not container.streams.video:
            raise Unprocessable("the input has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        codec = video.codec or stream.codec_context.name
        encoder(codec)
        total = stream.frames  # from the container's header; else estimated from the stream's or the file's duration
        if not total and stream.duration is not None:
            total = int(float(stream.duration * stream.time_base) * rate)
        if not total and container.duration is not None:
            total = int(container.duration / av.time_base * rate)
        run = _Chunker(ctx, storage, video, folder, state)
        skip_to, pending, index = state["frames"], [], -1
        decoded = container.decode(stream)
        try:
            while decoded_frames := await asyncio.to_thread(_take, decoded, video.chunk_frames):
                for frame in decoded_frames:
                    index += 1
                    if index >= video.max_frames:
                        raise Unprocessable(f"the video has more than {video.max_frames} frames")
                    if index < skip_to:
                        continue
                    pending.append(frame)
                    if len(pending) == video.chunk_frames:
                        await run.chunk(pending, index + 1 - len(pending), max(total, index + 1), codec, rate)
                        pending = []
                        if ctx.cancelled():
                            raise asyncio.CancelledError("the job was cancelled")
        except av.FFmpegError:
            raise InvalidInput("the video is corrupt or truncated") from None
        if pending:
            await run.chunk(pending, index + 1 - len(pending), index + 1, codec, rate)
        state = run.state
        if not state["segments"]:
            raise Unprocessable("the video has no frames")
        with tempfile.TemporaryDirectory(prefix="pixelfleet-video-") as work:
            local = [Path(work) / f"{n:06d}.mkv" for n in range(len(state["segments"]))]
            for url, path in zip(state["segments"], local):
                await asyncio.to_thread(storage.download, url, path)
            target = Path(work) / f"output{Path(target_url).suffix}"
            frames = await asyncio.to_thread(join, local, source, demuxer, target, muxer, rate)
            audio = len(container.streams.audio)
            url = await asyncio.to_thread(storage.upload, target, target_url)
    width, height = state["size"]
    summary = {
        "output": url, "frames": frames, "width": width, "height": height, "frame_rate": str(rate), "codec": codec,
        "audio_streams": audio, "duration_s": round(float(frames / rate), 6),
    }  # fmt: skip
    done = WorkResult(result=summary, result_url=url, media_type=media_type, variant=variants_of(state.get("variants", [])))
    await ctx.checkpoint({**state, "done": done})  # before the segments go: a rerun from here needs none of them
    await asyncio.to_thread(storage.delete, f"{folder}/{SEGMENTS}", True)
    return done
