"""`BucketFS` without a kernel, over memory: reads anywhere in an object, fewer GETs for sequential
reads, and what open sees.

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import trio

from bucketfs.core import heads as heads_module
from bucketfs.core.nodes import ROOT_INO
from bucketfs.errors import (
    IsADirectory,
    NoEntry,
)
from tests.support.harness import BUCKET, Harness, RunFs, data_of, reader_of

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


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
        assert h.store.calls["get"] + h.store.calls["get_stream"] == reader_of(h.fs).gets

    run_fs(body)


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
        await trio.to_thread.run_sync(time.sleep, heads_module.OPEN_REUSES_HEAD * 2)
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
