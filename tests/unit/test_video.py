"""jobs/video.py without Ray: a short video with a sine audio track made here in code (PyAV),
upscaled x2 frame by frame by the shipped model in this process (jobs/local.py); the output's
size, frame count, duration, codec and audio stream are checked, and a run that dies mid-way
resumes from its last finished chunk."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pixelfleet.jobs import video
from pixelfleet.jobs.local import LocalContext, LocalUpscaler
from pixelfleet.jobs.storage import Storage, StorageConfig
from pixelfleet.models.errors import InvalidInput, ModelUnavailable, Unprocessable
from tests.conftest import synthetic_photo
from tests.unit.crashing import CrashingContext

FRAMES, FPS, SIDE, SAMPLE_RATE = 10, 10, 32, 8000


def make_video(path: Path, frames: int = FRAMES, fps: int = FPS, side: int = SIDE, audio: bool = True, codec: str = "libx264") -> None:
    """A ``frames``-frame ``side``x``side`` video at ``fps`` (moving synthetic photo) with a
    440 Hz mono AAC sine of the same duration."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        sound = output.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        base = synthetic_photo(side * 2, side * 2, seed=3)
        for n in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[n : n + side, n : n + side]), format="rgb24")
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
        if sound is not None:
            t = np.arange(SAMPLE_RATE * frames // fps) / SAMPLE_RATE
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                chunk = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                output.mux(sound.encode(chunk))
            output.mux(sound.encode(None))


def probe(path: Path) -> dict:
    """What the test checks of a video file: size, decoded frames, rate, codec, durations, audio."""
    with av.open(str(path)) as container:  # the audio packets: how many, and the first's and last's start, seconds
        audio = container.streams.audio
        starts = [round(float(p.pts * p.time_base), 4) for p in container.demux(audio[0]) if p.pts is not None] if audio else []
        audio_packets = (len(starts), starts[0], starts[-1]) if starts else None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        audio = container.streams.audio
        return {
            "size": (stream.width, stream.height), "frames": frames, "rate": Fraction(stream.average_rate), "codec": stream.codec_context.name,
            "duration_s": float(container.duration) / av.time_base, "audio": [(a.codec_context.name, a.rate, a.channels) for a in audio],
            "audio_packets": audio_packets,
        }  # fmt: skip


@pytest.fixture(scope="module")
def upscaler() -> LocalUpscaler:
    return LocalUpscaler(scale=2, tile_size=32, overlap=4, num_threads=1)


@pytest.fixture
def storage(tmp_path) -> Storage:
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "clip.mp4")
    return Storage(StorageConfig(roots=[str(tmp_path / "in")], results=str(tmp_path / "out")))


def test_chunks_and_checks(storage, tmp_path) -> None:
    assert video.chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)] and video.chunk_bounds(4, 4) == [(0, 4)]
    with pytest.raises(Unprocessable):
        video.validate({"input": str(tmp_path / "in" / "clip.mp4"), "codec": "no-such-codec"}, storage)
    with pytest.raises(Unprocessable):
        video.validate({"input": str(tmp_path / "in" / "clip.mp4"), "codec": "aac"}, storage)  # not a video encoder
    with pytest.raises(Unprocessable):
        video.validate({"input": str(tmp_path / "in" / "clip.mp4"), "name": "x.gif"}, storage)
    for bad in ({"name": "../x.mp4"}, {"output": str(tmp_path / "out" / "victim" / "x.mp4")}, {"options": {"stats": "/tmp/x"}},
                {"options": {"flags": "+pass1"}}, {"options": {"crf": 99}}):  # fmt: skip
        with pytest.raises(Unprocessable):  # nowhere but the job's own folder; no free FFmpeg options (some write files)
            video.validate({"input": str(tmp_path / "in" / "clip.mp4"), **bad}, storage)
    with pytest.raises(InvalidInput):  # another job's results are no input
        video.validate({"input": str(tmp_path / "out" / "other" / "clip.mp4")}, storage)
    with pytest.raises(Unprocessable):
        video.validate({}, storage)
    with pytest.raises(InvalidInput):
        video.validate({"input": str(tmp_path / "elsewhere.mp4")}, storage)
    assert video.validate({"input": str(tmp_path / "in" / "clip.mp4")}, storage).chunk_frames == 48


