"""Session-wide fixtures: real servers on loopback, started once and stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import SeaweedServer, unique_bucket
from tests.swift_fixtures import swift

__all__ = ["swift"]  # a real single-node Swift, one per session (tests/swift_server.py)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(seaweed: SeaweedServer) -> str:
    """A fresh, empty bucket on the session's SeaweedFS."""
    name = unique_bucket()
    seaweed.client().create_bucket(Bucket=name)
    return name
