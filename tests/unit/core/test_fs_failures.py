"""`BucketFS` without a kernel, over memory: uploads that fail, keys the store rejects, and
draining at unmount.

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it.
"""

from __future__ import annotations

import errno
import os

import pytest

from bucketfs.core.nodes import ROOT_INO
from bucketfs.errors import (
    BucketfsError,
)
from tests.support.harness import BUCKET, Harness, RunFs

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


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
        await h.fs.markers.flush()  # its marker waits for writeback_delay: not counted below
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
