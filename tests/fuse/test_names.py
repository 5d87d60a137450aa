"""One name reused in quick succession: each step must behave as on a local disk.

A name that was a file a moment ago becomes a directory, a symlink, a file again, with no
waiting in between; on every store the outcome is that of a local disk, and the bucket then
holds what the last step made. The randomized version of these sequences is in
tests/model/test_model.py (`OneNameVsReference`).
"""

from __future__ import annotations

import os

import pytest

from tests.helpers import Mount

ROUNDS = 20


@pytest.mark.parametrize("where", ["root", "subdir"])
def test_mkdir_where_a_file_was_just_unlinked(mnt: Mount, where: str) -> None:
    """The issue's sequence, in a directory whose listing the mount holds (after `ls`, or
    one it has just made): the unlink's delete must not be overtaken by the marker's PUT."""
    assert mnt.store is not None
    top = mnt.path
    if where == "subdir":
        top = mnt.path / "sub"
        top.mkdir()
    os.listdir(top)
    x = top / "x"
    for _ in range(ROUNDS):
        os.close(os.open(x, os.O_CREAT | os.O_WRONLY | os.O_EXCL))
        os.unlink(x)
        os.mkdir(x)
        assert x.is_dir()
        os.rmdir(x)
    os.mkdir(x)
    prefix = "" if where == "root" else "sub/"
    keys = mnt.store.keys()
    assert [key for key in keys if key != "sub/"] == [prefix + "x/"]


def test_unlink_right_after_two_saves(mnt: Mount) -> None:
    """The second save makes the first upload stale while it is being sent; that upload still
    lands (a sent PUT is let finish), so the unlink that follows must delete it."""
    assert mnt.store is not None
    x = mnt.path / "x"
    for _ in range(ROUNDS):
        x.write_bytes(b"abcd")
        x.write_bytes(b"")
        os.unlink(x)
        assert not x.exists()
    assert os.listdir(mnt.path) == []
    assert mnt.store.keys() == []
