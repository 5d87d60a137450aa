"""`BucketFS` without a kernel: names, listings, attributes, reads and writes, over memory.

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it. Renames live in `test_fs_rename.py`.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from collections.abc import Awaitable, Callable

import pytest
import trio

from bucketfs.cache.store import BlockCache
from bucketfs.core import fs as fs_module
from bucketfs.core.fs import BucketFS
from bucketfs.core.nodes import ROOT_INO, SYMLINK_MAX, Kind, Node
from bucketfs.errors import (
    BucketfsError,
    DirectoryNotEmpty,
    FileExists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoEntry,
    NotADirectory,
    NotPermitted,
    ReadOnly,
)
from tests.unit.conftest import BUCKET, Harness, RunFs

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


def reader_of(fs: BucketFS) -> BlockCache:
    return fs.data.cache


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# --- lookup ------------------------------------------------------------------------------


def test_lookup_file_dir_and_missing(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f.txt", b"hello")
        await h.put("d/inner", b"x")
        f = await h.fs.lookup(ROOT_INO, "f.txt")
        assert (f.kind, f.size, f.key, f.lookups) == (Kind.FILE, 5, "f.txt", 1)
        assert stat.S_ISREG(f.st_mode)
        d = await h.fs.lookup(ROOT_INO, "d")
        assert (d.kind, d.key) == (Kind.DIR, "d/")
        assert stat.S_ISDIR(d.st_mode)
        assert not d.has_marker
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "missing")
        with pytest.raises(NoEntry):
            await h.fs.lookup(d.ino, "missing")
        with pytest.raises(NotADirectory):
            await h.fs.lookup(f.ino, "x")
        again = await h.fs.lookup(ROOT_INO, "f.txt")
        assert again is f
        assert f.lookups == 2

    run_fs(body)


def test_lookup_counts_and_forget(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"1")
        f = await h.fs.lookup(ROOT_INO, "f")
        await h.fs.lookup(ROOT_INO, "f")
        h.fs.forget([(f.ino, 1)])
        assert h.fs.table.get(f.ino) is f
        h.fs.forget([(f.ino, 1)])
        assert h.fs.table.get(f.ino) is None
        with pytest.raises(NoEntry):
            await h.fs.getattr(f.ino)
        # a new lookup gives a new inode, never a reused number
        f2 = await h.fs.lookup(ROOT_INO, "f")
        assert f2.ino > f.ino

    run_fs(body)


def test_prefix_only_directory(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a/b/c/file", b"x")
        c = await h.lookup("a/b/c")
        assert c.kind is Kind.DIR
        assert c.key == "a/b/c/"
        assert not c.has_marker
        f = await h.lookup("a/b/c/file")
        assert f.size == 1
        assert list(await h.ls((await h.lookup("a")).ino)) == ["b"]

    run_fs(body)


def test_empty_marker_directory(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("empty/")
        d = await h.fs.lookup(ROOT_INO, "empty")
        assert d.kind is Kind.DIR
        assert d.has_marker
        assert await h.ls(d.ino) == {}
        assert list(await h.ls()) == ["empty"]

    run_fs(body)


def test_a_known_directory_is_revalidated_by_listing_without_reading_its_marker(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o700))
        await h.put("d/f", b"1")
        d = await h.fs.lookup(ROOT_INO, "d")
        assert d.mode == 0o700
        heads, lists = h.store.calls["head"], h.store.calls["list_page"]
        # the kernel revalidates the entry and asks for attributes once they expired
        assert await h.fs.lookup(ROOT_INO, "d") is d
        assert (await h.fs.getattr(d.ino)).mode == 0o700
        assert h.store.calls["head"] == heads
        assert h.store.calls["list_page"] > lists  # whether it still exists was asked

    run_fs(body, attr_timeout=0, entry_timeout=0, dir_timeout=0, negative_timeout=0)


def test_a_known_directory_removed_by_another_client_is_gone_at_revalidation(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o700))
        await h.put("d/f", b"1")
        await h.fs.lookup(ROOT_INO, "d")
        await h.store.delete_many(BUCKET, ["d/", "d/f"])
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "d")

    run_fs(body, attr_timeout=0, entry_timeout=0, dir_timeout=0, negative_timeout=0)


def test_directory_attributes_are_read_again_after_dir_attr_timeout(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o700))
        await h.put("d/f", b"1")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.put("d/", mode=str(stat.S_IFDIR | 0o750))  # another client's chmod
        assert (await h.fs.lookup(ROOT_INO, "d")).mode == 0o750
        await h.put("d/", mode=str(stat.S_IFDIR | 0o705))
        assert (await h.fs.getattr(d.ino)).mode == 0o705

    run_fs(body, attr_timeout=0, dir_timeout=0, negative_timeout=0, dir_attr_timeout=0)


def test_key_both_file_and_prefix_directory_wins(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("both", b"file content")
        await h.put("both/child", b"c")
        listed = await h.ls()
        assert list(listed) == ["both"]
        assert listed["both"].kind is Kind.DIR
        node = await h.fs.lookup(ROOT_INO, "both")
        assert node.kind is Kind.DIR
        assert list(await h.ls(node.ino)) == ["child"]
        # the object stays untouched in the bucket
        assert await h.body("both") == b"file content"

    run_fs(body)


def test_readdir_skips_invalid_segments_and_keeps_siblings(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        long = "L" * 300
        for key in ("a//b", "a/ok", "x/./y", "x/../y", "x/fine", f"x/{long}", f"{long}/z", "/abs"):
            await h.put(key, b"1")
        await h.put("top", b"t")
        root = await h.ls()
        assert sorted(root) == ["a", "top", "x"]
        a = await h.fs.lookup(ROOT_INO, "a")
        assert list(await h.ls(a.ino)) == ["ok"]
        x = await h.fs.lookup(ROOT_INO, "x")
        assert list(await h.ls(x.ino)) == ["fine"]

    run_fs(body)


def test_readdir_many_pages(run_fs: RunFs) -> None:
    names = [f"f{i:05d}" for i in range(2500)]

    async def body(h: Harness) -> None:
        for name in names:
            await h.put(f"big/{name}", b"x")
        await h.put("big/sub/deeper", b"y")
        big = await h.fs.lookup(ROOT_INO, "big")
        listed = await h.ls(big.ino)
        assert list(listed) == sorted([*names, "sub"])
        assert listed["sub"].kind is Kind.DIR
        assert all(listed[n].kind is Kind.FILE and listed[n].size == 1 for n in names)
        assert h.store.calls["head"] <= 2  # the listing itself needs no HEAD per entry

    run_fs(body)


def test_readdir_offsets_resume_in_the_middle(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(1500):
            await h.put(f"f{i:04d}", b"x")
        fh = h.fs.opendir(ROOT_INO)
        full = await h.fs.readdir(fh, 0)
        assert [name for name, _, _ in full[:2]] == [".", ".."]  # offsets 0 and 1
        assert full[0][1] is full[1][1] is h.fs.table.root  # the root is its own parent
        assert [nxt for _, _, nxt in full] == list(range(1, 1503))
        # the kernel's buffer filled up after 1,100 entries: it resumes at that offset
        rest = await h.fs.readdir(fh, full[1099][2])
        assert [name for name, _, _ in rest] == [f"f{i:04d}" for i in range(1098, 1500)]
        assert [nxt for _, _, nxt in rest] == list(range(1101, 1503))
        assert await h.fs.readdir(fh, 1502) == []
        h.fs.releasedir(fh)
        # a fresh handle asked for a middle offset first (telldir/seekdir) also works
        fh2 = h.fs.opendir(ROOT_INO)
        middle = await h.fs.readdir(fh2, 702)
        assert middle[0][0] == "f0700"
        assert len(middle) == 800
        h.fs.releasedir(fh2)

    run_fs(body)


def test_readdir_shows_files_not_yet_uploaded(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("old", b"1")
        fh, _node = await h.fs.create(ROOT_INO, "new", 0o644, WO | os.O_CREAT, 0, 0)
        assert sorted(await h.ls()) == ["new", "old"]
        await h.fs.release(fh)
        assert sorted(await h.ls()) == ["new", "old"]
        assert sorted(await h.keys()) == ["new", "old"]

    run_fs(body)


def test_names_over_255_bytes_are_refused(run_fs: RunFs) -> None:
    long = "é" * 128  # 256 bytes in UTF-8
    ok = "é" * 127 + "x"  # 255 bytes

    async def body(h: Harness) -> None:
        with pytest.raises(NameTooLong):
            await h.fs.create(ROOT_INO, long, 0o644, WO | os.O_CREAT, 0, 0)
        with pytest.raises(NameTooLong):
            await h.fs.mkdir(ROOT_INO, long, 0o755, 0, 0)
        with pytest.raises(NameTooLong):
            await h.fs.symlink(ROOT_INO, long, "target", 0, 0)
        await h.write_file(ok, b"fits")
        with pytest.raises(NameTooLong):
            await h.fs.rename(ROOT_INO, ok, ROOT_INO, long, 0)
        assert await h.keys() == [ok]

    run_fs(body)


def test_lookup_of_a_name_over_255_bytes(run_fs: RunFs) -> None:
    """A key with a 300-byte segment is hidden from readdir; lookup must not reveal it.

    FUSE passes names up to 1,024 bytes to lookup, so the core has to refuse them itself.
    """
    long = "L" * 300

    async def body(h: Harness) -> None:
        await h.put(long, b"hidden")
        await h.put(f"{long}/child", b"hidden")
        with pytest.raises(NameTooLong):
            await h.fs.lookup(ROOT_INO, long)
        assert await h.ls() == {}

    run_fs(body)


def test_invalid_new_names(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for name in ("", ".", "..", "a/b", "nul\0"):
            with pytest.raises(InvalidArgument):
                await h.fs.create(ROOT_INO, name, 0o644, WO | os.O_CREAT, 0, 0)
            with pytest.raises(InvalidArgument):
                await h.fs.mkdir(ROOT_INO, name, 0o755, 0, 0)
        assert await h.keys() == []

    run_fs(body)


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


# --- reading -----------------------------------------------------------------------------


def test_read_anywhere_in_a_large_object(run_fs: RunFs) -> None:
    size = 5 * MiB + 123
    blob = data_of(size)

    async def body(h: Harness) -> None:
        await h.put("big", blob)
        node = await h.fs.lookup(ROOT_INO, "big")
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        rng = random.Random(1)
        for _ in range(60):
            offset = rng.randrange(size)
            length = rng.choice([1, 4096, 128 << 10, MiB + 7, 3 * MiB])
            assert await h.fs.read(fh, offset, length) == blob[offset : offset + length]
        assert await h.fs.read(fh, size - 10, 100) == blob[-10:]
        assert await h.fs.read(fh, size, 100) == b""
        assert await h.fs.read(fh, size + MiB, 100) == b""
        assert await h.fs.read(fh, 0, 0) == b""
        await h.fs.release(fh)

    run_fs(body)


def test_sequential_reads_issue_fewer_gets_than_chunks(run_fs: RunFs) -> None:
    size = 12 * MiB
    blob = data_of(size, seed=2)

    async def body(h: Harness) -> None:
        await h.put("seq", blob)
        node = await h.fs.lookup(ROOT_INO, "seq")
        assert await h.read_file(node, chunk=128 << 10) == blob
        chunks = size // reader_of(h.fs).block_size
        assert reader_of(h.fs).gets < chunks
        assert h.store.calls["get"] == reader_of(h.fs).gets

    run_fs(body)


@pytest.fixture
def no_head_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests change the object right after a lookup, faster than any real program
    could between its lookup and its open: open must not reuse the lookup's HEAD."""
    monkeypatch.setattr(fs_module, "OPEN_REUSES_HEAD", 0.0)


