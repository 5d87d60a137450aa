"""Readahead (cache/fetch.py): a sequential reader is served by few, large GETs, also when the
kernel's parallel readahead requests arrive out of order; a random reader fetches only what it
reads; fetched bytes never overwrite a write that landed while they were in flight."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from bucketfs.cache.cachedfile import ReadState
from bucketfs.cache.fetch import LAND_BLOCKS, SPARE_IDLE
from bucketfs.core.nodes import ROOT_INO
from bucketfs.errors import Transient
from tests.support.harness import BUCKET, Harness, RunFs, data_of

MiB = 1 << 20
KiB = 1 << 10


def _record_gets(h: Harness) -> list[tuple[int, int]]:
    """The ranges of the GETs the cache sends from now on (buffered or streamed), as (start,
    end)."""
    ranges: list[tuple[int, int]] = []
    get, get_stream = h.store.get, h.store.get_stream

    async def counting_get(
        bucket: str, key: str, start: int = 0, end: Any = None, **kw: Any
    ) -> bytes:
        ranges.append((start, end))
        return await get(bucket, key, start, end, **kw)

    def counting_stream(
        bucket: str, key: str, start: int = 0, end: Any = None, **kw: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        ranges.append((start, end))
        return get_stream(bucket, key, start, end, **kw)

    h.store.get = counting_get  # type: ignore[method-assign]
    h.store.get_stream = counting_stream  # type: ignore[method-assign]
    return ranges


async def _read_in_batches(h: Harness, ino: int, size: int, chunk: int, batch: int) -> bytes:
    """Read the file whole in `chunk`s, `batch` requests at a time in a shuffled order (as the
    kernel's readahead requests arrive at the daemon)."""
    rng = random.Random(7)
    fh, _keep = await h.fs.open(ino, os.O_RDONLY)
    got: dict[int, bytes] = {}

    async def one(offset: int) -> None:
        got[offset] = await h.fs.read(fh, offset, chunk)

    offsets = list(range(0, size, chunk))
    for i in range(0, len(offsets), batch):
        group = offsets[i : i + batch]
        rng.shuffle(group)
        async with trio.open_nursery() as nursery:
            for offset in group:
                nursery.start_soon(one, offset)
                await trio.lowlevel.checkpoint()  # let each start in this order
    await h.fs.release(fh)
    return b"".join(got[o] for o in offsets)


def _check_few_large_gets(ranges: list[tuple[int, int]], size: int) -> None:
    fetched = sorted(ranges)
    assert sum(e - s for s, e in fetched) == size  # every byte once
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(fetched))
    assert len(ranges) <= size // (16 * MiB) + 8, [(s // MiB, (e - s) // MiB) for s, e in ranges]
    big = [r for r in ranges if r[1] - r[0] == 16 * MiB]
    assert len(big) * 16 * MiB >= size - 48 * MiB  # all but the first parts are 16 MiB


def test_a_sequential_read_sends_few_large_gets(run_fs: RunFs) -> None:
    size = 128 * MiB

    async def body(h: Harness) -> None:
        data = data_of(size, seed=1)
        await h.put("big", data)
        node = await h.fs.lookup(ROOT_INO, "big")
        ranges = _record_gets(h)
        assert await h.read_file(node, chunk=128 * KiB) == data
        _check_few_large_gets(ranges, size)

    run_fs(body, latency=0.002)


def test_out_of_order_readahead_requests_are_still_a_sequential_reader(run_fs: RunFs) -> None:
    size = 96 * MiB

    async def body(h: Harness) -> None:
        data = data_of(size, seed=2)
        await h.put("big", data)
        node = await h.fs.lookup(ROOT_INO, "big")
        ranges = _record_gets(h)
        assert await _read_in_batches(h, node.ino, size, 128 * KiB, 12) == data
        _check_few_large_gets(ranges, size)

    run_fs(body, latency=0.002)


