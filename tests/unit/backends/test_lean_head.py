"""A HEAD through the lean pool: request bytes of ours, the answer's head parsed by llhttp
(`bucketfs/backends/s3/headexchange.py`), against a scripted trio server on loopback.

Each server connection reads one request head per answer and sends the scripted bytes as they
are, so the tests can send what a well-behaved server would not: a head in pieces, a 1xx first,
bytes after a HEAD's head, garbage, nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx2
import pytest
import trio

from bucketfs.backends.s3.headexchange import ResponseHead, request_bytes
from bucketfs.backends.s3.pool import Pool
from bucketfs.backends.s3.wire import Wire

TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
OK = b'HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX-Amz-Meta-Mode: 33188  \r\nETag: "e"\r\n\r\n'


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def test() -> None:
        trio.run(fn)

    return test


@dataclass
class Script:
    """Answers by request number (the last one repeats): a list of pieces sent with a pause
    between them, or "hang" (never answer) or "close" (close without answering)."""

    answers: list[list[bytes] | str]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0


async def _serve(script: Script, stream: trio.SocketStream) -> None:
    script.connections += 1
    buffered = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffered:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffered += data
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            script.requests.append(head + b"\r\n\r\n")
            answer = script.answers[min(len(script.requests), len(script.answers)) - 1]
            if answer == "hang":
                await trio.sleep_forever()
            if answer == "close":
                return
            for i, piece in enumerate(answer):
                if i:
                    await trio.sleep(0.01)
                await stream.send_all(piece)
    except trio.BrokenResourceError:
        return
    finally:
        await trio.aclose_forcefully(stream)


async def start(nursery: trio.Nursery, *answers: list[bytes] | str) -> Script:
    script = Script(list(answers))
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, functools.partial(_serve, script), 0, host="127.0.0.1")
    )
    script.port = listeners[0].socket.getsockname()[1]
    return script


async def head(pool: Pool, target: bytes = b"/b/k") -> tuple[int, list[tuple[bytes, bytes]]]:
    exchange = await pool.send(b"HEAD", b"127.0.0.1", target, [(b"Host", b"127.0.0.1")], b"")
    assert await exchange.read_all() == b""
    await exchange.aclose()
    return exchange.status_code, exchange.headers


def make_pool(script: Script, **timeouts: float) -> Pool:
    return Pool(script.port, max_connections=2, timeouts={**TIMEOUTS, **timeouts})


@trio_test
async def test_head_answer_parsed_and_connection_kept() -> None:
    async with trio.open_nursery() as nursery:
        script = await start(nursery, [OK])
        pool = make_pool(script)
        for _ in range(3):
            status, headers = await head(pool)
            assert status == 200
            # as received, in order; a value's trailing whitespace dropped (as h11 does)
            assert headers == [
                (b"Content-Length", b"42"),
                (b"X-Amz-Meta-Mode", b"33188"),
                (b"ETag", b'"e"'),
            ]
        assert script.connections == 1
        assert script.requests[0] == b"HEAD /b/k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        # the h11 state machine stayed idle: a GET on the same connection still works
        script.answers.append([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"])
        exchange = await pool.send(b"GET", b"127.0.0.1", b"/b/k", [(b"Host", b"h")], b"")
        assert await exchange.read_all() == b"hi"
        await exchange.aclose()
        assert script.connections == 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_head_in_pieces_and_after_an_informational_answer() -> None:
    pieces = [b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\nHTTP/1.1 2", b"04 No", b" Content\r\n"]
    pieces += [b"X-A: b\r", b"\n\r", b"\n"]
    async with trio.open_nursery() as nursery:
        script = await start(nursery, pieces)
        pool = make_pool(script)
        assert await head(pool) == (204, [(b"X-A", b"b")])
        assert await head(pool) == (204, [(b"X-A", b"b")])
        assert script.connections == 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "answer",
    [
        OK + b"body",  # bytes after a HEAD's head: the server broke the protocol
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n",
    ],
    ids=["bytes-after-head", "connection-close", "http-1.0"],
)
def test_head_connection_not_reused_when_it_must_not_be(answer: bytes) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            script = await start(nursery, [answer])
            pool = make_pool(script)
            assert (await head(pool))[0] == 200
            assert (await head(pool))[0] == 200
            assert script.connections == 2
            assert pool._open == 0
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


@trio_test
async def test_head_without_a_length_keeps_the_connection() -> None:
    """h11's rule for a HEAD: no body follows whatever the framing, so no read to EOF."""
    async with trio.open_nursery() as nursery:
        script = await start(nursery, [b"HTTP/1.1 404 Not Found\r\nServer: s\r\n\r\n"])
        pool = make_pool(script)
        assert (await head(pool))[0] == 404
        assert (await head(pool))[0] == 404
        assert script.connections == 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_head_failures_map_like_httpx2_and_close_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        script = await start(nursery, [b"garbage\r\n\r\n"], "close", "hang", [OK])
        pool = make_pool(script, read=0.3)
        with pytest.raises(httpx2.RemoteProtocolError, match="invalid response"):
            await head(pool)
        with pytest.raises(httpx2.RemoteProtocolError, match="disconnected"):
            await head(pool)
        with trio.fail_after(2):
            with pytest.raises(httpx2.ReadTimeout):
                await head(pool)
        assert pool._open == 0  # each failure closed its connection
        assert (await head(pool))[0] == 200
        assert script.connections == 4
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_head_answered_with_a_protocol_upgrade_is_a_protocol_error() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    async with trio.open_nursery() as nursery:
        script = await start(nursery, [upgrade], [OK])
        pool = make_pool(script)
        with pytest.raises(httpx2.RemoteProtocolError, match="unexpected protocol upgrade"):
            await head(pool)
        assert pool._open == 0
        assert (await head(pool))[0] == 200
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_head_cancelled_closes_its_connection() -> None:
    async with trio.open_nursery() as nursery:
        script = await start(nursery, "hang", [OK])
        pool = make_pool(script)
        with trio.move_on_after(0.2):
            await head(pool)
        assert pool._open == 0
        assert (await head(pool))[0] == 200
        await pool.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (b"/b/k x", [(b"Host", b"h")]),
        (b"/b/k", [(b"Host", b"h"), (b"X-A", b"v\r\nX-Injected: 1")]),
        (b"/b/k", [(b"Host", b"h"), (b"X A", b"v")]),
        (b"/b/k", [(b"Host", b"h"), (b"X-A", b" v")]),
        (b"/b/k", [(b"Host", b"h"), (b"X-A", b"v\x00")]),
    ],
    ids=["space-in-target", "crlf-in-value", "space-in-name", "leading-space", "nul"],
)
def test_head_request_h11_would_refuse_is_not_sent(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(httpx2.LocalProtocolError, match=r"illegal (request target|header)"):
        request_bytes(b"HEAD", target, headers)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            script = await start(nursery, [OK])
            pool = make_pool(script)
            with pytest.raises(httpx2.LocalProtocolError, match="illegal"):
                await pool.send(b"HEAD", b"127.0.0.1", target, headers, b"")
            assert script.requests == []
            assert (await head(pool))[0] == 200  # the slot was given back
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_response_head_alone() -> None:
    answer = ResponseHead()
    assert not answer.feed(b"HTTP/1.1 200 OK\r\nA: 1\r\n")
    assert answer.feed(b"B: 2\r\n\r\n")
    assert (answer.status, answer.headers, answer.keep, answer.extra) == (
        200,
        [(b"A", b"1"), (b"B", b"2")],
        True,
        False,
    )
    answer.feed(b"HTTP/1.1 200 OK\r\n")  # a second answer to one HEAD
    assert answer.extra


@trio_test
async def test_wire_head_answer() -> None:
    async with trio.open_nursery() as nursery:
        script = await start(nursery, [OK])
        wire = Wire(https=False, max_connections=2, timeouts=TIMEOUTS)
        answer = await wire.send(
            "HEAD", b"http", b"127.0.0.1", script.port, b"/w", [(b"Host", b"h")], b""
        )
        assert answer.status_code == 200
        assert answer.header(b"x-amz-meta-mode") == "33188"
        assert await answer.read() == b""
        await answer.aclose()
        await wire.aclose()
        nursery.cancel_scope.cancel()
