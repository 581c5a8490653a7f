"""jobs/storage.py: URLs below the roots only (traversal, symlinks, escapes, other schemes and
buckets refused with 4xx), local and S3 (a moto server started here) reads and writes."""

from __future__ import annotations

import os

import pytest

from pixelfleet.jobs.storage import Storage, StorageConfig, check_url_syntax
from pixelfleet.models.errors import InvalidInput, NotFound, PayloadTooLarge
from tests.s3_server import s3_server


@pytest.fixture
def local(tmp_path) -> tuple[Storage, os.PathLike]:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.png").write_bytes(b"A")
    (tmp_path / "in" / "sub" / "b.png").write_bytes(b"BB")
    (tmp_path / "secret.txt").write_bytes(b"do not read")
    (tmp_path / "in" / "escape.png").symlink_to(tmp_path / "secret.txt")
    config = StorageConfig(roots=[str(tmp_path / "in")], results=f"file://{tmp_path / 'out'}", max_input_bytes=100)
    return Storage(config), tmp_path


def test_local_read_list_write(local) -> None:
    storage, root = local
    assert storage.read_bytes(str(root / "in" / "a.png")) == b"A"
    assert storage.read_bytes(f"file://{root}/in/sub/b.png") == b"BB"
    url = storage.write_bytes(storage.result_url("job1", "x.png"), b"X")
    assert url == f"file://{root}/out/job1/x.png" and (root / "out" / "job1" / "x.png").read_bytes() == b"X"
    assert storage.read_bytes(url) == b"X"  # results are readable too (by the worker)
    with pytest.raises(InvalidInput):  # but not as what a request names as its input
        storage.locate(url, results=False)
    # the symlink pointing out of the root is listed nowhere and read never
    with pytest.raises(InvalidInput):
        storage.list_files(str(root / "in"))
    os.unlink(root / "in" / "escape.png")
    assert storage.list_files(str(root / "in") + "/") == [("a.png", f"file://{root}/in/a.png"), ("sub/b.png", f"file://{root}/in/sub/b.png")]


@pytest.mark.parametrize(
    "url",
    [
        "{root}/in/../secret.txt",
        "{root}/in/./a.png",
        "{root}/in/%2e%2e/secret.txt",
        "{root}/in/a.png%00",
        "{root}/in/a.png?x=1",
        "{root}/in\\..\\secret.txt",
        "{root}/in/a\x00.png",
        "{root}/secret.txt",
        "{root}/in2/a.png",  # a sibling that shares the root's name as a prefix
        "{root}/in/escape.png",  # symlink out of the root
        "in/a.png",  # relative
        "file://in/a.png",
        "http://example.com/a.png",
        "memory://a.png",
        "zip://a.png::{root}/in/a.zip",
        "s3://bucket/in/a.png",  # no S3 root configured
        "",
    ],
)
def test_refused_urls(local, url: str) -> None:
    storage, root = local
    with pytest.raises(InvalidInput) as err:
        storage.read_bytes(url.format(root=root))
    assert err.value.status == 400 and str(root) not in err.value.message  # no server path in the message


def test_writes_only_below_results(local) -> None:
    storage, root = local
    with pytest.raises(InvalidInput):
        storage.write_bytes(str(root / "in" / "new.png"), b"x")
    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(InvalidInput):
            storage.result_url("job1", bad)


def test_missing_and_too_large(local) -> None:
    storage, root = local
    with pytest.raises(NotFound) as err:
        storage.read_bytes(str(root / "in" / "nope.png"))
    assert err.value.status == 404
    (root / "in" / "big.png").write_bytes(b"x" * 101)
    with pytest.raises(PayloadTooLarge):
        storage.read_bytes(str(root / "in" / "big.png"))


def test_syntax_alone() -> None:
    assert check_url_syntax("s3://bucket/a b.png") == "s3://bucket/a b.png"
    with pytest.raises(InvalidInput):
        check_url_syntax("x" * 3000)
    with pytest.raises(ValueError):
        StorageConfig(roots=["http://example.com/"])


def test_s3_through_a_local_server(tmp_path) -> None:
    with s3_server("inputs", "other", "results") as options:
        config = StorageConfig(roots=["s3://inputs/photos"], results="s3://results/pixelfleet", options={"s3": options})
        storage = Storage(config)
        s3 = storage.locate("s3://inputs/photos/", write=False).fs
        s3.pipe_file("inputs/photos/a.png", b"A")
        s3.pipe_file("inputs/photos/deep/b.png", b"B")
        s3.pipe_file("inputs/private/c.png", b"C")
        s3.pipe_file("other/photos/a.png", b"O")
        assert storage.read_bytes("s3://inputs/photos/a.png") == b"A"
        assert storage.list_files("s3://inputs/photos/") == [("a.png", "s3://inputs/photos/a.png"), ("deep/b.png", "s3://inputs/photos/deep/b.png")]
        for bad in ("s3://inputs/private/c.png", "s3://other/photos/a.png", "s3://inputs/photos/../private/c.png",
                    "s3://inputs/photos//a.png", "s3://inputs/photosx/a.png", f"file://{tmp_path}/a.png"):  # fmt: skip
            with pytest.raises(InvalidInput):
                storage.read_bytes(bad)
        url = storage.write_bytes(storage.result_url("job9", "out.png"), b"R")
        assert url == "s3://results/pixelfleet/job9/out.png" and s3.cat_file("results/pixelfleet/job9/out.png") == b"R"
        with pytest.raises(InvalidInput):
            storage.write_bytes("s3://inputs/photos/evil.png", b"x")
        with storage.local_copy("s3://inputs/photos/deep/b.png") as path:
            assert path.read_bytes() == b"B"
        assert not path.exists()