def test_random_reads_fetch_only_the_blocks_read(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        data = data_of(40 * MiB, seed=3)
        await h.put("db", data)
        node = await h.fs.lookup(ROOT_INO, "db")
        ranges = _record_gets(h)
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        offsets = [33 * MiB + 5, 3 * MiB, 21 * MiB + 4096, 12 * MiB, 38 * MiB]
        for off in offsets:
            assert await h.fs.read(fh, off, 4096) == data[off : off + 4096]
        await h.fs.release(fh)
        assert sorted(s // MiB for s, _e in ranges) == sorted(o // MiB for o in offsets)
        assert all(e - s == MiB for s, e in ranges)

    run_fs(body, cache_size=64 * MiB)  # 40 MiB > cache_size / 8: no background fill


def test_a_write_while_a_part_is_fetched_is_not_overwritten(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        data = data_of(64 * MiB, seed=4)
        await h.put("f", data)
        node = await h.fs.lookup(ROOT_INO, "f")
        ranges = _record_gets(h)
        gate = trio.Event()
        get_stream = h.store.get_stream

        held: list[int] = []

        @asynccontextmanager
        async def held_stream(
            bucket: str, key: str, start: int = 0, *args: Any, **kw: Any
        ) -> AsyncIterator[AsyncIterator[bytes]]:
            if start >= 6 * MiB and not held:  # one part, never one the reads below need
                held.append(start)
                await gate.wait()
            async with get_stream(bucket, key, start, *args, **kw) as chunks:
                yield chunks

        h.store.get_stream = held_stream  # type: ignore[method-assign]
        fh, _keep = await h.fs.open(node.ino, os.O_RDWR)
        for off in range(0, 4 * MiB, 128 * KiB):  # a sequential start: parts in flight
            assert await h.fs.read(fh, off, 128 * KiB) == data[off : off + 128 * KiB]
        cf = h.fs.data.cache.find(BUCKET, "f")
        assert cf is not None
        assert held  # readahead past what was read, held
        target = held[0] + MiB + 100
        assert target // MiB in cf.inflight
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.fs.write, fh, target, b"written")
            await trio.testing.wait_all_tasks_blocked()
            assert cf.inflight  # the write waits for the part that brings its block
            gate.set()
        got = await h.fs.read(fh, target - 3, 13)
        assert got == data[target - 3 : target] + b"written" + data[target + 7 : target + 10]
        await h.fs.release(fh)
        assert len(ranges) < 10

    run_fs(body)


def test_part_size_grows_with_the_window(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fetcher = h.fs.data.cache.fetcher
        parts = [fetcher.part_blocks(w) for w in (2, 4, 8, 16, 32, 64, 128)]
        assert parts == sorted(parts)
        assert parts[0] >= 8
        assert parts[-1] == 16

    run_fs(body)


def test_read_state_tells_streams_from_jumps(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fetcher = h.fs.data.cache.fetcher
        state = ReadState()
        chunk = 128 * KiB

        def read(i: int) -> bool:
            return fetcher._advance(state, i * chunk, (i + 1) * chunk)

        assert read(0)
        assert state.window == 2
        assert read(2)  # out of order: within the stream's window
        assert read(1)  # touches the reads before and after it
        assert read(3)
        assert read(5)
        assert read(4)
        assert state.window >= 8
        assert not read(1000)
        assert state.window == 0
        assert not read(37)
        assert read(38)  # two adjacent reads start a stream again

    run_fs(body)


def _chunked_stream(
    h: Harness,
    *,
    hold_after: int | None = None,
    until: trio.Event | None = None,
    break_after: int | None = None,
) -> tuple[list[bool], list[tuple[int, int]]]:
    """Make the store's streamed GETs yield 256 KiB chunks. The first GET, after `hold_after`
    bytes, waits (up to 10 s of the test clock) for `until` and records whether it came; or it
    breaks off with `Transient` after `break_after` bytes (as a dropped connection does).
    Returns those records and every GET's range."""
    came: list[bool] = []
    ranges = _record_gets(h)
    get_stream = h.store.get_stream
    first: list[int] = []

    @asynccontextmanager
    async def stream(
        bucket: str, key: str, start: int = 0, *args: Any, **kw: Any
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        special = not first
        first.append(start)
        async with get_stream(bucket, key, start, *args, **kw) as chunks:
            body = b"".join([c async for c in chunks])

        async def chunked() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 256 * KiB):
                if special and hold_after is not None and i == hold_after:
                    assert until is not None
                    for _ in range(1000):  # the bytes before land in a worker thread
                        if until.is_set():
                            break
                        await trio.sleep(0.01)
                    came.append(until.is_set())
                if special and break_after is not None and i >= break_after:
                    raise Transient("connection reset by peer (test)")
                await trio.lowlevel.checkpoint()
                yield body[i : i + 256 * KiB]

        yield chunked()

    h.store.get_stream = stream  # type: ignore[method-assign]
    return came, ranges


def test_a_reader_goes_on_once_its_blocks_landed_not_the_whole_part(run_fs: RunFs) -> None:
    """The first read's GET brings blocks 0 to 2 (the readahead window); the reader of block 0
    is answered while that body is held back after its first 2 MiB."""

    async def body(h: Harness) -> None:
        data = data_of(16 * MiB, seed=5)
        await h.put("f", data)
        node = await h.fs.lookup(ROOT_INO, "f")
        answered = trio.Event()
        came, ranges = _chunked_stream(h, hold_after=2 * MiB, until=answered)
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        got = await h.fs.read(fh, 0, 128 * KiB)
        answered.set()
        assert got == data[: 128 * KiB]
        cf = h.fs.data.cache.find(BUCKET, "f")
        assert cf is not None
        assert 2 in cf.inflight  # the rest of the part is still on its way
        await cf.inflight[2].done.wait()
        await h.fs.release(fh)
        assert ranges[0][0] == 0
        assert ranges[0][1] > 2 * MiB, ranges  # a part longer than what came before the hold
        assert came == [True]  # the reader had its bytes before the rest of the part came

    run_fs(body)


def test_a_body_that_breaks_off_is_fetched_on_from_the_last_whole_block(run_fs: RunFs) -> None:
    """A connection dropped mid-body: the blocks that arrived whole stay, one more GET brings
    the rest (from the first block that did not), and the file reads back whole."""

    async def body(h: Harness) -> None:
        size = 8 * MiB
        data = data_of(size, seed=6)
        await h.put("f", data)
        node = await h.fs.lookup(ROOT_INO, "f")
        _gate, ranges = _chunked_stream(h, break_after=3 * MiB + 512 * KiB)
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        assert await h.fs.read(fh, 0, size) == data  # one read: one GET for the whole file
        await h.fs.release(fh)
        assert ranges[0] == (0, size)
        assert (3 * MiB, size) in ranges[1:]  # the half block that came is fetched again
        assert ranges == [(0, size), (3 * MiB, size)]  # nothing else
        assert h.fs.data.cache.gets == len(ranges)

    run_fs(body)


def test_background_fill_sends_full_readahead_parts(run_fs: RunFs) -> None:
    """A file read at random places is then fetched in parts as large as a sequential
    reader's (16 MiB with the default window), not 8-block pieces."""

    async def body(h: Harness) -> None:
        data = data_of(64 * MiB)
        await h.put("db", data)
        node = await h.fs.lookup(ROOT_INO, "db")
        ranges = _record_gets(h)
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        offsets = [50 * MiB + 3, 3 * MiB, 40 * MiB, 20 * MiB + 9]
        for off in offsets:
            assert await h.fs.read(fh, off, 4096) == data[off : off + 4096]
        cf = h.fs.data.cache.find(BUCKET, "db")
        assert cf is not None
        # a bound in real time: the mock clock jumps while worker threads write the blocks
        deadline = time.monotonic() + 60
        while cf.filling or len(cf.present) < 64:  # no event for a fill's end
            assert time.monotonic() < deadline, "the fill did not end"
            await trio.sleep(0.01)
        await h.fs.release(fh)
        fill = ranges[len(offsets) :]
        assert max(e - s for s, e in fill) == 16 * MiB
        assert len(fill) <= 64 // 16 + len(offsets)  # a part, plus one per hole it spans

    run_fs(body, cache_size=1024 * MiB)


def test_landing_buffers_are_reused_until_no_stream_ran_for_a_while(run_fs: RunFs) -> None:
    """A full-size landing buffer given back serves the next stream, also one that starts
    after a pause (a sequential reader's GETs); once no stream ran for `SPARE_IDLE`, none is
    kept (no memory held by an idle mount)."""

    async def body(h: Harness) -> None:
        fetcher = h.fs.data.cache.fetcher
        full = fetcher.block_size * LAND_BLOCKS
        with fetcher._buffer(64 * MiB) as first:
            with fetcher._buffer(64 * MiB) as second:
                assert len(first) == len(second) == full
                kept = second.obj
            with fetcher._buffer(64 * MiB) as third:
                assert third.obj is kept  # reused
            with fetcher._buffer(KiB) as small:
                assert len(small) == KiB  # a small body takes a small buffer
        await trio.sleep(SPARE_IDLE / 2)
        with fetcher._buffer(64 * MiB) as later:
            assert later.obj in (first.obj, kept)  # reused after a short pause
        await trio.sleep(SPARE_IDLE * 2)
        assert not fetcher._spare
        with fetcher._buffer(64 * MiB) as fresh:
            assert fresh.obj is not kept
            assert fresh.obj is not first.obj

    run_fs(body)


def test_a_steady_reader_scans_each_block_for_readahead_about_once(run_fs: RunFs) -> None:
    """Each read of a sequential stream looks only at the blocks its window gained (and a short
    part waiting for it), not the whole window again (~65 blocks per read with the default
    64-block window: 6,238 lookups for this file before; now ~6 per block)."""
    size = 128 * MiB

    async def body(h: Harness) -> None:
        data = data_of(size, seed=9)
        await h.put("big", data)
        node = await h.fs.lookup(ROOT_INO, "big")
        fetcher = h.fs.data.cache.fetcher
        looked: list[int] = []
        fetchable = fetcher._fetchable

        def counting(cf: Any, idx: int) -> bool:
            looked.append(idx)
            return fetchable(cf, idx)

        fetcher._fetchable = counting  # type: ignore[method-assign]
        assert await h.read_file(node, chunk=MiB) == data
        blocks = size // MiB
        assert len(looked) <= 8 * blocks, len(looked)  # read, materialize and readahead

    run_fs(body, latency=0.002)
