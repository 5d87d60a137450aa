"""Fixtures of the unit tests: the `run_fs` harness (tests/support/harness.py) and no data
files created ahead (a worker thread in flight lets trio's autojump clock race through virtual
time; `cache/test_cache.py` tests the creation ahead on the real clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bucketfs.cache import datafiles
from tests.support.harness import RunFs, make_run_fs


@pytest.fixture(autouse=True)
def _no_data_files_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafiles, "SPARE", 0)


@pytest.fixture
def run_fs(tmp_path: Path) -> RunFs:
    """Run `body(harness)` against a fresh BucketFS over a fresh CountingBackend."""
    return make_run_fs(tmp_path)
