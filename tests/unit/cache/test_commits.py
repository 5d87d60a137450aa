"""Index commits per kernel request, and what a crash leaves (docs/cache.md, "Work per kernel
request"; issue 17 item 4): a new file is recorded by its first FLUSH in one commit (row,
size, blocks, metadata), RELEASE commits nothing after it; a crash before that FLUSH loses
the file and leaves no row and no data file of it; everything closed survives.

A "crash" here is a run cancelled without draining the write-back (the cache is closed as a
killed daemon's would be left: nothing uploaded, nothing recorded that was not already)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from bucketfs.core.fs import BucketFS
from bucketfs.core.nodes import ROOT_INO
from tests.support.harness import BUCKET, Harness, RunFs

WO = os.O_WRONLY | os.O_CREAT
KEPT = 3600.0  # writeback_delay: nothing is uploaded unless something waits for it


class Commits:
    """Counts the index's commits: a COMMIT, or a change outside a transaction."""

    def __init__(self) -> None:
        self.count = 0
        self._in_transaction = False

    def trace(self, sql: str) -> None:
        head = sql.lstrip()[:6].upper()
        if head == "BEGIN":
            self._in_transaction = True
        elif head in ("COMMIT", "ROLLBA"):
            self._in_transaction = False
            self.count += head == "COMMIT"
        elif head in ("INSERT", "UPDATE", "DELETE") and not self._in_transaction:
            self.count += 1


@contextmanager
def counting(fs: BucketFS) -> Iterator[Commits]:
    commits = Commits()
    db = fs.data.cache.index.db._db
    db.set_trace_callback(commits.trace)
    try:
        yield commits
    finally:
        db.set_trace_callback(None)