@pytest.fixture
def slow_head_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window a loaded test machine cannot overrun between two steps of a test."""
    monkeypatch.setattr(fs_module, "OPEN_REUSES_HEAD", 60.0)


def test_open_sees_the_object_as_it_is_now(run_fs: RunFs, no_head_reuse: None) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"version one")
        node = await h.fs.lookup(ROOT_INO, "f")
        assert await h.read_file(node) == b"version one"
        await h.put("f", b"version two!")
        assert await h.read_file(node) == b"version two!"

    run_fs(body, attr_timeout=60)


def test_open_of_a_file_deleted_by_another_client(run_fs: RunFs, no_head_reuse: None) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x")
        node = await h.fs.lookup(ROOT_INO, "f")
        await h.store.delete(BUCKET, "f")
        with pytest.raises(NoEntry):
            await h.fs.open(node.ino, os.O_RDONLY)

    run_fs(body)


def test_open_right_after_its_lookup_reuses_the_lookups_head_once(
    run_fs: RunFs, slow_head_reuse: None
) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x")
        node = await h.fs.lookup(ROOT_INO, "f")
        assert h.store.calls["head"] == 1
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)  # the HEAD of its path lookup
        await h.fs.release(fh)
        assert h.store.calls["head"] == 1
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)  # a HEAD serves one open
        await h.fs.release(fh)
        assert h.store.calls["head"] == 2
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)  # its own HEAD, too
        await h.fs.release(fh)
        assert h.store.calls["head"] == 3

    run_fs(body, attr_timeout=60)


def test_open_does_not_reuse_an_older_head(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"version one")
        node = await h.fs.lookup(ROOT_INO, "f")
        # real time: the window is on the monotonic clock, not trio's
        await trio.to_thread.run_sync(time.sleep, fs_module.OPEN_REUSES_HEAD * 2)
        await h.put("f", b"version two!")
        assert await h.read_file(node) == b"version two!"
        assert h.store.calls["head"] == 2

    run_fs(body, attr_timeout=60)


def test_open_does_not_reuse_a_head_of_content_changed_since(
    run_fs: RunFs, slow_head_reuse: None
) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"0123456789")
        node = await h.fs.lookup(ROOT_INO, "f")
        await h.fs.setattr(node.ino, size=3)
        await h.settle()  # uploaded: the node's ETag is no longer the one the lookup saw
        heads = h.store.calls["head"]
        await h.read_file(node)
        assert h.store.calls["head"] == heads + 1

    run_fs(body, attr_timeout=60)


def test_open_a_directory_is_refused(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/x", b"")
        d = await h.fs.lookup(ROOT_INO, "d")
        with pytest.raises(IsADirectory):
            await h.fs.open(d.ino, os.O_RDONLY)

    run_fs(body)


# --- writing -----------------------------------------------------------------------------


async def rewrite(h: Harness, key: str, flags: int, *writes: tuple[int, bytes]) -> Node:
    node = await h.lookup(key)
    fh, _keep = await h.fs.open(node.ino, flags)
    for offset, data in writes:
        await h.fs.write(fh, offset, data)
    await h.fs.flush(fh)
    await h.fs.release(fh)
    return node


def test_overwrite_in_the_middle(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"0123456789")
        node = await rewrite(h, "f", WO, (3, b"abc"))
        assert await h.body("f") == b"012abc6789"
        assert node.size == 10
        assert await h.read_file(node) == b"012abc6789"

    run_fs(body)


def test_append_beyond_the_end_leaves_a_hole_of_zeros(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"head")
        node = await rewrite(h, "f", RW, (10, b"tail"))
        assert await h.body("f") == b"head" + bytes(6) + b"tail"
        assert node.size == 14
        assert await h.read_file(node) == b"head" + bytes(6) + b"tail"

    run_fs(body)


def test_read_your_writes_before_flush(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"abcdef")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, RW)
        await h.fs.write(fh, 2, b"XY")
        assert await h.fs.read(fh, 0, 100) == b"abXYef"
        assert (await h.fs.getattr(node.ino)).size == 6
        assert await h.body("f") == b"abcdef"  # not uploaded yet
        await h.fs.release(fh)
        assert await h.body("f") == b"abXYef"  # release of the last handle uploads

    run_fs(body)


@pytest.mark.parametrize(
    ("new_size", "expected"),
    [(4, b"0123"), (14, b"0123456789" + bytes(4)), (0, b"")],
    ids=["smaller", "larger", "zero"],
)
def test_truncate_without_an_open_handle(run_fs: RunFs, new_size: int, expected: bytes) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"0123456789", mode="33152")
        node = await h.fs.lookup(ROOT_INO, "f")
        attr = await h.fs.setattr(node.ino, size=new_size)
        assert attr.size == new_size
        assert await h.body("f") == expected  # uploaded at once: no close will follow
        assert (await h.head("f")).metadata["mode"] == "33152"
        assert not node.dirty
        assert await h.read_file(node) == expected

    run_fs(body)


@pytest.mark.parametrize(
    ("new_size", "expected"),
    [(4, b"0123"), (14, b"0123456789" + bytes(4)), (0, b"")],
    ids=["smaller", "larger", "zero"],
)
def test_truncate_with_an_open_handle(run_fs: RunFs, new_size: int, expected: bytes) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"0123456789")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, RW)
        await h.fs.setattr(node.ino, size=new_size)
        assert await h.fs.read(fh, 0, 100) == expected
        assert node.size == new_size
        await h.fs.flush(fh)
        assert await h.body("f") == b"0123456789"  # uploaded on release, not before
        await h.fs.release(fh)
        assert await h.body("f") == expected

    run_fs(body)


def test_truncate_then_another_client_writes_then_open_sees_it(
    run_fs: RunFs, no_head_reuse: None
) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"0123456789")
        node = await h.fs.lookup(ROOT_INO, "f")
        await h.fs.setattr(node.ino, size=3)
        await h.settle()  # the truncated file is uploaded in the background first
        await h.put("f", b"written elsewhere")
        assert await h.read_file(node) == b"written elsewhere"

    run_fs(body)


def test_open_with_o_trunc(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"old content")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, WO | os.O_TRUNC)
        assert node.size == 0
        await h.fs.write(fh, 0, b"new")
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert await h.body("f") == b"new"
        # O_TRUNC with nothing written still empties the object
        await rewrite(h, "f", WO | os.O_TRUNC)
        assert await h.body("f") == b""

    run_fs(body)


def test_create_o_excl_on_an_existing_key(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("exists", b"keep me")
        with pytest.raises(FileExists):
            await h.fs.create(ROOT_INO, "exists", 0o644, WO | os.O_CREAT | os.O_EXCL, 0, 0)
        await h.fs.lookup(ROOT_INO, "exists")
        with pytest.raises(FileExists):
            await h.fs.create(ROOT_INO, "exists", 0o644, WO | os.O_CREAT | os.O_EXCL, 0, 0)
        await h.put("dir/x", b"")
        with pytest.raises(FileExists):
            await h.fs.create(ROOT_INO, "dir", 0o644, WO | os.O_CREAT | os.O_EXCL, 0, 0)
        assert await h.body("exists") == b"keep me"

    run_fs(body)


def test_create_over_an_existing_file_truncates_it(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"long old content")
        await h.fs.lookup(ROOT_INO, "f")
        fh, node = await h.fs.create(ROOT_INO, "f", 0o644, WO | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"new")
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert await h.body("f") == b"new"
        assert node.size == 3

    run_fs(body)


def test_empty_new_file_is_uploaded_on_flush(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.write_file("touched", b"")
        assert await h.body("touched") == b""

    run_fs(body)


def test_unlink_while_open_keeps_reads_working_until_release(run_fs: RunFs) -> None:
    blob = data_of(3 * MiB, seed=3)

    async def body(h: Harness) -> None:
        await h.put("f", blob)
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        assert await h.fs.read(fh, 0, 10) == blob[:10]
        await h.fs.unlink(ROOT_INO, "f")
        assert await h.keys() == []
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "f")
        assert await h.fs.read(fh, MiB, MiB) == blob[MiB : 2 * MiB]
        assert (await h.fs.getattr(node.ino)).size == len(blob)
        await h.fs.release(fh)
        h.fs.forget([(node.ino, node.lookups)])
        assert h.fs.table.get(node.ino) is None
        assert await h.keys() == []  # never resurrected by an upload

    run_fs(body)


def test_unlink_while_open_for_writing_never_uploads(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, _node = await h.fs.create(ROOT_INO, "tmp", 0o600, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"scratch")
        await h.fs.unlink(ROOT_INO, "tmp")
        assert await h.fs.read(fh, 0, 100) == b"scratch"
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert await h.keys() == []
        assert await h.fs.drain() == []
        assert await h.keys() == []

    run_fs(body)


def test_flush_of_an_unchanged_file_sends_no_put(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"same")
        node = await h.fs.lookup(ROOT_INO, "f")
        for flags in (os.O_RDONLY, RW, WO):
            fh, _keep = await h.fs.open(node.ino, flags)
            await h.fs.read(fh, 0, 10)
            await h.fs.flush(fh)
            await h.fs.fsync(fh)
            await h.fs.release(fh)
        assert h.store.calls["put"] == 1  # the test's own
        assert h.store.calls["copy"] == 0
        # and a second flush after a real upload sends nothing more
        fh, _keep = await h.fs.open(node.ino, RW)
        await h.fs.write(fh, 0, b"SAME")
        await h.fs.flush(fh)
        await h.fs.flush(fh)
        await h.fs.release(fh)
        await h.settle()
        assert h.store.calls["put"] == 2

    run_fs(body)


def test_write_on_a_read_only_handle(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        with pytest.raises(BucketfsError) as info:
            await h.fs.write(fh, 0, b"y")
        assert info.value.errno == errno.EBADF
        await h.fs.release(fh)

    run_fs(body)


def test_large_file_goes_up_in_parts(run_fs: RunFs) -> None:
    blob = data_of(12 * MiB + 5, seed=4)

    async def body(h: Harness) -> None:
        node = await h.write_file("large.bin", blob)
        assert await h.body("large.bin") == blob
        assert node.etag is not None
        assert node.etag.endswith("-3")  # 5 MiB parts
        assert (await h.head("large.bin")).metadata["mode"] == str(stat.S_IFREG | 0o644)

    run_fs(body, part_size=5 * MiB)


# --- directories -------------------------------------------------------------------------


def test_mkdir_writes_a_marker(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "newdir", 0o750, 10, 20)
        assert (d.kind, d.key, d.lookups) == (Kind.DIR, "newdir/", 1)
        info = await h.head("newdir/")
        assert info.size == 0
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o750)
        assert (info.metadata["uid"], info.metadata["gid"]) == ("10", "20")
        sub = await h.fs.mkdir(d.ino, "sub", 0o755, 0, 0)
        assert sub.key == "newdir/sub/"
        assert sorted(await h.keys()) == ["newdir/", "newdir/sub/"]
        with pytest.raises(FileExists):
            await h.fs.mkdir(ROOT_INO, "newdir", 0o755, 0, 0)
        assert list(await h.ls()) == ["newdir"]
        assert list(await h.ls(d.ino)) == ["sub"]

    run_fs(body)


def test_rmdir(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("full/", b"")
        await h.put("full/f", b"1")
        await h.put("prefixonly/sub/f", b"1")
        await h.put("file", b"1")
        await h.fs.mkdir(ROOT_INO, "empty", 0o755, 0, 0)
        with pytest.raises(DirectoryNotEmpty):
            await h.fs.rmdir(ROOT_INO, "full")
        with pytest.raises(DirectoryNotEmpty):
            await h.fs.rmdir(ROOT_INO, "prefixonly")
        with pytest.raises(NotADirectory):
            await h.fs.rmdir(ROOT_INO, "file")
        with pytest.raises(NoEntry):
            await h.fs.rmdir(ROOT_INO, "nothing")
        await h.fs.rmdir(ROOT_INO, "empty")
        assert "empty/" not in await h.keys()
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "empty")
        await h.fs.unlink((await h.lookup("full")).ino, "f")
        await h.fs.rmdir(ROOT_INO, "full")
        assert sorted(await h.keys()) == ["file", "prefixonly/sub/f"]

    run_fs(body)


def test_rmdir_of_a_directory_holding_an_unflushed_file(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        fh, _node = await h.fs.create(d.ino, "pending", 0o644, WO | os.O_CREAT, 0, 0)
        with pytest.raises(DirectoryNotEmpty):
            await h.fs.rmdir(ROOT_INO, "d")
        await h.fs.release(fh)
        assert sorted(await h.keys()) == ["d/", "d/pending"]

    run_fs(body)


def test_unlink(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a", b"1")
        await h.put("d/b", b"2")
        await h.fs.unlink(ROOT_INO, "a")  # never looked up before
        d = await h.lookup("d")
        await h.lookup("d/b")
        await h.fs.unlink(d.ino, "b")
        assert await h.keys() == []
        with pytest.raises(NoEntry):
            await h.fs.unlink(ROOT_INO, "a")
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "a")
        await h.put("dir/x", b"")
        with pytest.raises(IsADirectory):
            await h.fs.unlink(ROOT_INO, "dir")

    run_fs(body)


def test_symlink_and_readlink(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        link = await h.fs.symlink(ROOT_INO, "ln", "../some/target", 3, 4)
        assert link.kind is Kind.LINK
        assert stat.S_ISLNK(link.st_mode)
        assert await h.body("ln") == b"../some/target"
        info = await h.head("ln")
        assert stat.S_ISLNK(int(info.metadata["mode"]))
        assert info.metadata["uid"] == "3"
        assert await h.fs.readlink(link.ino) == "../some/target"
        # a new mount (nothing cached) sees a symlink, not a file
        fresh = BucketFS(
            h.store, bucket=BUCKET, prefix="", options=h.fs.opts, cache_dir=h.fs._cache_dir
        )
        again = await fresh.lookup(ROOT_INO, "ln")
        assert again.kind is Kind.LINK
        await h.put("regular", b"x")
        with pytest.raises(InvalidArgument):
            await h.fs.readlink((await h.fs.lookup(ROOT_INO, "regular")).ino)

    run_fs(body)


def test_symlink_written_by_s3fs_is_read_from_its_content(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("s3fs-link", b"/etc/hostname", mode=str(stat.S_IFLNK | 0o777))
        listed = await h.ls()
        node = await h.fs.lookup(ROOT_INO, "s3fs-link")
        assert node.kind is Kind.LINK
        assert listed["s3fs-link"].kind is Kind.FILE  # a listing cannot tell
        assert await h.fs.readlink(node.ino) == "/etc/hostname"

    run_fs(body)


# --- mounts of another shape -------------------------------------------------------------


def test_all_buckets_mount(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for name in ("alpha", "beta"):
            await h.store.create_bucket(name)
        await h.store.put("alpha", "f", b"1")
        assert sorted(await h.ls()) == ["alpha", "beta"]
        gamma = await h.fs.mkdir(ROOT_INO, "gamma", 0o755, 0, 0)
        assert gamma.is_bucket
        assert [b.name for b in await h.store.list_buckets()] == ["alpha", "beta", "gamma"]
        assert await h.store.keys("gamma") == []
        # files inside a bucket directory are ordinary
        await h.write_file("g.txt", b"in gamma", parent=gamma.ino)
        await h.settle()
        assert await h.store.get("gamma", "g.txt") == b"in gamma"
        alpha = await h.fs.lookup(ROOT_INO, "alpha")
        assert list(await h.ls(alpha.ino)) == ["f"]
        with pytest.raises(DirectoryNotEmpty) as info:
            await h.fs.rmdir(ROOT_INO, "alpha")
        assert info.value.errno == errno.ENOTEMPTY
        await h.fs.rmdir(ROOT_INO, "beta")
        assert [b.name for b in await h.store.list_buckets()] == ["alpha", "gamma"]
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "beta")
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "nosuchbucket")
        # files cannot live at the top of s3://
        with pytest.raises(NotPermitted):
            await h.fs.create(ROOT_INO, "file", 0o644, WO | os.O_CREAT, 0, 0)

    run_fs(body, bucket=None)


def test_prefix_mount_sees_only_its_prefix(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for key in ("pre/a", "pre/d/b", "other/c", "prefix-file", "pre-not", "top"):
            await h.put(key, b"x")
        assert sorted(await h.ls()) == ["a", "d"]
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "other")
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "top")
        a = await h.fs.lookup(ROOT_INO, "a")
        assert a.key == "pre/a"
        assert await h.lookup("d/b")
        await h.write_file("new", b"n")
        await h.fs.mkdir(ROOT_INO, "dir", 0o755, 0, 0)
        assert sorted(await h.keys("pre/")) == ["pre/a", "pre/d/b", "pre/dir/", "pre/new"]

    run_fs(body, prefix="pre")


def test_read_only_mount_refuses_every_write(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"data")
        await h.put("d/x", b"")
        f = await h.fs.lookup(ROOT_INO, "f")
        assert await h.read_file(f) == b"data"
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: h.fs.create(ROOT_INO, "n", 0o644, WO | os.O_CREAT, 0, 0),
            lambda: h.fs.open(f.ino, WO),
            lambda: h.fs.open(f.ino, RW),
            lambda: h.fs.mkdir(ROOT_INO, "m", 0o755, 0, 0),
            lambda: h.fs.rmdir(ROOT_INO, "d"),
            lambda: h.fs.unlink(ROOT_INO, "f"),
            lambda: h.fs.rename(ROOT_INO, "f", ROOT_INO, "g", 0),
            lambda: h.fs.symlink(ROOT_INO, "l", "f", 0, 0),
            lambda: h.fs.setattr(f.ino, mode=0o600),
            lambda: h.fs.setattr(f.ino, size=0),
        ]
        for attempt in attempts:
            with pytest.raises(ReadOnly):
                await attempt()
        assert sorted(await h.keys()) == ["d/x", "f"]
        assert h.store.calls["put"] == 2

    run_fs(body, read_only=True)


# --- failures and draining ---------------------------------------------------------------


def test_upload_failure_surfaces_and_file_stays_dirty(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "f", 0o644, WO | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"precious")
        await h.store.delete_bucket(BUCKET)  # behind the filesystem's back
        await h.fs.flush(fh)  # close does not wait: the upload fails in the background
        with pytest.raises(BucketfsError):
            await h.fs.fsync(fh)  # fsync waits, and reports the failure
        assert node.dirty
        await h.fs.release(fh)  # logs, keeps the data
        assert node.dirty
        assert h.fs.table.get(node.ino) is node
        assert await h.fs.drain() == [f"{BUCKET}/f"]
        await h.store.create_bucket(BUCKET)
        assert await h.fs.drain() == []
        assert not node.dirty
        assert await h.body("f") == b"precious"

    run_fs(body)


def test_key_the_store_rejects_fails_flush_and_keeps_data(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        # five 250-byte segments make a key over S3's 1,024-byte limit
        await h.put("/".join(["d" * 250] * 4) + "/x", b"")
        parent = await h.lookup("/".join(["d" * 250] * 4))
        fh, node = await h.fs.create(parent.ino, "e" * 250, 0o644, WO | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"data")
        with pytest.raises(BucketfsError) as info:
            await h.fs.fsync(fh)
        assert info.value.errno == errno.EINVAL
        assert node.dirty
        assert await h.fs.read(fh, 0, 10) == b"data"
        await h.fs.release(fh)

    run_fs(body)


def test_drain_uploads_every_dirty_file(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        handles = []
        for i, parent in enumerate([ROOT_INO, ROOT_INO, d.ino]):
            fh, _node = await h.fs.create(parent, f"f{i}", 0o644, WO | os.O_CREAT, 0, 0)
            await h.fs.write(fh, 0, f"content {i}".encode())
            handles.append(fh)
        await h.put("clean", b"c")
        clean = await h.fs.lookup(ROOT_INO, "clean")
        fh, _keep = await h.fs.open(clean.ino, RW)
        await h.fs.write(fh, 0, b"C")
        handles.append(fh)
        puts = h.store.calls["put"]
        assert await h.fs.drain() == []
        assert h.store.calls["put"] == puts + 4
        assert await h.body("f0") == b"content 0"
        assert await h.body("f1") == b"content 1"
        assert await h.body("d/f2") == b"content 2"
        assert await h.body("clean") == b"C"
        assert await h.fs.drain() == []
        assert h.store.calls["put"] == puts + 4
        for fh in handles:
            await h.fs.release(fh)
        assert h.store.calls["put"] == puts + 4

    run_fs(body)


def test_getxattr_etag_and_root_pid(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x")
        await h.settle()
        assert node.etag is not None
        assert await h.fs.getxattr(node.ino, "user.bucketfs.etag") == node.etag.encode()
        assert await h.fs.getxattr(ROOT_INO, "user.bucketfs.pid") == str(os.getpid()).encode()
        assert "user.bucketfs.etag" in await h.fs.listxattr(node.ino)

    run_fs(body)


def test_lookups_after_a_listing_expired_list_a_small_directory_again(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(3):
            await h.put(f"d/f{i}", b"x")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.ls(d.ino)
        h.store.calls.clear()
        for name in ("new1", "new2", "new3"):  # a loop creating files: each name is new
            with pytest.raises(NoEntry):
                await h.fs.lookup(d.ino, name)
        assert h.store.calls["list_page"] == 3  # dir_timeout 0: one LIST per lookup, no HEAD
        assert h.store.calls["head"] == 0
        await h.put("d/other", b"yy")  # another client's file is seen at the next listing
        assert (await h.fs.lookup(d.ino, "other")).size == 2

    run_fs(body, negative_timeout=0, dir_timeout=0)


def test_a_large_directory_is_not_listed_again_for_one_lookup(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bucketfs.core.fs.RELIST_ENTRIES", 2)

    async def body(h: Harness) -> None:
        for i in range(3):
            await h.put(f"d/f{i}", b"x")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.ls(d.ino)
        h.store.calls.clear()
        with pytest.raises(NoEntry):
            await h.fs.lookup(d.ino, "new")
        assert h.store.calls["head"] == 1  # the name itself, and a LIST of `new/` only
        assert h.store.calls["list_page"] == 1

    run_fs(body, negative_timeout=0, dir_timeout=0)


def test_o_excl_asks_the_server_even_with_a_cached_listing(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.ls(ROOT_INO)  # the root's listing is cached (dir_timeout)
        await h.put("lock", b"theirs")  # another client takes the lock meanwhile
        with pytest.raises(FileExists):
            await h.fs.create(ROOT_INO, "lock", 0o644, WO | os.O_CREAT | os.O_EXCL, 0, 0)
        assert await h.body("lock") == b"theirs"

    run_fs(body, dir_timeout=3600)
