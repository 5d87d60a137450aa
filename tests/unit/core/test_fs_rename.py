"""`BucketFS.rename` over the memory backend: files, directories, and their refusals.

A rename is checked in the bucket (every key moved, nothing left under the old name) and in the
namespace (the old name is gone, the new one resolves, known inodes keep their numbers).
"""

from __future__ import annotations

import os
import stat

import pytest

from bucketfs.core.mutations import RENAME_EXCHANGE, RENAME_NOREPLACE
from bucketfs.core.nodes import ROOT_INO, Kind
from bucketfs.errors import (
    CrossDevice,
    DirectoryNotEmpty,
    FileExists,
    InvalidArgument,
    IsADirectory,
    NoEntry,
    NotADirectory,
    NotPermitted,
    NotSupported,
)
from tests.support.harness import Harness, RunFs

WO = os.O_WRONLY | os.O_CREAT


def test_rename_file(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a", b"content", mode=str(stat.S_IFREG | 0o600), uid="42")
        await h.put("d/", b"")
        node = await h.fs.lookup(ROOT_INO, "a")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.fs.rename(ROOT_INO, "a", d.ino, "b", 0)
        assert sorted(await h.keys()) == ["d/", "d/b"]
        assert await h.body("d/b") == b"content"
        info = await h.head("d/b")
        assert info.metadata["mode"] == str(stat.S_IFREG | 0o600)
        assert info.metadata["uid"] == "42"
        assert node.key == "d/b"
        assert await h.lookup("d/b") is node  # the inode number survives
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "a")
        assert await h.read_file(node) == b"content"

    run_fs(body)