def test_a_created_small_file_costs_one_commit_at_its_flush(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fs = h.fs
        await h.write_file("warm", b"x")  # the first file makes the data files ahead
        with counting(fs) as commits:
            fh, node = await fs.create(ROOT_INO, "f", 0o644, WO, 0, 0)
            assert await fs.write(fh, 0, b"y" * 1000) == 1000
            assert commits.count == 0  # neither the CREATE nor the WRITE commits
            await fs.flush(fh)
            assert commits.count == 1
            await fs.release(fh)
            assert commits.count == 1  # RELEASE commits nothing new
        row = fs.data.cache.index.find(BUCKET, "f")
        assert row is not None
        assert row.dirty
        assert row.size == 1000
        assert row.meta["metadata"]["mode"] == str(0o100644)
        assert list(fs.data.cache.index.blocks(row.id)) == [(0, True)]
        assert node.cached is not None
        assert node.cached.in_index

    run_fs(body, writeback_delay=KEPT)


def test_touch_and_several_flushes_and_writes_after_a_flush(run_fs: RunFs) -> None:
    """`touch` (no write): one commit. Several descriptors (a shell's `>` closes a duplicate
    first): the first FLUSH records the file; a write after it commits as any write does,
    and a FLUSH then records the attributes that write changed (its mtime), so RELEASE
    still commits nothing."""

    async def body(h: Harness) -> None:
        fs = h.fs
        await h.write_file("warm", b"x")
        with counting(fs) as commits:
            fh, _node = await fs.create(ROOT_INO, "touched", 0o644, WO, 0, 0)
            await fs.flush(fh)
            await fs.release(fh)
            assert commits.count == 1
        with counting(fs) as commits:
            fh, _node = await fs.create(ROOT_INO, "dup", 0o644, WO, 0, 0)
            await fs.flush(fh)  # the duplicate's close
            assert commits.count == 1
            await fs.write(fh, 0, b"v\n")
            assert commits.count == 2
            await fs.flush(fh)
            await fs.release(fh)
            assert commits.count <= 3
        cache = fs.data.cache
        row = cache.index.find(BUCKET, "dup")
        assert row is not None
        assert row.size == 2
        assert list(cache.index.blocks(row.id)) == [(0, True)]

    run_fs(body, writeback_delay=KEPT)


def test_fsync_before_close_records_and_uploads(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fs = h.fs
        fh, node = await fs.create(ROOT_INO, "synced", 0o644, WO, 0, 0)
        await fs.write(fh, 0, b"durable")
        await fs.fsync(fh)
        assert await h.store.get(BUCKET, "synced") == b"durable"
        assert node.cached is not None
        assert node.cached.in_index
        await fs.flush(fh)
        await fs.release(fh)

    run_fs(body, writeback_delay=KEPT)


def test_a_small_files_upload_is_recorded_in_one_commit(run_fs: RunFs) -> None:
    """The server's answer to a small file's PUT (the new base ETag) and its clean blocks go
    in one commit (`BlockCache.mark_clean`), not one each (`stored`, then `mark_clean`); what
    is recorded is what both recorded."""

    async def body(h: Harness) -> None:
        fs = h.fs
        fh, node = await fs.create(ROOT_INO, "up", 0o644, WO, 0, 0)
        await fs.write(fh, 0, b"x" * 1000)
        await fs.flush(fh)
        with counting(fs) as commits:
            await fs.fsync(fh)  # uploads now
            assert commits.count == 1
        await fs.release(fh)
        info = await h.store.head(BUCKET, "up")
        row = fs.data.cache.index.find(BUCKET, "up")
        assert row is not None
        assert not row.dirty
        assert row.base_etag == info.etag
        assert row.base_size == 1000
        assert row.meta["base_key"] == "up"
        assert node.cached is not None
        assert node.cached.base_etag == info.etag

    run_fs(body, writeback_delay=KEPT)


def test_a_crash_before_the_first_flush_loses_only_that_file(run_fs: RunFs) -> None:
    """Open, written, never closed: gone after a crash, with no row and no data file left
    (its id may be given out again, and the new file must not see its bytes). Closed, or
    renamed while open (a rename records the file first), or fsynced: kept."""
    ids: dict[str, int] = {}
    handles: dict[str, int] = {}

    async def first(h: Harness) -> None:
        fs = h.fs
        await h.write_file("closed", b"closed bytes")
        for name in ("open", "renamed", "synced"):
            fh, node = await fs.create(ROOT_INO, name, 0o644, WO, 0, 0)
            await fs.write(fh, 0, name.encode() * 100)
            assert node.cached is not None
            ids[name], handles[name] = node.cached.id, fh
        await fs.rename(ROOT_INO, "renamed", ROOT_INO, "renamed-to", 0)
        await fs.fsync(handles["synced"])
        assert await h.store.get(BUCKET, "synced") == b"synced" * 100
        assert (fs.data.cache.root / "data" / str(ids["open"])).stat().st_size == 400
        # the daemon dies with the three handles open

    async def second(h: Harness) -> None:
        fs = h.fs
        cache = fs.data.cache
        assert cache.index.find(BUCKET, "open") is None
        assert not (cache.root / "data" / str(ids["open"])).exists()
        await h.settle()
        # (each run has a new store: what the first one uploaded, "synced", is not in it)
        assert await h.keys() == ["closed", "renamed-to"]
        assert await h.body("closed") == b"closed bytes"
        assert await h.body("renamed-to") == b"renamed" * 100
        # new files after the crash (ids the lost file had may come again): their own bytes
        for n in range(4):
            await h.write_file(f"new{n}", b"n")
        await fs.data.flush_under(BUCKET, "")
        for n in range(4):
            assert await h.body(f"new{n}") == b"n"

    run_fs(first, writeback_delay=KEPT)
    run_fs(second, writeback_delay=KEPT)


def test_a_crash_right_after_close_keeps_the_file_and_its_attributes(run_fs: RunFs) -> None:
    """FLUSH returned (so `close` did) but the RELEASE never came: the content, the size and
    what was set on the descriptor before close (mode, times) are in the index."""

    async def first(h: Harness) -> None:
        fs = h.fs
        fh, node = await fs.create(ROOT_INO, "f", 0o600, WO, 0, 0)
        await fs.write(fh, 0, b"a" * 5000)
        await fs.setattr(node.ino, mode=0o100640, mtime=1_000_000_000.0)
        await fs.flush(fh)
        # killed before the RELEASE

    async def second(h: Harness) -> None:
        node = await h.lookup("f")
        assert (node.size, node.mode) == (5000, 0o640)
        assert await h.body("f") == b"a" * 5000
        info = await h.head("f")
        assert info.metadata["mtime"] == "1000000000"

    run_fs(first, writeback_delay=KEPT)
    run_fs(second, writeback_delay=KEPT)


def test_a_write_into_a_cached_clean_file_is_recorded_before_it_returns(run_fs: RunFs) -> None:
    """Only a new file waits for its FLUSH: in a file with clean blocks, a crash after the
    write (no close) must find the block dirty, never a clean block holding new bytes."""

    async def first(h: Harness) -> None:
        fs = h.fs
        await h.put("old", b"o" * 3000)
        node = await h.lookup("old")
        assert await h.read_file(node) == b"o" * 3000  # its block is cached, clean
        fh, _keep = await fs.open(node.ino, os.O_WRONLY)
        await fs.write(fh, 10, b"NEW")
        cache = fs.data.cache
        row = cache.index.find(BUCKET, "old")
        assert row is not None
        assert row.dirty
        assert list(cache.index.blocks(row.id)) == [(0, True)]

    async def second(h: Harness) -> None:
        assert await h.body("old") == b"o" * 10 + b"NEW" + b"o" * 2987

    run_fs(first, writeback_delay=KEPT)
    run_fs(second, writeback_delay=KEPT)


def test_an_unlinked_new_file_never_closed_leaves_nothing(run_fs: RunFs) -> None:
    async def first(h: Harness) -> None:
        fs = h.fs
        fh, node = await fs.create(ROOT_INO, "tmp", 0o644, WO, 0, 0)
        await fs.write(fh, 0, b"scratch")
        await fs.unlink(ROOT_INO, "tmp")
        assert await fs.read(fh, 0, 100) == b"scratch"  # the handle still reads it
        await fs.flush(fh)
        assert node.cached is not None
        assert not node.cached.in_index

    async def second(h: Harness) -> None:
        assert h.fs.data.cache.index.dirty_files() == []
        assert await h.keys() == []

    run_fs(first, writeback_delay=KEPT)
    run_fs(second, writeback_delay=KEPT)


def test_a_readers_close_commits_nothing(run_fs: RunFs) -> None:
    """A FLUSH of a read-only descriptor promises nothing about a writer's bytes: no commit,
    and a new file another descriptor writes stays out of the index until its own FLUSH."""

    async def body(h: Harness) -> None:
        fs = h.fs
        fh, node = await fs.create(ROOT_INO, "f", 0o644, WO, 0, 0)
        await fs.write(fh, 0, b"abc")
        reader, _keep = await fs.open(node.ino, os.O_RDONLY)
        with counting(fs) as commits:
            await fs.flush(reader)
            await fs.release(reader)
            assert commits.count == 0
        assert node.cached is not None
        assert not node.cached.in_index
        await fs.flush(fh)
        await fs.release(fh)
        assert node.cached.in_index

    run_fs(body, writeback_delay=KEPT)
