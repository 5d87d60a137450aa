"""`BucketFS` without a kernel, over memory: writes, truncation, O_TRUNC/O_EXCL, unlink while open,
and what reaches the bucket.

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio

from bucketfs.core.nodes import ROOT_INO, Node
from bucketfs.errors import (
    BucketfsError,
    FileExists,
    NoEntry,
)
from tests.support.harness import Harness, RunFs, data_of

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


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


class _Steps(trio.abc.Instrument):
    """Counts the steps of one task (each step after the first is a turn of trio's loop)."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


def test_creating_and_writing_a_small_file_takes_no_turn_of_the_loop(run_fs: RunFs) -> None:
    """create, write, flush and release of a new small file run without yielding to trio's
    loop (each turn costs the FUSE thread ~30 us: one per written file was the file's lock)."""

    async def body(h: Harness) -> None:
        steps = _Steps()
        steps.task = trio.lowlevel.current_task()
        trio.lowlevel.add_instrument(steps)
        try:
            for i in range(5):
                await h.write_file(f"f{i}", b"x" * 100)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps == 0
        assert await h.body("f4") == b"x" * 100

    run_fs(body)