def test_rename_file_replaces_the_target(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("src", b"new")
        await h.put("dst", b"old old old")
        old = await h.fs.lookup(ROOT_INO, "dst")
        await h.fs.rename(ROOT_INO, "src", ROOT_INO, "dst", 0)
        assert await h.keys() == ["dst"]
        assert await h.body("dst") == b"new"
        assert old.unlinked
        node = await h.fs.lookup(ROOT_INO, "dst")
        assert node is not old
        assert await h.read_file(node) == b"new"

    run_fs(body)


def test_rename_noreplace(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("src", b"s")
        await h.put("dst", b"d")  # not looked up: the core must ask the server
        with pytest.raises(FileExists):
            await h.fs.rename(ROOT_INO, "src", ROOT_INO, "dst", RENAME_NOREPLACE)
        assert await h.body("dst") == b"d"
        assert await h.body("src") == b"s"
        await h.fs.rename(ROOT_INO, "src", ROOT_INO, "free", RENAME_NOREPLACE)
        assert sorted(await h.keys()) == ["dst", "free"]

    run_fs(body)


def test_rename_exchange_is_not_supported(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a", b"a")
        await h.put("b", b"b")
        with pytest.raises(NotSupported):
            await h.fs.rename(ROOT_INO, "a", ROOT_INO, "b", RENAME_EXCHANGE)
        assert (await h.body("a"), await h.body("b")) == (b"a", b"b")

    run_fs(body)


def test_rename_missing_source(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(NoEntry):
            await h.fs.rename(ROOT_INO, "ghost", ROOT_INO, "x", 0)

    run_fs(body)


def test_rename_kind_mismatches(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("file", b"f")
        await h.put("dir/", b"")
        await h.put("full/x", b"x")
        await h.put("empty/", b"")
        with pytest.raises(IsADirectory):
            await h.fs.rename(ROOT_INO, "file", ROOT_INO, "dir", 0)
        with pytest.raises(NotADirectory):
            await h.fs.rename(ROOT_INO, "dir", ROOT_INO, "file", 0)
        with pytest.raises(DirectoryNotEmpty):
            await h.fs.rename(ROOT_INO, "dir", ROOT_INO, "full", 0)
        assert sorted(await h.keys()) == ["dir/", "empty/", "file", "full/x"]
        await h.fs.rename(ROOT_INO, "dir", ROOT_INO, "empty", 0)  # an empty dir is replaced
        assert sorted(await h.keys()) == ["empty/", "file", "full/x"]
        assert (await h.fs.lookup(ROOT_INO, "empty")).kind is Kind.DIR
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "dir")

    run_fs(body)


NESTED = {
    "d/": b"",
    "d/a": b"a",
    "d/sub/": b"",
    "d/sub/b": b"bb",
    "d/sub/deep/c": b"ccc",
    "d/prefixonly/e": b"e",
}


def test_rename_directory_moves_every_key(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for key, data in NESTED.items():
            await h.put(key, data, mode=str(stat.S_IFDIR | 0o700) if key.endswith("/") else "")
        await h.put("dx", b"sibling with a common name prefix")
        await h.put("d2/z", b"z")
        b = await h.lookup("d/sub/b")
        sub = await h.lookup("d/sub")
        await h.fs.rename(ROOT_INO, "d", ROOT_INO, "e", 0)
        keys = await h.keys()
        assert sorted(keys) == sorted(["d2/z", "dx"] + ["e" + k[1:] for k in NESTED])
        for key, data in NESTED.items():
            assert await h.body("e" + key[1:]) == data
        assert (await h.head("e/sub/")).metadata["mode"] == str(stat.S_IFDIR | 0o700)
        assert await h.keys("d/") == []
        # known inodes follow the move
        assert (sub.key, b.key) == ("e/sub/", "e/sub/b")
        assert await h.lookup("e/sub/b") is b
        assert await h.read_file(b) == b"bb"
        assert sorted(await h.ls((await h.lookup("e")).ino)) == ["a", "prefixonly", "sub"]
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "d")
        assert sorted(await h.ls()) == ["d2", "dx", "e"]

    run_fs(body)


def test_rename_directory_with_more_keys_than_a_listing_page(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(1100):
            await h.put(f"many/{i // 100}/f{i:04d}", b"x")
        await h.fs.rename(ROOT_INO, "many", ROOT_INO, "moved", 0)
        assert await h.keys("many/") == []
        assert len(await h.keys("moved/")) == 1100

    run_fs(body)


def test_rename_directory_into_itself(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/sub/f", b"f")
        sub = await h.lookup("d/sub")
        with pytest.raises(InvalidArgument):
            await h.fs.rename(ROOT_INO, "d", sub.ino, "inner", 0)
        d = await h.lookup("d")
        with pytest.raises(InvalidArgument):
            await h.fs.rename(ROOT_INO, "d", d.ino, "d", 0)
        assert await h.keys() == ["d/sub/f"]

    run_fs(body)


def test_rename_directory_holding_a_file_being_written(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        fh, node = await h.fs.create(d.ino, "pending", 0o644, WO, 0, 0)
        await h.fs.write(fh, 0, b"late")
        await h.fs.rename(ROOT_INO, "d", ROOT_INO, "e", 0)
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert node.key == "e/pending"
        assert sorted(await h.keys()) == ["e/", "e/pending"]
        assert await h.body("e/pending") == b"late"

    run_fs(body)


def test_rename_across_buckets_is_cross_device(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for name in ("one", "two"):
            await h.store.create_bucket(name)
        await h.store.put("one", "f", b"f")
        one = await h.fs.lookup(ROOT_INO, "one")
        two = await h.fs.lookup(ROOT_INO, "two")
        with pytest.raises(CrossDevice):
            await h.fs.rename(one.ino, "f", two.ino, "f", 0)
        with pytest.raises(NotPermitted):
            await h.fs.rename(ROOT_INO, "one", ROOT_INO, "three", 0)
        assert await h.store.keys("one") == ["f"]
        assert await h.store.keys("two") == []
        # within one bucket of an all-buckets mount a rename is ordinary
        await h.fs.rename(one.ino, "f", one.ino, "g", 0)
        await h.settle()  # the old name's delete is deferred (deletes.py)
        assert await h.store.keys("one") == ["g"]

    run_fs(body, bucket=None)


def test_rename_file_still_being_written(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "draft", 0o644, WO, 0, 0)
        await h.fs.write(fh, 0, b"first ")
        await h.fs.rename(ROOT_INO, "draft", ROOT_INO, "final", 0)
        await h.fs.write(fh, 6, b"second")
        assert await h.keys() == []
        await h.fs.flush(fh)
        assert await h.keys() == []  # uploaded on release, not before
        await h.fs.release(fh)
        assert await h.keys() == ["final"]
        assert await h.body("final") == b"first second"
        assert node.key == "final"

    run_fs(body)


def test_rename_of_a_modified_file_not_yet_flushed(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"old")
        node = await h.fs.lookup(ROOT_INO, "f")
        fh, _keep = await h.fs.open(node.ino, os.O_RDWR)
        await h.fs.write(fh, 0, b"NEW")
        await h.fs.rename(ROOT_INO, "f", ROOT_INO, "g", 0)
        assert await h.keys() == ["g"]
        assert await h.body("g") == b"NEW"
        await h.fs.write(fh, 3, b"!")
        await h.fs.release(fh)
        assert await h.keys() == ["g"]
        assert await h.body("g") == b"NEW!"

    run_fs(body)


def test_rename_symlink(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        link = await h.fs.symlink(ROOT_INO, "ln", "target/path", 0, 0)
        await h.fs.rename(ROOT_INO, "ln", ROOT_INO, "ln2", 0)
        assert await h.keys() == ["ln2"]
        assert stat.S_ISLNK(int((await h.head("ln2")).metadata["mode"]))
        assert await h.fs.readlink(link.ino) == "target/path"

    run_fs(body)


def test_rename_onto_itself_is_a_no_op(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("same", b"x")
        await h.fs.rename(ROOT_INO, "same", ROOT_INO, "same", 0)
        assert await h.keys() == ["same"]
        assert h.store.calls["copy"] == 0

    run_fs(body)


def test_a_file_open_under_a_renamed_directory_still_reads_its_bytes(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        blob = os.urandom(3 * 1024 * 1024)
        await h.put("d/f", blob)
        d = await h.fs.lookup(ROOT_INO, "d")
        f = await h.fs.lookup(d.ino, "f")
        fh, _keep = await h.fs.open(f.ino, os.O_RDONLY)
        assert await h.fs.read(fh, 0, 100) == blob[:100]  # block 0 is now cached
        await h.fs.rename(ROOT_INO, "d", ROOT_INO, "e", 0)
        assert await h.fs.read(fh, 0, 100) == blob[:100]
        assert await h.fs.read(fh, 2 * 1024 * 1024, 100) == blob[2 * 1024 * 1024 :][:100]
        await h.fs.release(fh)
        assert await h.keys() == ["e/f"]

    run_fs(body)


def test_rename_of_a_file_another_client_replaced_since_we_wrote_it(run_fs: RunFs) -> None:
    """Our clean cached copy is of the older object: the rename moves the server's (found
    by tests/model: a file written here, replaced by another client with an empty object,
    which the kernel never reads, then renamed: the copy's If-Match named our old ETag)."""

    async def body(h: Harness) -> None:
        await h.write_file("a", b"ours")
        await h.settle()
        await h.put("a", b"")
        node = await h.fs.lookup(ROOT_INO, "a")  # the kernel's lookup: a HEAD, nothing read
        assert node.size == 0
        await h.fs.rename(ROOT_INO, "a", ROOT_INO, "b", 0)
        assert await h.keys() == ["b"]
        assert await h.body("b") == b""
        assert await h.read_file(node) == b""

    run_fs(body, attr_timeout=0.0, entry_timeout=0.0)


@pytest.mark.parametrize("target", ["symlink", "file"])
@pytest.mark.parametrize("then", ["unlink", "rename"])
def test_a_pending_file_renamed_onto_a_name_then_moved_on_leaves_no_old_object(
    run_fs: RunFs, target: str, then: str
) -> None:
    """A file not uploaded yet renamed onto an existing name was to replace that name's object
    by its upload; unlinked or renamed away before it, the old object must go all the same
    (found by tests/model: `ln -s y y; echo 1 > x; mv x y; rm y` showed `y -> y` again)."""

    async def body(h: Harness) -> None:
        if target == "symlink":
            await h.fs.symlink(ROOT_INO, "y", "y", 0, 0)
        else:
            await h.write_file("y", b"old")
            await h.settle()
        fh, _node = await h.fs.create(ROOT_INO, "x", 0o644, WO, 0, 0)
        await h.fs.write(fh, 0, b"new")
        await h.fs.release(fh)  # its upload waits for the write-back delay
        await h.fs.rename(ROOT_INO, "x", ROOT_INO, "y", 0)
        if then == "unlink":
            await h.fs.unlink(ROOT_INO, "y")
        else:
            await h.fs.rename(ROOT_INO, "y", ROOT_INO, "z", 0)
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "y")
        assert await h.keys() == ([] if then == "unlink" else ["z"])
        if then == "rename":
            assert await h.body("z") == b"new"

    run_fs(body, writeback_delay=60.0, attr_timeout=0.0, entry_timeout=0.0, negative_timeout=0.0)


def test_a_new_file_renamed_before_its_upload_gets_the_type_of_its_new_name(
    run_fs: RunFs,
) -> None:
    """rsync (and editors) write `.page.html.XXXXXX` and rename it: the upload carries the type
    guessed from the name it lands under, not from the temporary one; a type that was set is
    kept."""

    async def body(h: Harness) -> None:
        await h.write_file(".page.html.Ab12Cd", b"<p>")
        await h.fs.rename(ROOT_INO, ".page.html.Ab12Cd", ROOT_INO, "page.html", 0)
        typed = await h.write_file(".data.bin.Xy34Zw", b"{}")
        await h.fs.setxattr(typed.ino, "user.bucketfs.content_type", b"application/json")
        await h.fs.rename(ROOT_INO, ".data.bin.Xy34Zw", ROOT_INO, "data.bin", 0)
        await h.settle()
        assert await h.keys() == ["data.bin", "page.html"]
        assert (await h.head("page.html")).content_type == "text/html"
        assert (await h.head("data.bin")).content_type == "application/json"

    run_fs(body, writeback_delay=5.0)
