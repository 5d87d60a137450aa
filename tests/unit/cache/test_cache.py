"""The write-back block cache through BucketFS on the memory backend: crash recovery, conflicts,
server-side copies of unchanged ranges, abandoned stale uploads, eviction, throttling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from bucketfs.cache import datafiles
from bucketfs.cache.datafiles import DataFiles
from bucketfs.cache.store import BlockCache
from bucketfs.cache.writeback import conflict_name
from bucketfs.core.fs import BucketFS
from bucketfs.core.nodes import ROOT_INO
from bucketfs.errors import CacheError
from tests.support.harness import BUCKET, CountingBackend, Harness, RunFs

MiB = 1 << 20
RW = os.O_RDWR


class PartCounting(CountingBackend):
    async def upload_part(self, *args: Any, **kwargs: Any) -> str:
        self.calls["upload_part"] += 1
        return await super().upload_part(*args, **kwargs)

    async def upload_part_copy(self, *args: Any, **kwargs: Any) -> str:
        self.calls["upload_part_copy"] += 1
        return await super().upload_part_copy(*args, **kwargs)


def test_conflict_name_keeps_the_extension() -> None:
    when = 1795300000.0
    assert conflict_name("dir/report.txt", when) == "dir/report.conflict-20261121T222640Z.txt"
    assert conflict_name("Makefile", when) == "Makefile.conflict-20261121T222640Z"
    assert conflict_name("a/.hidden", when) == "a/.hidden.conflict-20261121T222640Z"


def test_dirty_files_survive_a_crash_and_are_uploaded_by_the_next_mount(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    store = CountingBackend(0.0)
    opts: Any = {"uid": 0, "gid": 0, "writeback_delay": 3600.0}

    async def first_life() -> None:
        from bucketfs.core.fs import FsOptions

        await store.create_bucket(BUCKET)
        fs = BucketFS(
            store, bucket=BUCKET, prefix="", options=FsOptions(**opts), cache_dir=cache_dir
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            fh, _node = await fs.create(ROOT_INO, "precious", 0o640, RW | os.O_CREAT, 0, 0)
            await fs.write(fh, 0, b"closed but not uploaded")
            await fs.flush(fh)
            await fs.release(fh)
            # the daemon dies here: no drain, no unmount
            nursery.cancel_scope.cancel()
        assert await store.keys(BUCKET) == []

    async def second_life() -> None:
        from bucketfs.core.fs import FsOptions

        fs = BucketFS(
            store, bucket=BUCKET, prefix="", options=FsOptions(uid=0, gid=0), cache_dir=cache_dir
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            # visible before it is uploaded, with its attributes
            node = await fs.lookup(ROOT_INO, "precious")
            assert node.size == len(b"closed but not uploaded")
            assert node.mode == 0o640
            with trio.fail_after(60):
                await fs.data.writeback.wait_idle()
            assert await store.get(BUCKET, "precious") == b"closed but not uploaded"
            nursery.cancel_scope.cancel()

    trio.run(first_life, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(second_life, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_concurrent_change_by_another_client_is_kept_and_ours_saved_aside(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("doc.txt", b"original")
        node = await h.fs.lookup(ROOT_INO, "doc.txt")
        fh, _keep = await h.fs.open(node.ino, RW)
        await h.fs.write(fh, 0, b"OURS....")
        await h.put("doc.txt", b"theirs, written meanwhile")  # another client
        await h.fs.flush(fh)
        await h.fs.release(fh)
        await h.settle()
        assert await h.body("doc.txt") == b"theirs, written meanwhile"
        keys = await h.keys()
        conflicts = [k for k in keys if k.startswith("doc.conflict-") and k.endswith(".txt")]
        assert len(conflicts) == 1
        assert await h.body(conflicts[0]) == b"OURS...."
        # the name shows theirs again through the mount
        again = await h.fs.lookup(ROOT_INO, "doc.txt")
        assert await h.read_file(again) == b"theirs, written meanwhile"

    run_fs(body)


def test_a_new_file_does_not_overwrite_one_another_client_created(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, _node = await h.fs.create(ROOT_INO, "new.txt", 0o644, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"mine")
        await h.put("new.txt", b"someone else's")
        await h.fs.flush(fh)
        await h.fs.release(fh)
        await h.settle()
        assert await h.body("new.txt") == b"someone else's"
        assert any(k.startswith("new.conflict-") for k in await h.keys())

    run_fs(body)


def test_renaming_a_new_file_over_an_existing_one_is_no_conflict(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.write_file("target", b"old target")
        await h.settle()
        fh, _node = await h.fs.create(ROOT_INO, "tmp", 0o644, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"new content")
        await h.fs.rename(ROOT_INO, "tmp", ROOT_INO, "target", 0)  # as editors save
        await h.fs.flush(fh)
        await h.fs.release(fh)
        await h.settle()
        assert await h.keys() == ["target"]
        assert await h.body("target") == b"new content"

    run_fs(body)


def test_an_edit_in_a_large_object_copies_unchanged_parts_on_the_server(tmp_path: Path) -> None:
    store = PartCounting(0.0)
    size = 40 * MiB
    data = bytearray(os.urandom(size))

    async def main() -> None:
        from bucketfs.core.fs import FsOptions

        await store.create_bucket(BUCKET)
        await store.put(BUCKET, "big", bytes(data))
        opts = FsOptions(uid=0, gid=0, part_size=8 * MiB)
        fs = BucketFS(store, bucket=BUCKET, prefix="", options=opts, cache_dir=tmp_path / "c")
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            node = await fs.lookup(ROOT_INO, "big")
            fh, _keep = await fs.open(node.ino, RW)
            await fs.write(fh, 20 * MiB + 5, b"EDIT")
            await fs.flush(fh)
            await fs.release(fh)
            store.calls.clear()
            with trio.fail_after(60):
                await fs.data.writeback.wait_idle()
            assert store.calls["upload_part"] == 1
            assert store.calls["upload_part_copy"] == 4
            # only the rest of the edited part is fetched (the blocks before and after the
            # edited one: two ranged GETs), never the whole object
            assert store.calls["get"] + store.calls["get_stream"] <= 2
            nursery.cancel_scope.cancel()
        data[20 * MiB + 5 : 20 * MiB + 9] = b"EDIT"
        assert await store.get(BUCKET, "big") == bytes(data)

    trio.run(main)  # real clock: the upload reads parts in worker threads


def test_a_write_during_an_upload_abandons_it_and_the_latest_content_wins(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "f", 0o644, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"A" * 1000)
        await h.fs.flush(fh)  # upload starts (each request takes 0.5 s)
        await trio.sleep(0.1)
        await h.fs.write(fh, 0, b"B" * 1000)  # while it runs
        await h.fs.flush(fh)
        await h.fs.release(fh)
        await h.settle()
        assert await h.body("f") == b"B" * 1000
        assert not node.dirty

    run_fs(body, latency=0.5)


def test_fsync_waits_for_the_upload(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, _node = await h.fs.create(ROOT_INO, "f", 0o644, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"durable")
        await h.fs.fsync(fh)
        assert await h.store.get(BUCKET, "f") == b"durable"  # no settle: fsync did it
        await h.fs.write(fh, 7, b"!")  # still writable after fsync
        await h.fs.fsync(fh)
        assert await h.store.get(BUCKET, "f") == b"durable!"
        await h.fs.release(fh)

    run_fs(body, writeback_delay=3600.0)


def test_clean_blocks_are_evicted_to_stay_under_cache_size_dirty_ones_never(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("big", os.urandom(10 * MiB))
        node = await h.fs.lookup(ROOT_INO, "big")
        await h.read_file(node)
        cache = h.fs.data.cache
        assert cache.clean_bytes <= 4 * MiB
        fh, _dirty = await h.fs.create(ROOT_INO, "d", 0o644, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, os.urandom(6 * MiB))
        await h.read_file(node)  # pressure from clean reads
        assert cache.find(BUCKET, "d") is not None
        assert len(cache.find(BUCKET, "d").dirty_blocks) == 6  # type: ignore[union-attr]
        assert await h.fs.read(fh, 0, 4) != b""
        await h.fs.release(fh)

    run_fs(body, cache_size=4 * MiB, writeback_delay=3600.0)


def test_writers_wait_above_max_dirty_and_finish(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(6):
            await h.write_file(f"f{i}", os.urandom(MiB))
        await h.settle()
        assert sorted(await h.keys()) == [f"f{i}" for i in range(6)]
        assert h.fs.data.cache.dirty_bytes == 0

    run_fs(body, max_dirty=2 * MiB)


def test_small_dirty_files_count_their_bytes_not_whole_blocks(run_fs: RunFs) -> None:
    """100 files of 1 KiB with uploads deferred are 100 KiB dirty, far under a 4 MiB
    max_dirty: no writer waits and nothing is uploaded before the delay (whole 1 MiB blocks
    counted them as 100 MiB and throttled the writer into uploading at once)."""

    async def body(h: Harness) -> None:
        for i in range(100):
            await h.write_file(f"f{i:03d}", os.urandom(1024))
        cache = h.fs.data.cache
        assert cache.dirty_bytes == 100 * 1024
        assert h.store.calls["put"] == 0
        fh, node = await h.fs.create(ROOT_INO, "grow", 0o644, RW | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"x" * 10)
        await h.fs.write(fh, 1500 * 1024, b"y" * 10)  # two blocks, sparse: 1.5 MiB of file
        assert cache.dirty_bytes == 100 * 1024 + 1500 * 1024 + 10
        await h.fs.setattr(node.ino, size=20)
        assert cache.dirty_bytes == 100 * 1024 + 20
        await h.fs.release(fh)

    run_fs(body, max_dirty=4 * MiB, writeback_delay=3600.0)


def test_two_mounts_never_share_a_cache_directory(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            store = CountingBackend(0.0)
            first = BlockCache(tmp_path, store, nursery)
            with pytest.raises(CacheError, match="in use by another bucketfs mount"):
                BlockCache(tmp_path, store, nursery)
            first.close()

    trio.run(main)


class LateAnswer(CountingBackend):
    """Like a real server: the PUT takes effect at once, its answer arrives 0.5 s later."""

    async def put(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().put(*args, **kwargs)
        await trio.sleep(0.5)
        return result


def test_an_upload_overtaken_by_a_write_is_no_conflict_with_ourselves(tmp_path: Path) -> None:
    """bash's `echo one > f` closes a dup of the new file before writing: the empty version
    is uploaded while "one" is written. Our own stale upload must not count as a conflict."""
    store = LateAnswer(0.0)

    async def main() -> None:
        from bucketfs.core.fs import FsOptions

        await store.create_bucket(BUCKET)
        opts = FsOptions(uid=0, gid=0)
        fs = BucketFS(store, bucket=BUCKET, prefix="", options=opts, cache_dir=tmp_path / "c")
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            fh, _node = await fs.create(ROOT_INO, "one.txt", 0o644, RW | os.O_CREAT, 0, 0)
            await fs.flush(fh)  # the empty file is stored, its answer is on the way
            await trio.sleep(0.1)
            await fs.write(fh, 0, b"one\n")  # the upload in flight is stale now
            await fs.flush(fh)
            await fs.release(fh)
            await fs.data.writeback.wait_idle()
            nursery.cancel_scope.cancel()
        assert await store.keys(BUCKET) == ["one.txt"]
        assert await store.get(BUCKET, "one.txt") == b"one\n"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _random_reads(h: Harness, node_ino: int, offsets: list[int]) -> list[bytes]:
    fh, _keep = await h.fs.open(node_ino, os.O_RDONLY)
    got = [await h.fs.read(fh, off, 4096) for off in offsets]
    await h.fs.release(fh)
    return got


async def _fill_done(cache: BlockCache, key: str) -> None:
    cf = cache.find(BUCKET, key)
    assert cf is not None
    with trio.fail_after(30):
        while cf.filling:  # noqa: ASYNC110 - the cache keeps no event for a fill's end
            await trio.sleep(0.01)


def test_a_file_read_at_random_places_is_fetched_whole_in_the_background(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        data = os.urandom(10 * MiB)
        await h.put("db", data)
        node = await h.fs.lookup(ROOT_INO, "db")
        offsets = [7 * MiB + 3, 2 * MiB, 9 * MiB + 100, 4 * MiB, 1 * MiB + 17]
        got = await _random_reads(h, node.ino, offsets)
        assert got == [data[o : o + 4096] for o in offsets]
        cache = h.fs.data.cache
        await _fill_done(cache, "db")
        cf = cache.find(BUCKET, "db")
        assert cf is not None
        assert cf.present == set(range(10))
        gets = cache.gets
        others = [o * 12345 % (10 * MiB - 4096) for o in range(1, 200)]
        assert await _random_reads(h, node.ino, others) == [data[o : o + 4096] for o in others]
        assert cache.gets == gets  # every later random read came from the disk

    run_fs(body, cache_size=100 * MiB)


def test_no_background_fill_for_a_file_large_for_the_cache_or_read_in_order(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        data = os.urandom(10 * MiB)
        await h.put("big", data)
        node = await h.fs.lookup(ROOT_INO, "big")
        offsets = [7 * MiB, 2 * MiB, 9 * MiB, 4 * MiB, 1 * MiB, 5 * MiB]
        assert await _random_reads(h, node.ino, offsets) == [data[o : o + 4096] for o in offsets]
        cf = h.fs.data.cache.find(BUCKET, "big")
        assert cf is not None
        assert not cf.filling
        assert cf.present == {7, 2, 9, 4, 1, 5}  # only what was read: 10 MiB > cache_size / 8

    run_fs(body, cache_size=64 * MiB)


def test_a_write_during_a_multipart_upload_is_a_stale_upload_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Parts reading the cache in worker threads see the new generation and raise StaleUpload
    together; that group is one abandoned upload, never an "internal error"."""
    store = PartCounting(0.0)

    async def main() -> None:
        from bucketfs.core.fs import FsOptions

        await store.create_bucket(BUCKET)
        opts = FsOptions(uid=0, gid=0, part_size=5 * MiB)
        fs = BucketFS(store, bucket=BUCKET, prefix="", options=opts, cache_dir=tmp_path / "c")
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            fh, _node = await fs.create(ROOT_INO, "multi", 0o644, RW | os.O_CREAT, 0, 0)
            content = bytearray(os.urandom(40 * MiB))
            await fs.write(fh, 0, bytes(content))
            for i in range(30):
                await fs.flush(fh)  # an upload starts; the next write makes it stale
                await trio.sleep(0.002 * (i % 5))
                await fs.write(fh, i * MiB, b"x")
                content[i * MiB] = ord("x")
            await fs.fsync(fh)
            await fs.release(fh)
            nursery.cancel_scope.cancel()
        assert await store.get(BUCKET, "multi") == bytes(content)

    with caplog.at_level("DEBUG", logger="bucketfs.cache.writeback"):
        trio.run(main)  # real clock: parts are read in worker threads
    problems = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert problems == []


