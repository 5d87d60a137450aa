"""A body received and handed to a `Sink` fill by fill (`Body.receive_each`): on S3 over plain
HTTP in one worker-thread job per call (`pool.Exchange.receive_each`, `s3/receive.py`), over
chunks by reads in the task (`base.ChunkBody`).

Covers: every fill written in one worker thread (not the trio thread, one job for the whole
body) and `landed` on the trio thread after each, in order; the bytes h11 held with the head;
the connection reused after; a sink that says stop (the rest received by the next call); a
body cut short (the bytes that came, then the error); a `landed` that raises (the thread is
stopped and waited for); a cancelled receive; chunk bodies writing large fills in a worker
thread and small ones in the task.
"""

from __future__ import annotations

import threading

import httpx2
import pytest
import trio

from bucketfs.backends.base import ChunkBody
from bucketfs.errors import Transient
from tests.unit.backends.test_direct_body import BODY, answering, chunks_of, get, make_pool
from tests.unit.backends.test_lean import start, trio_test


class Recorder:
    """A sink keeping every fill, with the thread that wrote it and the order of calls."""

    def __init__(self, stop_after: int | None = None, fail_at: int | None = None) -> None:
        self.data = bytearray()
        self.threads: set[int] = set()
        self.calls: list[str] = []
        self.landed_threads: set[int] = set()
        self._stop_after = stop_after
        self._fail_at = fail_at

    def write(self, filled: memoryview) -> bool:
        self.threads.add(threading.get_ident())
        self.data += filled
        self.calls.append("write")
        return self._stop_after is None or self.calls.count("write") < self._stop_after

    def landed(self) -> None:
        self.landed_threads.add(threading.get_ident())
        self.calls.append("landed")
        if self._fail_at is not None and self.calls.count("landed") == self._fail_at:
            raise RuntimeError("landing failed")


def assert_landed_after_each_write(calls: list[str], fills: int) -> None:
    """One `landed` per `write`, never before it (the thread may write ahead)."""
    assert calls.count("write") == calls.count("landed") == fills
    for n in range(len(calls)):
        assert calls[:n].count("landed") <= calls[:n].count("write")


@trio_test
async def test_every_fill_is_written_in_one_worker_thread_and_landed_in_the_task() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY))
        pool = make_pool(server)
        for _ in range(2):
            exchange = await get(pool)
            assert exchange.direct
            sink = Recorder()
            view = memoryview(bytearray(1 << 20))
            assert await exchange.receive_each(view, sink) == len(BODY)
            assert bytes(sink.data) == BODY  # the bytes h11 held first, then the socket's
            assert_landed_after_each_write(sink.calls, 3)  # 3 MiB in fills of 1 MiB
            assert len(sink.threads) == 1
            assert threading.get_ident() not in sink.threads
            assert sink.landed_threads == {threading.get_ident()}
            assert await exchange.receive_each(view, sink) == 0  # the body ended
            await exchange.aclose()
        assert server.seen.connections == 1  # kept and reused
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_sink_that_says_stop_keeps_the_rest_for_the_next_call() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY))
        pool = make_pool(server)
        exchange = await get(pool)
        sink = Recorder(stop_after=1)
        view = memoryview(bytearray(1 << 20))
        assert await exchange.receive_each(view, sink) == 1 << 20
        assert sink.calls == ["write", "landed"]
        assert bytes(view) == BODY[: 1 << 20]  # the stopping fill is left in the buffer
        rest = Recorder()
        assert await exchange.receive_each(view, rest) == len(BODY) - (1 << 20)
        assert bytes(sink.data + rest.data) == BODY
        await exchange.aclose()
        assert pool._open == 1  # read to its end: kept
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_body_cut_short_gives_its_fills_then_the_error() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY, "partial"))
        pool = make_pool(server)
        exchange = await get(pool)
        sink = Recorder()
        view = memoryview(bytearray(1 << 20))
        got = await exchange.receive_each(view, sink)
        assert 0 < got < len(BODY)
        assert bytes(sink.data) == BODY[:got]
        assert sink.calls[-1] == "landed"
        with pytest.raises(httpx2.RemoteProtocolError):
            await exchange.receive_each(view, sink)
        await exchange.aclose()
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_landing_that_fails_stops_the_thread_and_is_raised() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY * 4))
        pool = make_pool(server)
        exchange = await get(pool)
        sink = Recorder(fail_at=1)
        with pytest.raises(RuntimeError, match="landing failed"):
            await exchange.receive_each(memoryview(bytearray(1 << 20)), sink)
        writes = sink.calls.count("write")
        await trio.sleep(0.2)
        assert sink.calls.count("write") == writes  # the thread ended before the raise
        assert writes < 12
        await exchange.aclose()
        assert pool._open == 0  # not read to its end: closed
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_cancelled_receive_wakes_the_thread_and_closes_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY, "stall"))
        pool = make_pool(server, read=30.0)
        exchange = await get(pool)
        sink = Recorder()
        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await exchange.receive_each(memoryview(bytearray(len(BODY))), sink)
        assert scope.cancelled_caught
        assert trio.current_time() - started < 10  # not the 30 s read timeout
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_chunk_body_writes_large_fills_in_a_worker_thread_small_ones_here() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    sink = Recorder()
    body = ChunkBody(chunks_of(data, 700))
    got = await body.receive_each(memoryview(bytearray(4096)), sink, thread_from=4096)
    assert got == len(data)
    assert bytes(sink.data) == data
    assert sink.calls == ["write", "landed"] * 3  # 4096, 4096, then the last 2048
    assert threading.get_ident() in sink.threads  # the short last fill
    assert len(sink.threads) >= 2


@trio_test
async def test_a_chunk_body_cut_short_gives_its_fills_then_the_error() -> None:
    sink = Recorder()
    body = ChunkBody(chunks_of(b"a" * 50, 10, fail=True))
    view = memoryview(bytearray(20))
    assert await body.receive_each(view, sink) == 50
    assert bytes(sink.data) == b"a" * 50
    with pytest.raises(Transient):
        await body.receive_each(view, sink)
