"""Support of the backend contract suite (tests/backends): the stores it runs on, the known
differences between them (strict xfails), and `run_with`, which runs one test body against a
backend in one trio run (an httpx2 client or connection pool belongs to the event loop that first
used it). The `backend` and `run` fixtures are in tests/backends/conftest.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bucketfs.backends.base import Backend
from bucketfs.backends.s3.backend import S3Backend, S3Credentials
from tests.support.servers import SeaweedServer, unique_bucket
from tests.support.swift_server import KEY, USER, SwiftServer

BACKENDS = ["memory", "local", "s3", "swift", "swift-s3api"]


#: (contract test, backend) pairs that fail because the store differs, not because of a bug in
#: bucketfs: strict xfail, so a store that starts to pass shows up. Each is in docs/swift.md.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}


Body = Callable[[str], Awaitable[None]]


Runner = Callable[..., None]


def make_s3(seaweed: SeaweedServer, **kwargs: Any) -> S3Backend:
    """An S3Backend on the session's SeaweedFS with the test credentials."""
    kwargs.setdefault("credentials", S3Credentials(seaweed.access_key, seaweed.secret_key))
    kwargs.setdefault("retry_deadline", 10.0)
    return S3Backend(seaweed.endpoint, seaweed.region, **kwargs)


def make_s3api(server: SwiftServer, **kwargs: Any) -> S3Backend:
    """An S3Backend on the session's Swift through its s3api middleware (tempauth's user and
    key are the S3 access key and secret)."""
    kwargs.setdefault("credentials", S3Credentials(USER, KEY))
    kwargs.setdefault("retry_deadline", 10.0)
    return S3Backend(server.endpoint, "us-east-1", path_style=True, **kwargs)


def run_with(backend: Backend, body: Body, *, create_bucket: bool = True) -> None:
    """Run `body(bucket)` under trio with a fresh bucket, then close `backend`."""

    async def main() -> None:
        try:
            bucket = unique_bucket()
            if create_bucket:
                await backend.create_bucket(bucket)
            await body(bucket)
        finally:
            await backend.aclose()

    trio.run(main)