def test_data_files_are_created_ahead_and_unknown_ones_swept(tmp_path: Path) -> None:
    """On the real clock (the autojump clock races while a thread works): a new id's data
    file exists before its file needs it; at the next start the ones never used go."""
    files = DataFiles(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            files.given_out(1, nursery)
        assert files.created_ahead == datafiles.SPARE
        assert (tmp_path / "data" / str(1 + datafiles.SPARE)).exists()
        async with trio.open_nursery() as nursery:
            files.given_out(2, nursery)  # enough are still ready: nothing to do
        assert files.created_ahead == datafiles.SPARE
        async with trio.open_nursery() as nursery:
            files.given_out(1 + datafiles.SPARE // 2, nursery)
        assert (tmp_path / "data" / str(1 + datafiles.SPARE + datafiles.SPARE // 2)).exists()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datafiles, "SPARE", 8)
        trio.run(main)
        with files.using(3) as fd:
            os.pwrite(fd, b"kept", 0)
        files.close_all()
        assert files.sweep({3}) == len(range(2, 14)) - 1  # ids 2..13 made ahead, 3 used
    assert sorted(os.listdir(tmp_path / "data")) == ["3"]


def test_a_data_file_created_ahead_is_opened_without_o_creat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open with O_CREAT takes the directory's lock, which the thread creating the next
    files holds: one created ahead is opened without it; one removed since (a sweep) is
    created again."""
    files = DataFiles(tmp_path)
    monkeypatch.setattr(datafiles, "SPARE", 8)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            files.given_out(1, nursery)

    trio.run(main)
    flags: dict[str, int] = {}
    real_open = os.open

    def recording_open(path: Any, flag: int, *args: Any) -> int:
        flags[os.path.basename(path)] = flag
        return real_open(path, flag, *args)

    monkeypatch.setattr(datafiles.os, "open", recording_open)
    with files.using(2) as fd:
        os.pwrite(fd, b"two", 0)
    assert not flags["2"] & os.O_CREAT
    (tmp_path / "data" / "3").unlink()
    with files.using(3) as fd:
        os.pwrite(fd, b"three", 0)
    assert flags["3"] & os.O_CREAT
    with files.using(20) as fd:  # past what was created ahead
        os.pwrite(fd, b"twenty", 0)
    assert flags["20"] & os.O_CREAT
    files.close_all()
    assert (tmp_path / "data" / "3").read_bytes() == b"three"


def test_a_stray_data_file_is_swept_at_the_next_start(tmp_path: Path) -> None:
    """A crash may leave a data file whose id has no row: the next start sweeps it, so a new
    file never starts with bytes of an old one."""
    store = CountingBackend()

    async def first(cache: BlockCache) -> None:
        cf = cache.create(BUCKET, "a", {})
        await cache.write(cf, 0, b"old bytes" * 100)
        cache.record(cf)  # its FLUSH (close)

    async def second(cache: BlockCache) -> None:
        (cache.root / "data" / "999").write_bytes(b"left by a crash")
        assert len(os.listdir(cache.root / "data")) == 2

    async def third(cache: BlockCache) -> None:
        assert sorted(os.listdir(cache.root / "data")) == ["1"]  # dirty "a" stays

    for body in (first, second, third):

        async def main(body: Any = body) -> None:
            async with trio.open_nursery() as nursery:
                cache = BlockCache(tmp_path / "cache", store, nursery)
                try:
                    await body(cache)
                finally:
                    cache.close()
                nursery.cancel_scope.cancel()

        trio.run(main)


def test_data_files_keep_few_descriptors_and_never_close_one_in_use(tmp_path: Path) -> None:
    files = DataFiles(tmp_path, max_open=2)
    with files.using(1) as held:
        for file_id in range(2, 10):
            with files.using(file_id) as fd:
                os.pwrite(fd, b"x", 0)
        assert files.open_count == 2  # the one in use and the last one
        os.pwrite(held, b"still mine", 0)  # never closed under its user
        files.remove(1)  # removed while in use: closed when the use ends
        os.fstat(held)
        assert files.open_count == 2
    assert files.open_count == 1
    with files.using(9) as fd:  # reopened on demand, content kept
        assert os.pread(fd, 1, 0) == b"x"
    files.close_all()
    assert files.open_count == 0


def test_clean_files_nothing_holds_leave_memory_and_the_index(run_fs: RunFs) -> None:
    """A file read, closed and forgotten by the kernel keeps its row only while its blocks are
    cached; once they are evicted (or when it had none) it is gone from memory and index."""

    async def body(h: Harness) -> None:
        for name in ("a", "empty"):
            await h.put(name, b"data" if name == "a" else b"")
        cache = h.fs.data.cache
        for name in ("a", "empty"):
            node = await h.fs.lookup(ROOT_INO, name)
            h.fs.remember(node)
            fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
            await h.fs.read(fh, 0, 10)
            await h.fs.release(fh)
            h.fs.forget([(node.ino, node.lookups)])
            assert h.fs.table.get(node.ino) is None
        assert [cf.key for cf in cache.files.values()] == ["a"]  # "empty" had no block
        assert cache.index.find(BUCKET, "empty") is None
        cache.blocks.evict(target=0)
        assert cache.files == {}
        assert cache.by_key == {}
        assert cache.index.find(BUCKET, "a") is None
        assert os.listdir(cache.data_files.dir) == []

    run_fs(body)


def test_a_node_forgotten_while_dirty_goes_once_uploaded(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "late", 0o644, RW | os.O_CREAT, 0, 0)
        h.fs.remember(node)
        await h.fs.write(fh, 0, b"pending")
        await h.fs.release(fh)
        h.fs.forget([(node.ino, node.lookups)])
        assert h.fs.table.get(node.ino) is node  # its data is not on the server yet
        await h.fs.sync_path(ROOT_INO)
        assert h.fs.table.get(node.ino) is None
        assert h.fs.status()["nodes"] == 1
        assert await h.body("late") == b"pending"

    run_fs(body, writeback_delay=3600.0)


@pytest.mark.parametrize(("transfers", "expected"), [(None, 16), (3, 3)])
def test_transfers_files_are_uploaded_at_once(
    run_fs: RunFs, transfers: int | None, expected: int
) -> None:
    """40 closed files against a store that takes 50 ms per request: `transfers` (default 16)
    of them are in flight at once, never more."""

    async def body(h: Harness) -> None:
        put = h.store.put
        now = [0]
        peak = [0]

        async def counting_put(*args: Any, **kw: Any) -> Any:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
            try:
                return await put(*args, **kw)
            finally:
                now[0] -= 1

        h.store.put = counting_put  # type: ignore[method-assign]
        for i in range(40):
            await h.write_file(f"f{i:02d}", b"x" * 100)
        await h.settle()
        assert len(await h.keys()) == 40
        assert peak[0] == expected

    options: dict[str, Any] = {} if transfers is None else {"transfers": transfers}
    run_fs(body, latency=0.05, writeback_delay=0.0, **options)


@pytest.mark.parametrize(("upload_parts", "expected"), [(None, 8), (3, 3)])
def test_upload_parts_are_in_flight_at_once(
    run_fs: RunFs, upload_parts: int | None, expected: int
) -> None:
    """A 12-part multipart upload: `upload_parts` (default 8) parts hold an upload slot (their
    bytes read for the request, or the request sent) at once, never more. Counted as slots
    taken when a part is sent: how many reach the store together also depends on how fast the
    parts are read from the cache on a loaded machine."""

    async def body(h: Harness) -> None:
        upload_part = h.store.upload_part
        slots = h.fs.data.writeback._parts
        peak = [0]

        async def counting(*args: Any, **kw: Any) -> Any:
            peak[0] = max(peak[0], slots.borrowed_tokens)
            return await upload_part(*args, **kw)

        h.store.upload_part = counting  # type: ignore[method-assign]
        data = os.urandom(12 * 5 * MiB)
        await h.write_file("big", data)
        await h.settle()
        assert await h.body("big") == data
        assert slots.total_tokens == expected
        assert peak[0] == expected

    options: dict[str, Any] = {} if upload_parts is None else {"upload_parts": upload_parts}
    run_fs(body, latency=0.1, writeback_delay=0.0, part_size=5 * MiB, **options)
