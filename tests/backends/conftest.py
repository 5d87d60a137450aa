"""The `backend` fixture: every store behind `base.Backend`, one test body for all of them.

Each parametrized test gets a fresh backend object and runs its body with `run(body)`, which
starts trio, creates a fresh bucket, awaits `body(bucket)` and closes the backend in the same
trio run (an httpx2 client or connection pool belongs to the event loop that first used it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bucketfs.backends.base import Backend
from bucketfs.backends.s3.backend import S3Backend, S3Credentials
from tests.servers import SeaweedServer, unique_bucket
from tests.swift_fixtures import make_swift, swift
from tests.swift_server import KEY, USER, SwiftServer

__all__ = ["swift"]  # the session fixture, imported so that tests here can request it

BACKENDS = ["memory", "local", "s3", "swift", "swift-s3api"]

#: (contract test, backend) pairs that fail because the store differs, not because of a bug in
#: bucketfs: strict xfail, so a store that starts to pass shows up. Each is in docs/swift.md.
KNOWN_DIFFERENCES = {
    ("test_conditional_requests", "swift-s3api"): (
        "Swift's s3api answers 501 NotImplemented to a PUT with If-None-Match or If-Match"
    ),
}

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("backend") if callspec is not None else None
        reason = KNOWN_DIFFERENCES.get((getattr(item, "originalname", item.name), kind))
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "memory":
        from bucketfs.backends.memory import MemoryBackend

        yield MemoryBackend()
    elif kind == "local":
        from bucketfs.backends.local.backend import LocalBackend

        root = tmp_path / "store"
        root.mkdir()
        yield LocalBackend(root)
    elif kind == "swift":
        yield make_swift(request.getfixturevalue("swift"))
    elif kind == "swift-s3api":
        yield make_s3api(request.getfixturevalue("swift"))
    else:
        yield make_s3(request.getfixturevalue("seaweed"))


@pytest.fixture
def run(backend: Backend) -> Runner:
    """`run(body)`: await `body(bucket)` on `backend` with a fresh bucket."""

    def runner(body: Body, *, create_bucket: bool = True) -> None:
        run_with(backend, body, create_bucket=create_bucket)

    return runner
