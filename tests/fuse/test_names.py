"""One name reused in quick succession: each step must behave as on a local disk.

A name that was a file a moment ago becomes a directory, a symlink, a file again, with no
waiting in between; on every store the outcome is that of a local disk, and the bucket then
holds what the last step made. The randomized version of these sequences is in
tests/model/test_model.py (`OneNameVsReference`).

Every directory listing holds "." and "..", as on any filesystem (`ls -a` shows them; Python's
`os.listdir` and `os.scandir` filter them out, so `ls -1a` is the witness here).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import Mount, MountFactory

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


def ls_a(path: Path, *options: str) -> list[str]:
    """`ls -1a` (C collation: "." and ".." sort first)."""
    env = {**os.environ, "LC_ALL": "C"}
    cmd = ["ls", "-1a", *options, str(path)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.split()


def test_every_listing_shows_dot_and_dotdot(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    d = mnt.path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"x")
    mnt.flush()
    assert ls_a(mnt.path) == [".", "..", "d"]
    assert ls_a(d) == [".", "..", "f"]
    assert os.listdir(d) == ["f"]
    # inode numbers as readdir gives them: "." is the directory, ".." its parent
    numbered = ls_a(d, "-i")
    assert numbered[:4] == [str(os.stat(d).st_ino), ".", str(os.stat(mnt.path).st_ino), ".."]
    assert ls_a(d / ".versions") == [".", "..", "f"]
    versions = ls_a(d / ".versions" / "f")
    assert versions[:2] == [".", ".."]
    assert len(versions) == 3
    assert ls_a(mnt.path) == [".", "..", "d"]  # a second listing of the same directory
    whole = mount_factory(new_bucket=False)  # every bucket a directory
    assert ls_a(whole.path)[:2] == [".", ".."]
    assert mnt.bucket is not None
    assert ls_a(whole.path / mnt.bucket) == [".", "..", "d"]
