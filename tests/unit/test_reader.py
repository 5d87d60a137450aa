"""`ChunkReader`: ranged GETs into a bounded chunk cache, shared fetches, ETag safety.

Each test runs under trio's autojump clock, so a backend `latency` makes concurrency visible
without making the test slow.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from bucketfs.errors import NotFound, PreconditionFailed
from bucketfs.reader import ChunkReader, ObjectRef, ReadState
from tests.unit.conftest import BUCKET, CountingBackend

CHUNK = 4096


def run(
    body: Callable[[ChunkReader, CountingBackend], Awaitable[None]],
    *,
    latency: float = 0.0,
    **reader_opts: Any,
) -> None:
    async def main() -> None:
        store = CountingBackend(latency)
        await store.create_bucket(BUCKET)
        async with trio.open_nursery() as nursery:
            reader = ChunkReader(store, nursery, **{"chunk_size": CHUNK, **reader_opts})
            await body(reader, store)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def put(store: CountingBackend, key: str, data: bytes) -> ObjectRef:
    result = await store.put(BUCKET, key, data)
    return ObjectRef(BUCKET, key, result.etag, len(data))


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("max_chunks", [192, 8, 1], ids=["roomy", "small", "one-chunk"])
def test_random_reads_match_the_bytes(max_chunks: int) -> None:
    data = blob(CHUNK * 40 + 17)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        rng = random.Random(max_chunks)
        state = ReadState()
        for _ in range(300):
            offset = rng.randrange(len(data) + CHUNK)
            size = rng.choice([0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 50 * CHUNK])
            got = await reader.read(ref, offset, size, state)
            assert got == data[offset : offset + size], (offset, size)

    run(body, max_chunks=max_chunks)


def test_reads_at_the_edges() -> None:
    data = blob(3 * CHUNK + 5)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        s = ReadState()
        assert await reader.read(ref, 0, len(data) * 2, s) == data
        assert await reader.read(ref, CHUNK - 1, 2, s) == data[CHUNK - 1 : CHUNK + 1]
        assert await reader.read(ref, len(data) - 1, 10, s) == data[-1:]
        assert await reader.read(ref, len(data), 10, s) == b""
        assert await reader.read(ref, len(data) + CHUNK * 10, 10, s) == b""
        assert await reader.read(ref, 5, 0, s) == b""
        empty = await put(store, "empty", b"")
        assert await reader.read(empty, 0, 100, ReadState()) == b""

    run(body)


async def read_sequentially(reader: ChunkReader, ref: ObjectRef, step: int) -> bytes:
    state = ReadState()
    out = []
    for offset in range(0, ref.size, step):
        out.append(await reader.read(ref, offset, step, state))
    return b"".join(out)


def test_sequential_reads_take_fewer_gets_than_chunks() -> None:
    data = blob(64 * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        assert await read_sequentially(reader, ref, CHUNK // 2) == data
        assert reader.gets < 64
        assert store.calls["get"] == reader.gets
        # everything was fetched once: a second pass costs nothing
        gets = reader.gets
        assert await reader.read(ref, 0, len(data), ReadState()) == data
        assert reader.gets == gets

    run(body)


def test_steady_sequential_readahead_fetches_several_chunks_per_get() -> None:
    """Past the ramp-up, readahead should top its window up in multi-chunk GETs
    (`fetch_chunks`), not one GET per chunk crossed: "prefer fewer, larger requests"."""
    chunks = 256
    data = blob(chunks * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        assert await read_sequentially(reader, ref, CHUNK // 4) == data
        assert reader.gets <= chunks // 4

    run(body, fetch_chunks=8)


def test_cached_chunks_are_not_fetched_again() -> None:
    data = blob(10 * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        await reader.read(ref, 3 * CHUNK + 10, 100, ReadState())
        assert reader.gets == 1
        await reader.read(ref, 3 * CHUNK, CHUNK, ReadState())
        await reader.read(ref, 3 * CHUNK + 4000, 96, ReadState())
        assert reader.gets == 1

    run(body)


def test_new_etag_never_gets_chunks_of_the_old_one() -> None:
    old, new = blob(4 * CHUNK, seed=1), blob(4 * CHUNK, seed=2)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref_old = await put(store, "obj", old)
        assert await reader.read(ref_old, 0, len(old), ReadState()) == old
        ref_new = await put(store, "obj", new)
        assert ref_new.etag != ref_old.etag
        assert await reader.read(ref_new, 0, len(new), ReadState()) == new
        for offset in range(0, len(new), 1000):
            assert await reader.read(ref_new, offset, 1500, ReadState()) == new[offset:][:1500]
        # a reader still holding the old ETag gets old bytes from the cache or an error,
        # never the new content under the old name
        reader.invalidate(BUCKET, "obj")
        with pytest.raises(PreconditionFailed):
            await reader.read(ref_old, 0, 10, ReadState())

    run(body)


def test_object_replaced_while_a_fetch_is_in_flight() -> None:
    old, new = blob(2 * CHUNK, seed=3), blob(2 * CHUNK, seed=4)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref_old = await put(store, "obj", old)
        results: list[bytes | BaseException] = []

        async def read_old() -> None:
            try:
                results.append(await reader.read(ref_old, 0, len(old), ReadState()))
            except PreconditionFailed as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_old)
            await trio.sleep(0.01)  # the GET is waiting out its latency
            ref_new = await put(store, "obj", new)
        assert len(results) == 1
        assert results[0] == old or isinstance(results[0], PreconditionFailed)
        assert await reader.read(ref_new, 0, len(new), ReadState()) == new

    run(body, latency=0.05)


def test_concurrent_readers_of_one_chunk_share_one_get() -> None:
    data = blob(8 * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        got: list[bytes] = []

        async def one(offset: int) -> None:
            got.append(await reader.read(ref, offset, 100, ReadState()))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, 2 * CHUNK + i * 100)
        assert sorted(got) == sorted(data[2 * CHUNK + i * 100 :][:100] for i in range(20))
        assert reader.gets == 1
        assert store.calls["get"] == 1

    run(body, latency=0.05)


def test_overlapping_concurrent_ranges_fetch_each_chunk_once() -> None:
    data = blob(16 * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)

        async def one(offset: int, size: int) -> None:
            assert await reader.read(ref, offset, size, ReadState()) == data[offset:][:size]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0, 6 * CHUNK)
            nursery.start_soon(one, 3 * CHUNK, 6 * CHUNK)
            nursery.start_soon(one, 5 * CHUNK + 7, 2 * CHUNK)
        # 9 distinct chunks were needed; with fetch_chunks=8 that is at most a few GETs,
        # and never more GETs than chunks
        assert reader.gets <= 9
        assert store.calls["get"] == reader.gets

    run(body, latency=0.05)


def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    data = blob(3 * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        await store.delete(BUCKET, "obj")
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await reader.read(ref, 0, 10, ReadState())
            except NotFound as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert len(errors) == 5
        assert reader.gets == 1
        # the same content comes back (same ETag): the next read succeeds
        assert (await put(store, "obj", data)).etag == ref.etag
        assert await reader.read(ref, 0, 10, ReadState()) == data[:10]

    run(body, latency=0.05)


def test_memory_stays_bounded() -> None:
    data = blob(64 * CHUNK)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref = await put(store, "obj", data)
        state = ReadState()
        for offset in range(0, len(data), CHUNK):
            assert await reader.read(ref, offset, CHUNK, state) == data[offset : offset + CHUNK]
        assert len(reader._chunks) <= 8
        assert sum(map(len, reader._chunks.values())) <= 8 * CHUNK

    run(body, max_chunks=8)


def test_objects_do_not_share_chunks() -> None:
    a, b = blob(2 * CHUNK, seed=5), blob(2 * CHUNK, seed=6)

    async def body(reader: ChunkReader, store: CountingBackend) -> None:
        ref_a = await put(store, "a", a)
        ref_b = await put(store, "b", b)
        assert await reader.read(ref_a, 0, len(a), ReadState()) == a
        assert await reader.read(ref_b, 0, len(b), ReadState()) == b
        assert await reader.read(ref_a, 100, 10, ReadState()) == a[100:110]

    run(body)
