"""Fixtures for the kernel-level tests: every test body runs against every store.

`store_env` is parametrized over the stores ("local": a local directory store in the test's
tmp dir; "s3": a fresh bucket on the session's SeaweedFS). `mount_factory` starts mounts with
any source and options and tears them all down; `mnt` is a mounted fresh bucket (see
`tests.support.helpers.Mount`: `.path`, `.store`, `.bucket`, `.remount()`). A test marked
`above_the_store` (core semantics, unmodified tools: nothing that depends on how a store keeps
names, metadata or large objects) runs on "local" and "s3" only: the Swift backend's side of
those is the contract suite's (tests/backends) and the Swift cases of the tests that do depend
on the store; each Swift mount costs seconds, and the suite must stay under 20 minutes. For
tests that count requests on SeaweedFS alone: `proxy` (the bench's counting relay in front of the
session's SeaweedFS) and `s3_mounts` (a mount factory on a fresh SeaweedFS bucket).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.helpers import (
    Mount,
    MountFactory,
    StoreEnv,
    local_store_env,
    mount_factory_for,
    s3_store_env,
)
from tests.support.servers import SeaweedServer
from tests.support.swift_fixtures import swift_store_env

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the Swift case of the tests marked `above_the_store` (reported as deselected)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_swift = callspec is not None and callspec.params.get("store_env") == "swift"
        if on_swift and item.get_closest_marker("above_the_store") is not None:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=["local", "s3", "swift"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    if request.param == "s3":
        return s3_store_env(request.getfixturevalue("seaweed"))
    if request.param == "swift":
        return swift_store_env(request.getfixturevalue("swift"))
    return local_store_env(tmp_path / "store")


@pytest.fixture
def mount_factory(store_env: StoreEnv, tmp_path: Path) -> Iterator[MountFactory]:
    with mount_factory_for(store_env, tmp_path / "mounts") as factory:
        yield factory


@pytest.fixture
def mnt(mount_factory: MountFactory) -> Mount:
    return mount_factory()


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[CountingProxy]:
    url = urlsplit(seaweed.endpoint)
    relay = CountingProxy(url.hostname or "127.0.0.1", url.port or 80).start()
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def s3_mounts(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[MountFactory]:
    with mount_factory_for(s3_store_env(seaweed), tmp_path / "mounts") as made:
        yield made
