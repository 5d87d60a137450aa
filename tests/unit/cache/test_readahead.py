"""Readahead (cache/fetch.py): a sequential reader is served by few, large GETs, also when the
kernel's parallel readahead requests arrive out of order; a random reader fetches only what it
reads; fetched bytes never overwrite a write that landed while they were in flight."""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from bucketfs.cache.cachedfile import ReadState
from bucketfs.core.nodes import ROOT_INO
from tests.support.harness import BUCKET, Harness, RunFs, data_of

MiB = 1 << 20
KiB = 1 << 10


def _record_gets(h: Harness) -> list[tuple[int, int]]:
    """The ranges of the GETs the cache sends from now on, as (start, end)."""
    ranges: list[tuple[int, int]] = []
    get = h.store.get

    async def counting_get(
        bucket: str, key: str, start: int = 0, end: Any = None, **kw: Any
    ) -> bytes:
        ranges.append((start, end))
        return await get(bucket, key, start, end, **kw)

    h.store.get = counting_get  # type: ignore[method-assign]
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
        get = h.store.get

        held: list[int] = []

        async def held_get(bucket: str, key: str, start: int = 0, *args: Any, **kw: Any) -> bytes:
            if start >= 6 * MiB and not held:  # one part, never one the reads below need
                held.append(start)
                await gate.wait()
            return await get(bucket, key, start, *args, **kw)

        h.store.get = held_get  # type: ignore[method-assign]
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
