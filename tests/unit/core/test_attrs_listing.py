"""`-o attrs=listing` in the core, over memory with requests counted: a listing's attributes
are final (no HEAD to list or stat what was listed, no marker HEAD for a directory), POSIX
metadata others stored is not shown, every object is a regular file, and a change made through
the mount still stores its attributes on the object for a full mount to see."""

from __future__ import annotations

import stat
import time

import pytest

from bucketfs.core.nodes import ROOT_INO, Kind
from bucketfs.errors import NotPermitted
from tests.support.harness import Harness, RunFs

OLD = 1_000_000_000  # an mtime no object here has by accident
#: what another tool stored: bucketfs/s3fs/rclone POSIX keys and one user key
STORED = {"mode": str(stat.S_IFREG | 0o600), "uid": "1234", "gid": "4321", "mtime": str(OLD)}
LISTING = {"attrs": "listing", "uid": 1000, "gid": 1001, "file_mode": 0o640, "dir_mode": 0o750}


def test_listed_files_show_the_listing_and_need_no_head(run_fs: RunFs) -> None:
    names = [f"f{i:03d}" for i in range(50)]

    async def body(h: Harness) -> None:
        for i, name in enumerate(names):
            await h.put(f"d/{name}", b"x" * i, colour="blue", **STORED)
        await h.put("d/sub/inner", b"y")
        d = await h.fs.lookup(ROOT_INO, "d")
        h.store.calls.clear()
        listed = await h.ls(d.ino)  # ls -l, du, find -ls: readdir, then a stat of each
        for name in names:
            node = await h.fs.lookup(d.ino, name)
            assert await h.fs.getattr(node.ino) is node
        sub = await h.fs.getattr(listed["sub"].ino)
        assert (h.store.calls["head"], h.store.calls["list_page"]) == (0, 1)
        for i, name in enumerate(names):
            node = listed[name]
            info = await h.head(f"d/{name}")
            assert (node.kind, node.size, node.mode, node.uid, node.gid) == (
                Kind.FILE,
                i,
                0o640,
                1000,
                1001,
            )
            assert node.mtime == node.ctime == info.last_modified != OLD
            assert node.atime is None  # st_atime shows the mtime
        assert (sub.kind, sub.mode, sub.uid, sub.gid) == (Kind.DIR, 0o750, 1000, 1001)

    run_fs(body, **LISTING)


def test_the_full_mode_shows_what_the_metadata_says(run_fs: RunFs) -> None:
    """The contrast (the default, attrs=full): the same object shows its stored attributes."""

    async def body(h: Harness) -> None:
        await h.put("f", b"x", **STORED)
        node = await h.fs.lookup(ROOT_INO, "f")
        assert (node.mode, node.uid, node.gid, node.mtime) == (0o600, 1234, 4321, OLD)
        assert h.store.calls["head"] >= 1

    run_fs(body, uid=1000, gid=1001)


def test_a_name_not_listed_costs_a_head_and_a_list_and_no_marker_head(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"abc", **STORED)
        await h.put("d/", b"", mode=str(stat.S_IFDIR | 0o700))  # a marker: never read
        await h.put("d/x", b"")
        d = await h.fs.lookup(ROOT_INO, "d")
        assert (h.store.calls["head"], h.store.calls["list_page"]) == (1, 1)
        assert (d.kind, d.mode, d.uid) == (Kind.DIR, 0o750, 1000)
        await h.fs.getattr(d.ino)
        assert h.store.calls["head"] == 1
        h.store.calls.clear()
        # a second name asked there: the directory is listed once, which answers it
        f = await h.fs.lookup(ROOT_INO, "f")
        assert (h.store.calls["head"], h.store.calls["list_page"]) == (0, 1)
        assert (f.mode, f.uid, f.size) == (0o640, 1000, 3)

    run_fs(body, **LISTING)


def test_links_and_special_files_show_as_files_and_cannot_be_made(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("link", b"target", mode=str(stat.S_IFLNK | 0o777))
        await h.put("fifo", b"", mode=str(stat.S_IFIFO | 0o644))
        listed = await h.ls()
        assert {listed["link"].kind, listed["fifo"].kind} == {Kind.FILE}
        link = await h.fs.lookup(ROOT_INO, "link")
        assert (link.kind, link.size) == (Kind.FILE, 6)
        with pytest.raises(NotPermitted):
            await h.fs.symlink(ROOT_INO, "new", "target", 0, 0)
        with pytest.raises(NotPermitted):
            await h.fs.mknod(ROOT_INO, "p", stat.S_IFIFO | 0o644, 0, 0, 0)
        assert "new" not in await h.keys()
        assert "p" not in await h.keys()

    run_fs(body, **LISTING)


def test_chmod_is_stored_with_the_other_metadata_kept(run_fs: RunFs) -> None:
    """setattr still writes the object (a full mount sees it) and first reads the metadata
    the listing lacks, so the user metadata another tool stored is not lost."""

    async def body(h: Harness) -> None:
        await h.put("f", b"x", colour="blue", **STORED)
        listed = await h.ls()
        h.store.calls.clear()
        await h.fs.setattr(listed["f"].ino, mode=0o604)
        assert h.store.calls["head"] == 1
        assert h.store.calls["copy"] == 1
        stored = (await h.head("f")).metadata
        assert stored["colour"] == "blue"
        assert stored["mode"] == str(stat.S_IFREG | 0o604)

    run_fs(body, **LISTING)


def test_expired_attributes_are_read_again_without_the_metadata(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x", **STORED)
        f = (await h.ls())["f"]
        f.attr_expiry = 0.0  # attr_timeout passed
        await h.put("f", b"longer", **STORED)  # another client changed it
        h.store.calls.clear()
        assert await h.fs.getattr(f.ino) is f
        assert h.store.calls["head"] == 1
        assert (f.size, f.mode, f.uid) == (6, 0o640, 1000)
        assert f.mtime < time.time() + 1
        assert f.mtime != OLD

    run_fs(body, **LISTING)
