"""Fixtures of the backend contract suite: one `backend` per store.

The store makers, known differences and runner live in tests/support/contract.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketfs.backends.base import Backend
from tests.support.contract import (
    BACKENDS,
    KNOWN_DIFFERENCES,
    Body,
    Runner,
    make_s3,
    make_s3api,
    run_with,
)
from tests.support.swift_fixtures import make_swift, swift

__all__ = ["swift"]  # the session fixture, imported so that tests here can request it


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
