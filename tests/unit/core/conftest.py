"""Fixtures of the core's unit tests: how long `open` may reuse the HEAD of a lookup."""

from __future__ import annotations

import pytest

from bucketfs.core import heads as fs_module


@pytest.fixture
def no_head_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests change the object right after a lookup, faster than any real program
    could between its lookup and its open: open must not reuse the lookup's HEAD."""
    monkeypatch.setattr(fs_module, "OPEN_REUSES_HEAD", 0.0)


@pytest.fixture
def slow_head_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window a loaded test machine cannot overrun between two steps of a test."""
    monkeypatch.setattr(fs_module, "OPEN_REUSES_HEAD", 60.0)
