"""Bodies received into the reader's buffer: `pool.Exchange.readinto` (a worker thread reads the
socket) against the small trio server of test_lean.py, and `base.ChunkBody` over chunks.

Covers: the bytes h11 read along with the head (little of a large body) and those from the
socket, in any buffer size; the connection reused after a body read this way (and not after
`Connection: close`); a body cut short (the bytes that came, then the error); a read timeout;
a cancelled read (the thread woken at once, the connection closed); TLS and chunked answers
left to h11 (`direct` False).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import h11
import httpx2
import pytest
import trio

from bucketfs.backends.base import ChunkBody, chunk_body
from bucketfs.backends.s3.pool import HEAD_READ_SIZE, Exchange, Pool, _framing
from bucketfs.errors import Transient
from tests.unit.backends.test_lean import Server, start, trio_test

TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
BODY = bytes(range(256)) * 4096 * 3  # 3 MiB: more than h11 reads with the head

Answer = tuple[int, list[tuple[str, str]], bytes, str]


def answering(
    payload: bytes, what: str = "keep", headers: list[tuple[str, str]] | None = None
) -> Callable[[h11.Request, bytes], Awaitable[Answer]]:
    async def handler(request: h11.Request, body: bytes) -> Answer:
        return 200, headers or [], payload, what

    return handler


def make_pool(server: Server, **timeouts: float) -> Pool:
    return Pool(server.port, max_connections=2, timeouts={**TIMEOUTS, **timeouts})


async def get(pool: Pool) -> Exchange:
    return await pool.send(b"GET", b"127.0.0.1", b"/k", [(b"Host", b"127.0.0.1")], b"")


async def read_all(exchange: Exchange, size: int) -> bytes:
    buf = bytearray(size)
    out = bytearray()
    while n := await exchange.readinto(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("size", [1000, 1 << 20, 5 << 20])
def test_body_into_buffers_of_any_size_and_connection_reused(size: int) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, answering(BODY))
            pool = make_pool(server)
            for _ in range(2):
                exchange = await get(pool)
                assert exchange.direct
                assert await read_all(exchange, size) == BODY
                await exchange.aclose()
            exchange = await get(pool)  # and h11 still frames the next answer
            assert b"".join([c async for c in exchange.aiter_raw()]) == BODY
            await exchange.aclose()
            assert server.seen.connections == 1
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


@trio_test
async def test_small_body_held_by_h11_and_connection_close() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(b"hello", headers=[("Connection", "close")]))
        pool = make_pool(server)
        exchange = await get(pool)
        assert exchange.direct
        assert await read_all(exchange, 2) == b"hello"
        await exchange.aclose()
        assert pool._open == 0  # not kept: the server said close
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_little_of_a_large_body_goes_through_h11() -> None:
    """The head is read `HEAD_READ_SIZE` bytes at a time: of a body already waiting on the
    socket, at most that much is in h11's buffer (copied on the trio thread); the rest is left
    to `readinto`'s worker thread."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY))
        pool = make_pool(server)
        exchange = await get(pool)
        conn = exchange._conn
        assert conn is not None
        held, _closed = conn.h11.trailing_data
        assert 0 < len(held) <= HEAD_READ_SIZE < len(BODY)
        assert await read_all(exchange, 1 << 20) == BODY
        await exchange.aclose()
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_body_cut_short_gives_its_bytes_then_the_error() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY, "partial"))
        pool = make_pool(server)
        exchange = await get(pool)
        buf = memoryview(bytearray(len(BODY)))
        got = await exchange.readinto(buf)
        assert 0 < got < len(BODY)
        assert buf[:got] == BODY[:got]
        with pytest.raises(httpx2.RemoteProtocolError):
            await exchange.readinto(buf[got:])
        await exchange.aclose()
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_read_timeout_in_the_thread() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY, "stall"))
        pool = make_pool(server, read=0.2)
        exchange = await get(pool)
        buf = memoryview(bytearray(len(BODY)))
        got = await exchange.readinto(buf)
        assert 0 < got < len(BODY)
        with pytest.raises(httpx2.ReadTimeout):
            await exchange.readinto(buf[got:])
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_cancelled_read_wakes_the_thread_and_closes_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answering(BODY, "stall"))
        pool = make_pool(server, read=30.0)
        exchange = await get(pool)
        buf = memoryview(bytearray(len(BODY)))
        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            while await exchange.readinto(buf):
                pass
        assert scope.cancelled_caught
        assert trio.current_time() - started < 10  # not the 30 s read timeout
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


def test_only_content_length_framing_is_direct() -> None:
    def head(*headers: tuple[str, str], version: bytes = b"1.1") -> h11.Response:
        return h11.Response(status_code=200, headers=list(headers), http_version=version)

    assert _framing(head(("Content-Length", "5"))) == (5, True)
    assert _framing(head(("Transfer-Encoding", "chunked"))) == (None, False)
    assert _framing(head(("Content-Length", "5"), ("Connection", "close"))) == (5, False)
    assert _framing(head(("Content-Length", "5"), version=b"1.0")) == (5, False)


async def chunks_of(data: bytes, size: int, fail: bool = False) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[i : i + size]
    if fail:
        raise Transient("broken")


@trio_test
async def test_chunk_body_fills_across_chunks_and_keeps_the_rest() -> None:
    data = bytes(range(256)) * 10
    body = ChunkBody(chunks_of(data, 7))
    buf = memoryview(bytearray(100))
    out = b""
    while n := await body.readinto(buf):
        assert n == 100 or len(out) + n == len(data)
        out += bytes(buf[:n])
    assert out == data


@trio_test
async def test_chunk_body_gives_what_came_before_a_break() -> None:
    body = ChunkBody(chunks_of(b"a" * 50, 10, fail=True))
    buf = memoryview(bytearray(80))
    assert await body.readinto(buf) == 50
    with pytest.raises(Transient):
        await body.readinto(buf)


@trio_test
async def test_chunk_body_runs_the_chunks_to_their_end() -> None:
    ended: list[bool] = []

    @contextlib.asynccontextmanager
    async def stream() -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"abcd"
            ended.append(True)

        yield chunks()

    async with chunk_body(stream()) as body:
        assert await body.readinto(memoryview(bytearray(4))) == 4
    assert ended == [True]
