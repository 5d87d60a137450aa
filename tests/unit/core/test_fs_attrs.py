"""`BucketFS` without a kernel, over memory: POSIX attributes in object metadata, getattr
freshness, setattr, and the etag/pid xattrs.

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it.
"""

from __future__ import annotations

import os
import stat
import time

import pytest
import trio

from bucketfs.core.fs import BucketFS
from bucketfs.core.nodes import ROOT_INO, SYMLINK_MAX, Kind
from bucketfs.errors import (
    NoEntry,
)
from tests.support.harness import BUCKET, Harness, RunFs

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


# --- attributes --------------------------------------------------------------------------


def test_create_write_flush_puts_object_with_posix_metadata(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        before = time.time()
        fh, node = await h.fs.create(ROOT_INO, "new.txt", 0o640, WO | os.O_CREAT, 1001, 1002)
        assert node.lookups == 1
        assert await h.keys() == []  # nothing is sent before flush
        assert await h.fs.write(fh, 0, b"hello ") == 6
        assert await h.fs.write(fh, 6, b"world") == 5
        assert node.size == 11
        await h.fs.flush(fh)  # one descriptor closed: the upload waits for the release
        assert await h.keys() == []
        await h.fs.release(fh)
        info = await h.head("new.txt")
        assert await h.body("new.txt") == b"hello world"
        assert info.metadata["mode"] == str(stat.S_IFREG | 0o640)
        assert info.metadata["uid"] == "1001"
        assert info.metadata["gid"] == "1002"
        assert before - 1 <= float(info.metadata["mtime"]) <= time.time() + 1
        assert info.content_type == "text/plain"
        assert node.etag == info.etag
        assert not node.dirty

    run_fs(body)


def test_metadata_written_by_other_tools_shows_in_getattr(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("s3fs-file", b"x", mode="33152", uid="1234", gid="4321", mtime="1700000000.5")
        await h.put("sub/", mode=str(stat.S_IFDIR | 0o700), uid="7", gid="8", mtime="1600000000")
        node = await h.fs.lookup(ROOT_INO, "s3fs-file")
        attr = await h.fs.getattr(node.ino)
        assert attr.st_mode == 33152 == stat.S_IFREG | 0o600
        assert (attr.uid, attr.gid, attr.mtime) == (1234, 4321, 1700000000.5)
        d = await h.fs.lookup(ROOT_INO, "sub")
        assert (d.st_mode, d.uid, d.gid, d.mtime) == (stat.S_IFDIR | 0o700, 7, 8, 1600000000.0)

    run_fs(body)


def test_objects_without_metadata_get_mount_defaults(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("plain", b"x", mode="garbage", uid="-3")
        await h.put("dir/child", b"x")
        f = await h.fs.lookup(ROOT_INO, "plain")
        assert (f.st_mode, f.uid, f.gid) == (stat.S_IFREG | 0o640, 55, 66)
        d = await h.fs.lookup(ROOT_INO, "dir")
        assert (d.st_mode, d.uid, d.gid) == (stat.S_IFDIR | 0o750, 55, 66)

    run_fs(body, uid=55, gid=66, file_mode=0o640, dir_mode=0o750)


def test_the_kind_of_a_listed_node_is_certain_unless_it_could_be_a_symlink(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("small", b"x" * SYMLINK_MAX)  # could be a symlink's target
        await h.put("large", b"x" * (SYMLINK_MAX + 1))  # cannot
        await h.put("link", b"large", mode=str(stat.S_IFLNK | 0o777))
        await h.put("dir/f", b"")
        listed = await h.ls()
        assert not any(node.full for node in listed.values())
        assert not listed["small"].kind_certain
        assert not listed["link"].kind_certain
        assert listed["large"].kind_certain
        assert listed["dir"].kind_certain
        # which is why its entry is not kept: the kernel looks it up, and finds a symlink
        link = await h.fs.lookup(ROOT_INO, "link")
        assert link.kind is Kind.LINK
        assert link.kind_certain

    run_fs(body)


def test_unlink_of_a_listed_file_needs_no_head(run_fs: RunFs) -> None:
    """rm -rf: readdir, then unlinkat of each name; the listing is as fresh as the kernel's
    entry, and a delete needs no metadata."""

    async def body(h: Harness) -> None:
        for name in ("a", "b", "tiny"):
            await h.put(f"d/{name}", b"x" * (SYMLINK_MAX + 1 if name != "tiny" else 3))
        d = await h.lookup("d")
        await h.ls(d.ino)
        h.store.calls.clear()
        for name in ("a", "b", "tiny"):
            await h.fs.unlink(d.ino, name)
        assert h.store.calls["head"] == 0
        assert await h.keys() == []

    run_fs(body)


def test_listing_nodes_are_partial_until_getattr_or_lookup(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a", b"12", mode="33188", mtime="1700000000")
        await h.put("b", b"34", mode="33261", uid="9")
        listed = await h.ls()
        a, b = listed["a"], listed["b"]
        # straight from the listing: sizes known, metadata not (readdir waits for no HEAD)
        assert not a.full
        assert not b.full
        assert (a.size, b.size) == (2, 2)
        assert h.store.calls["head"] == 0
        assert (await h.fs.getattr(a.ino)).full
        assert (a.mtime, a.mode) == (1700000000.0, 0o644)
        again = await h.fs.lookup(ROOT_INO, "b")
        assert again is b
        assert b.full
        assert (b.mode, b.uid) == (0o755, 9)
        # a full node is served from memory within attr_timeout
        heads = h.store.calls["head"]
        await h.fs.getattr(a.ino)
        await h.fs.lookup(ROOT_INO, "a")
        await h.fs.getattr(b.ino)
        assert h.store.calls["head"] == heads

    run_fs(body, attr_timeout=60)


def test_getattr_sees_changes_by_other_clients_after_attr_timeout(run_fs: RunFs) -> None:
    # attr_timeout is measured with time.monotonic, which the mock clock does not move: use 0
    async def body(h: Harness) -> None:
        await h.put("f", b"1", mode="33188")
        node = await h.fs.lookup(ROOT_INO, "f")
        await h.put("f", b"22", mode="33216")
        attr = await h.fs.getattr(node.ino)
        assert (attr.size, attr.mode) == (2, 0o700)

    run_fs(body, attr_timeout=0)


def test_negative_lookup_expires(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "later")
        await h.put("later", b"x")
        assert (await h.fs.lookup(ROOT_INO, "later")).size == 1

    run_fs(body, negative_timeout=0, dir_timeout=0)


def test_setattr_chmod_chown_utime_on_a_file(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"content", mode="33188", uid="0", gid="0", mtime="1")
        etag = (await h.head("f")).etag
        node = await h.fs.lookup(ROOT_INO, "f")
        await h.fs.setattr(node.ino, mode=0o600)
        await h.fs.setattr(node.ino, uid=1000, gid=2000)
        await h.fs.setattr(node.ino, mtime=1234567890.25)
        info = await h.head("f")
        assert info.metadata["mode"] == str(stat.S_IFREG | 0o600)
        assert (info.metadata["uid"], info.metadata["gid"]) == ("1000", "2000")
        assert float(info.metadata["mtime"]) == 1234567890.25
        assert info.etag == etag
        assert await h.body("f") == b"content"
        assert h.store.calls["put"] == 1  # only the test's own: metadata moves by copy
        assert h.store.calls["copy"] == 3

    run_fs(body)


def test_setattr_of_a_file_being_written_rides_on_its_upload(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "f", 0o644, WO | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"x")
        await h.fs.setattr(node.ino, mode=0o600, uid=9, mtime=1000000000.0)
        assert await h.keys() == []
        await h.fs.flush(fh)
        await h.fs.release(fh)
        info = await h.head("f")
        assert info.metadata["mode"] == str(stat.S_IFREG | 0o600)
        assert info.metadata["uid"] == "9"
        assert float(info.metadata["mtime"]) == 1000000000.0

    run_fs(body)


def test_fchown_after_a_listing_keeps_mode_mtime_and_user_metadata(run_fs: RunFs) -> None:
    """An open fd needs no lookup, so a readdir in between may have left the node partial;
    a metadata change must still carry what the object had (attr_timeout=0 lets the listing
    replace the node's attributes, as it does after attr_timeout in a real mount)."""

    async def body(h: Harness) -> None:
        await h.put("f", b"x", mode=str(stat.S_IFREG | 0o600), mtime="1500000000", color="blue")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        listed = await h.ls()
        assert listed["f"] is node
        await h.fs.setattr(node.ino, uid=7)
        info = await h.head("f")
        assert info.metadata["uid"] == "7"
        assert info.metadata["mode"] == str(stat.S_IFREG | 0o600)
        assert float(info.metadata["mtime"]) == 1500000000.0
        assert info.metadata["color"] == "blue"
        await h.fs.release(fh)

    run_fs(body, attr_timeout=0)


def test_write_after_a_listing_keeps_mode_and_user_metadata(run_fs: RunFs) -> None:
    """`ls` in the directory while a file is open for writing must not reset what the
    upload at close writes (attr_timeout=0: the listing is newer than the node's attributes)."""

    async def body(h: Harness) -> None:
        await h.put("f", b"old", mode=str(stat.S_IFREG | 0o600), uid="5", color="blue")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, RW)
        await h.ls()
        await h.fs.write(fh, 3, b"+new")
        await h.fs.release(fh)
        info = await h.head("f")
        assert await h.body("f") == b"old+new"
        assert info.metadata["mode"] == str(stat.S_IFREG | 0o600)
        assert info.metadata["uid"] == "5"
        assert info.metadata["color"] == "blue"

    run_fs(body, attr_timeout=0)


def test_readdir_prefetch_never_overrides_a_write(run_fs: RunFs) -> None:
    """A HEAD that readdir started must not replace the size of a file written meanwhile."""

    async def body(h: Harness) -> None:
        await h.put("f", b"abc")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, RW)
        await h.fs.write(fh, 0, b"ABC")
        await h.fs.flush(fh)  # staging loaded and clean, handle still open
        await h.ls()  # may start background HEADs of partial entries
        await trio.sleep(0.01)  # such a HEAD is now waiting for the server
        await h.fs.write(fh, 3, b"DEFGH")
        assert (await h.fs.getattr(node.ino)).size == 8
        await trio.sleep(1)  # every background request has finished
        assert (await h.fs.getattr(node.ino)).size == 8
        assert await h.fs.read(fh, 0, 100) == b"ABCDEFGH"
        await h.fs.release(fh)
        assert await h.body("f") == b"ABCDEFGH"

    run_fs(body, attr_timeout=0, latency=0.05)


def test_setattr_on_a_marker_directory_re_puts_the_marker(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o755))
        await h.put("d/f", b"1")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.fs.setattr(d.ino, mode=0o700, uid=5, mtime=1500000000.0)
        info = await h.head("d/")
        assert info.size == 0
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o700)
        assert info.metadata["uid"] == "5"
        assert float(info.metadata["mtime"]) == 1500000000.0
        assert await h.body("d/f") == b"1"

    run_fs(body)


def test_setattr_on_a_prefix_only_directory_creates_its_marker(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("p/f", b"1")
        p = await h.fs.lookup(ROOT_INO, "p")
        assert not p.has_marker
        await h.fs.setattr(p.ino, mode=0o711)
        info = await h.head("p/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o711)
        assert p.has_marker
        assert sorted(await h.keys()) == ["p/", "p/f"]

    run_fs(body)


def test_setattr_mode_survives_a_new_mount(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x", mode=0o644)
        await h.fs.setattr(node.ino, mode=0o751)
        await h.settle()  # close does not wait for the upload (write-back)
        fresh = BucketFS(
            h.store, bucket=BUCKET, prefix="", options=h.fs.opts, cache_dir=h.fs._cache_dir
        )
        again = await fresh.lookup(ROOT_INO, "f")
        assert again.st_mode == stat.S_IFREG | 0o751

    run_fs(body)


def test_getxattr_etag_and_root_pid(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x")
        await h.settle()
        assert node.etag is not None
        assert await h.fs.getxattr(node.ino, "user.bucketfs.etag") == node.etag.encode()
        assert await h.fs.getxattr(ROOT_INO, "user.bucketfs.pid") == str(os.getpid()).encode()
        # answered by name only: a copy (rsync -X, cp -a) must not carry them
        assert await h.fs.listxattr(node.ino) == []  # and its type is the guessed one
        assert await h.fs.listxattr(ROOT_INO) == []

    run_fs(body)
