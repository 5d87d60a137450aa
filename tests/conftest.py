"""Session-wide fixtures: real servers on loopback, started once and stopped at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator

import pytest

from tests.support.helpers import dump_running_daemons
from tests.support.servers import SeaweedServer, unique_bucket
from tests.support.swift_fixtures import swift

__all__ = ["swift"]  # a real single-node Swift, one per session (tests/support/swift_server.py)

# Every mount and CLI command the tests start is a new interpreter. Where the environment sets
# PYTHONDONTWRITEBYTECODE (this machine and CI do), each one compiled bucketfs's ~50 modules
# from source again: ~0.3 s of CPU per mount, minutes over the suite. Their bytecode is cached
# (in __pycache__, ignored by git) like any installed package's.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that failed (a hang that timed out, too): its daemons log what each of their
    tasks waits on before teardown stops them; the failure report shows the logs."""
    report = yield
    if report.when == "call" and report.failed:
        dump_running_daemons()
    return report