def test_upscale_video_keeps_rate_codec_audio(storage, tmp_path, upscaler) -> None:
    seen = []
    ctx = LocalContext(upscaler, {"input": str(tmp_path / "in" / "clip.mp4"), "chunk_frames": 4, "batch_frames": 2}, operation="video",
                       on_progress=lambda done, total, stage: seen.append((done, total, stage)))  # fmt: skip
    done = asyncio.run(video.run_video(ctx, storage))
    out = Path(done["result_url"].removeprefix("file://"))
    assert out == tmp_path / "out" / ctx.job_id / "clip.upscaled.mp4" and done["media_type"] == "video/mp4"
    source, result = probe(tmp_path / "in" / "clip.mp4"), probe(out)
    assert result["size"] == (2 * SIDE, 2 * SIDE) and result["frames"] == source["frames"] == FRAMES
    assert result["rate"] == source["rate"] == FPS and result["codec"] == source["codec"] == "h264"
    assert abs(result["duration_s"] - source["duration_s"]) < 0.15  # container durations: video 1.0 s, AAC priming aside
    assert result["audio"] == source["audio"] == [("aac", SAMPLE_RATE, 1)] and result["audio_packets"] == source["audio_packets"]
    assert done["result"]["frames"] == FRAMES and done["result"]["width"] == 2 * SIDE and done["variant"] == "srresnet-x2"
    assert [c["frames"] for c in ctx.checkpoints[:-1]] == [4, 8, 10] and "done" in ctx.checkpoints[-1]
    assert seen[-1] == (FRAMES, FRAMES, "frames")
    assert not (tmp_path / "out" / ctx.job_id / ".segments").exists()
    # the frames are the model's upscale of the input's frames (lossy codecs both ways: loosely)
    with av.open(str(tmp_path / "in" / "clip.mp4")) as a, av.open(str(out)) as b:
        first_in = next(a.decode(video=0)).to_ndarray(format="rgb24")
        first_out = next(b.decode(video=0)).to_ndarray(format="rgb24")
    expected = upscaler.upscaler.upscale(first_in, 32, 4)
    assert np.abs(first_out.astype(int) - expected).mean() < 8


def test_resumes_from_the_last_finished_chunk(storage, tmp_path, upscaler) -> None:
    params = {"input": str(tmp_path / "in" / "clip.mp4"), "chunk_frames": 4, "batch_frames": 1, "name": "x.mkv",
              "codec": "mpeg4", "options": {"qscale": 3}}  # fmt: skip
    first = CrashingContext(upscaler, params, operation="video", crash_on=6, job_id="job-v")
    with pytest.raises(ModelUnavailable):
        asyncio.run(video.run_video(first, storage))
    assert first.checkpoints[-1]["chunks"] == 1 and first.checkpoints[-1]["frames"] == 4
    second = CrashingContext(upscaler, params, operation="video", resume_state=first.checkpoints[-1], job_id="job-v")
    done = asyncio.run(video.run_video(second, storage))
    assert second.calls == FRAMES - 4  # frames 4..9 only
    result = probe(tmp_path / "out" / "job-v" / "x.mkv")
    assert result["frames"] == FRAMES and result["codec"] == "mpeg4" and result["size"] == (2 * SIDE, 2 * SIDE)
    assert result["audio"] == [("aac", SAMPLE_RATE, 1)] and done["media_type"] == "video/x-matroska"
    # every audio packet copied (Matroska shifts all streams to start at 0: the AAC priming packet's -0.128 s)
    count, first_s, last_s = result["audio_packets"]
    assert probe(tmp_path / "in" / "clip.mp4")["audio_packets"] == (count, first_s - 0.128, round(last_s - 0.128, 4)) and count == 9
    again = CrashingContext(upscaler, params, operation="video", resume_state=second.checkpoints[-1], job_id="job-v")
    assert asyncio.run(video.run_video(again, storage)) == done and again.calls == 0  # finished: the result comes back as it was


def test_not_a_video_and_no_playlists(storage, tmp_path, upscaler) -> None:
    (tmp_path / "in" / "fake.mp4").write_bytes(b"\x00" * 100)
    # an HLS playlist would have FFmpeg read segments from anywhere on disk: refused by its first bytes
    (tmp_path / "in" / "list.mp4").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile://{tmp_path}/in/clip.mp4\n#EXT-X-ENDLIST\n")
    (tmp_path / "in" / "concat.mp4").write_text(f"ffconcat version 1.0\nfile '{tmp_path}/in/clip.mp4'\n")
    for name in ("fake.mp4", "list.mp4", "concat.mp4"):
        with pytest.raises(InvalidInput):
            asyncio.run(video.run_video(LocalContext(upscaler, {"input": str(tmp_path / "in" / name)}, operation="video"), storage))
    assert video.demuxer_of(b"\x1a\x45\xdf\xa3" + bytes(12)) == "matroska" and video.demuxer_of(b"RIFF\0\0\0\0AVI LIST") == "avi"


def test_cli_upscales_a_video_here_without_an_app(tmp_path) -> None:
    """``pixelfleet upscale in.mp4 --out out.mp4`` without --url: the video job runs in this
    process on the shipped x2 model, and the output keeps frames, rate, codec and audio."""
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    make_video(tmp_path / "in.mp4")
    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "out.mp4"), "--scale", "2"])
    assert result.exit_code == 0, result.output
    got = probe(tmp_path / "out.mp4")
    assert got["size"] == (2 * SIDE, 2 * SIDE) and got["frames"] == FRAMES and got["rate"] == FPS
    assert got["codec"] == "h264" and got["audio"] == [("aac", SAMPLE_RATE, 1)]
