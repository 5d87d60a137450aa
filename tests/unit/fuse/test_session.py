"""The node bound's way of forgetting (fuse/session.py `_forget`): prune, else invalidate."""

from __future__ import annotations

import os

import pytest

from bucketfs.fuse import session
from bucketfs.fuse.prune import Pruner


def test_names_are_invalidated_one_by_one_where_the_kernel_refuses_prunes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    invalidated: list[tuple[int, bytes]] = []
    monkeypatch.setattr(
        session.pyfuse3, "invalidate_entry", lambda parent, name: invalidated.append((parent, name))
    )
    fd = os.eventfd(0)  # answers EINVAL to a prune, as a kernel before 6.18 does
    try:
        pruner = Pruner(fd)
        session._forget(pruner, [(5, 1, "a"), (6, 2, "é")])
        assert invalidated == [(1, b"a"), (2, "é".encode())]
        assert not pruner.available
    finally:
        os.close(fd)


def test_a_kernel_that_takes_prunes_gets_no_invalidation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session.pyfuse3, "invalidate_entry", lambda *_: pytest.fail("invalidated"))
    read, write = os.pipe()
    try:
        session._forget(Pruner(write), [(5, 1, "a")])
        assert len(os.read(read, 4096)) == 16 + 16 + 8
    finally:
        os.close(read)
        os.close(write)
