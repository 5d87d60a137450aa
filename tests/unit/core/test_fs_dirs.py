"""`BucketFS` without a kernel, over memory: directories, unlink, symlinks, and mounts of another
shape (all buckets, a prefix, read-only).

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable

import pytest

from bucketfs.core.fs import BucketFS
from bucketfs.core.nodes import ROOT_INO, Kind
from bucketfs.errors import (
    DirectoryNotEmpty,
    FileExists,
    InvalidArgument,
    IsADirectory,
    NoEntry,
    NotADirectory,
    NotPermitted,
    ReadOnly,
)
from tests.support.harness import BUCKET, Harness, RunFs

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


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
        await h.put("dir/x", b"")
        await h.fs.unlink(ROOT_INO, "a")  # never looked up before
        d = await h.lookup("d")
        await h.lookup("d/b")
        await h.fs.unlink(d.ino, "b")
        assert await h.keys() == ["dir/x"]
        with pytest.raises(NoEntry):
            await h.fs.unlink(ROOT_INO, "a")
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "a")
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
