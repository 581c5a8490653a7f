"""A local S3 server for tests: moto's server mode on a free port, in a thread of the test process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: Credentials moto accepts (any work); passed as fsspec options, never read from the environment.
S3_OPTIONS = {"key": "testing", "secret": "testing"}


@contextmanager
def s3_server(*buckets: str) -> Iterator[dict]:
    """Start moto's S3 server, create ``buckets``, yield the fsspec ``s3`` options that reach it
    (``endpoint_url`` + credentials), stop it on exit."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {**S3_OPTIONS, "endpoint_url": f"http://{host}:{port}"}
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        for bucket in buckets:
            fs.mkdir(bucket)
        yield options
    finally:
        server.stop()
