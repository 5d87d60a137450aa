"""Fixtures of the unit tests: the `run_fs` harness (tests/support/harness.py), no data files
created ahead and the index's checkpoints run inline (a worker thread in flight lets trio's
autojump clock race through virtual time; `cache/test_cache.py` tests the creation ahead and
`cache/test_checkpoints.py` the checkpoint thread on the real clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bucketfs.cache import checkpoints, datafiles
from tests.support.harness import RunFs, make_run_fs


@pytest.fixture(autouse=True)
def _no_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafiles, "SPARE", 0)
    monkeypatch.setattr(checkpoints, "THREADED", False)


@pytest.fixture
def run_fs(tmp_path: Path) -> RunFs:
    """Run `body(harness)` against a fresh BucketFS over a fresh CountingBackend."""
    return make_run_fs(tmp_path)
