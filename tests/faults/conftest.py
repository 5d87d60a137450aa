"""Fixtures of the fault tests: crash mounts on the local store and on SeaweedFS, and a
holding proxy. The mounts, the proxy and their helpers live in tests/support/crash.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crash import (
    CrashMounts,
    HoldingProxy,
    open_crash_mounts,
)
from tests.support.helpers import (
    StoreEnv,
    local_or_s3_env,
    s3_store_env,
)


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    return local_or_s3_env(request, tmp_path)


@pytest.fixture
def s3_env(seaweed: Any) -> StoreEnv:
    return s3_store_env(seaweed)


@pytest.fixture
def crash_mounts(store_env: StoreEnv, tmp_path: Path) -> Iterator[CrashMounts]:
    """Crash mounts on every store (local and SeaweedFS)."""
    yield from open_crash_mounts(store_env, tmp_path / "m")


@pytest.fixture
def s3_crash_mounts(s3_env: StoreEnv, tmp_path: Path) -> Iterator[CrashMounts]:
    """Crash mounts on the session's SeaweedFS only (multipart, conditional writes)."""
    yield from open_crash_mounts(s3_env, tmp_path / "m")


@pytest.fixture
def proxy(seaweed: Any) -> Iterator[HoldingProxy]:
    p = HoldingProxy(seaweed.s3_port)
    try:
        yield p
    finally:
        p.close()
