"""The lean HTTP/1.1 pool (`bucketfs/backends/s3/pool.py`) against a small trio server on loopback.

Covers what a pool must get right: keep-alive reuse, a connection the server closed while idle,
`Connection: close`, a cancelled request, a body not read to its end, timeouts, a connection
broken mid-body, the connection limit, and request bodies streamed (with a length or chunked);
TLS through `trio.SSLStream` with a self-signed certificate made by the openssl CLI; then the
same path through `Wire`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx2
import pytest
import trio

from bucketfs.backends.http import transport_error
from bucketfs.backends.s3 import pool as pool_module
from bucketfs.backends.s3.pool import Pool, WholeBody
from bucketfs.backends.s3.wire import Wire
from bucketfs.errors import Transient, Unreachable


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """A test function run by `trio.run` (the suite has no async test plugin)."""

    @functools.wraps(fn)
    def test() -> None:
        trio.run(fn)

    return test


TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


@dataclass
class Seen:
    """What the server saw: requests (method, target, body) and connections."""

    requests: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0


#: answers one request: returns (status, headers, body, what to do after)
#: what: "keep" (keep-alive), "close" (close the socket silently after the answer),
#: "hang" (never answer), "partial" (send half the body, then close), "stall" (send half the
#: body, then nothing more)
Handler = Callable[[h11.Request, bytes], Awaitable[tuple[int, list[tuple[str, str]], bytes, str]]]


async def ok(request: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes, str]:
    return 200, [], b"hello" if request.method == b"GET" else b"", "keep"


@dataclass
class Server:
    port: int
    seen: Seen


async def _serve_one(stream: trio.abc.Stream, handler: Handler, seen: Seen) -> None:
    seen.connections += 1
    seen.open_now += 1
    seen.most_open = max(seen.most_open, seen.open_now)
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            seen.requests.append((request.method, request.target, body))
            status, headers, payload, what = await handler(request, body)
            if what == "hang":
                await trio.sleep_forever()
            headers = [*headers, ("Content-Length", str(len(payload)))]
            out = conn.send(h11.Response(status_code=status, headers=headers))
            assert out is not None
            if what in ("partial", "stall"):
                await stream.send_all(out + payload[: len(payload) // 2])
                if what == "stall":
                    await trio.sleep_forever()
                return
            if request.method != b"HEAD":
                out += conn.send(h11.Data(data=payload)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            if what == "close" or conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.RemoteProtocolError, ssl.SSLError):
        return
    finally:
        seen.open_now -= 1
        await trio.aclose_forcefully(stream)


async def start(
    nursery: trio.Nursery, handler: Handler = ok, tls: ssl.SSLContext | None = None
) -> Server:
    seen = Seen()

    async def serve(stream: trio.SocketStream) -> None:
        if tls is None:
            await _serve_one(stream, handler, seen)
        else:
            await _serve_one(trio.SSLStream(stream, tls, server_side=True), handler, seen)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return Server(listeners[0].socket.getsockname()[1], seen)


async def fetch(
    pool: Pool, method: bytes = b"GET", body: bytes = b"", target: bytes = b"/k"
) -> tuple[int, bytes]:
    headers = [(b"Host", b"127.0.0.1")]
    if method in (b"PUT", b"POST") or body:
        headers.append((b"Content-Length", str(len(body)).encode()))
    exchange = await pool.send(method, b"127.0.0.1", target, headers, body)
    try:
        content = b"".join([chunk async for chunk in exchange.aiter_raw()])
    finally:
        await exchange.aclose()
    return exchange.status_code, content


def make_pool(server: Server, max_connections: int = 4, **timeouts: float) -> Pool:
    return Pool(server.port, max_connections=max_connections, timeouts={**TIMEOUTS, **timeouts})


@trio_test
async def test_keep_alive_reuses_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        pool = make_pool(server)
        assert await fetch(pool) == (200, b"hello")
        assert await fetch(pool, b"HEAD") == (200, b"")
        assert await fetch(pool, b"PUT", b"data") == (200, b"")
        assert server.seen.connections == 1
        assert server.seen.requests[2] == (b"PUT", b"/k", b"data")
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_read_all_gives_the_body_aiter_raw_gives_and_keeps_the_connection() -> None:
    big = os.urandom(300 << 10)  # several receives

    async def answer(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        if request.target == b"/partial":
            return 200, [], big, "partial"
        return 200, [], big if request.method == b"GET" else b"", "keep"

    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        pool = make_pool(server)
        for method, want in ((b"GET", big), (b"HEAD", b""), (b"GET", big)):
            exchange = await pool.send(method, b"127.0.0.1", b"/k", [(b"Host", b"h")], b"")
            assert await exchange.read_all() == want
            assert await exchange.read_all() == b""  # read once
            await exchange.aclose()
        assert server.seen.connections == 1
        exchange = await pool.send(b"GET", b"127.0.0.1", b"/partial", [(b"Host", b"h")], b"")
        with pytest.raises(httpx2.TransportError):
            await exchange.read_all()
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_connection_closed_while_idle_is_not_used() -> None:
    async def close_after(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        return 200, [], b"x", "close"  # no `Connection: close`: as a keep-alive timeout does

    async with trio.open_nursery() as nursery:
        server = await start(nursery, close_after)
        pool = make_pool(server)
        for _ in range(3):
            assert await fetch(pool) == (200, b"x")
            await trio.sleep(0.05)  # let the FIN arrive
        assert server.seen.connections == 3
        assert pool._open <= 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_connection_close_header_is_honoured() -> None:
    async def closing(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        return 200, [("Connection", "close")], b"y", "keep"

    async with trio.open_nursery() as nursery:
        server = await start(nursery, closing)
        pool = make_pool(server)
        assert await fetch(pool) == (200, b"y")
        assert await fetch(pool) == (200, b"y")  # at once: no wait for the FIN
        assert server.seen.connections == 2
        assert pool._open == 0
        assert not any(pool._idle.values())
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_cancelled_request_closes_its_connection() -> None:
    calls = 0

    async def slow_first(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        nonlocal calls
        calls += 1
        return (200, [], b"late", "hang") if calls == 1 else (200, [], b"ok", "keep")

    async with trio.open_nursery() as nursery:
        server = await start(nursery, slow_first)
        pool = make_pool(server, max_connections=1)
        with trio.move_on_after(0.2) as scope:
            await fetch(pool)
        assert scope.cancelled_caught
        assert pool._open == 0  # closed, and its slot given back
        assert await fetch(pool) == (200, b"ok")  # the one slot is free again
        assert server.seen.connections == 2
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_body_not_read_closes_the_connection() -> None:
    async def big(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        return 200, [], b"z" * (4 << 20), "keep"

    async with trio.open_nursery() as nursery:
        server = await start(nursery, big)
        pool = make_pool(server, max_connections=1)
        exchange = await pool.send(b"GET", b"127.0.0.1", b"/k", [(b"Host", b"x")], b"")
        async with contextlib.aclosing(exchange.aiter_raw()) as chunks:
            async for _ in chunks:
                break  # one chunk, then leave
        await exchange.aclose()
        assert pool._open == 0
        status, content = await fetch(pool)
        assert (status, len(content)) == (200, 4 << 20)
        assert server.seen.connections == 2
        assert pool._open == 1  # the one read to its end is kept
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_read_timeout_and_connect_error_map_like_httpx2() -> None:
    async def hang(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        return 200, [], b"", "hang"

    async with trio.open_nursery() as nursery:
        server = await start(nursery, hang)
        pool = make_pool(server, read=0.1)
        with pytest.raises(httpx2.ReadTimeout) as caught:
            await fetch(pool)
        assert type(transport_error(caught.value, "e", "GET")) is Transient
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()
    dead = Pool(server.port, max_connections=1, timeouts=TIMEOUTS)  # its listener is gone
    with pytest.raises(httpx2.ConnectError) as refused:
        await fetch(dead)
    assert isinstance(transport_error(refused.value, "e", "GET"), Unreachable)
    assert dead._open == 0


@trio_test
async def test_connection_broken_mid_body_is_a_transport_error() -> None:
    async def partial(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        return 200, [], b"p" * 1000, "partial"

    async with trio.open_nursery() as nursery:
        server = await start(nursery, partial)
        pool = make_pool(server)
        with pytest.raises(httpx2.TransportError) as caught:
            await fetch(pool)
        assert type(transport_error(caught.value, "e", "GET")) is Transient
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_server_closing_before_the_answer_is_a_transport_error() -> None:
    async def vanish(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        raise trio.BrokenResourceError  # the server task ends, closing the socket

    async with trio.open_nursery() as nursery:
        server = await start(nursery, vanish)
        pool = make_pool(server)
        with pytest.raises(httpx2.RemoteProtocolError):
            await fetch(pool)
        assert pool._open == 0
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_at_most_max_connections_and_pool_timeout() -> None:
    async def slowish(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        await trio.sleep(0.02)
        return 200, [], b"s", "keep"

    async with trio.open_nursery() as nursery:
        server = await start(nursery, slowish)
        pool = make_pool(server, max_connections=3)
        results: list[tuple[int, bytes]] = []

        async def one() -> None:
            results.append(await fetch(pool))

        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(one)
        assert results == [(200, b"s")] * 20
        assert server.seen.most_open <= 3
        assert server.seen.connections <= 3
        tight = make_pool(server, max_connections=1, pool=0.01)
        async with trio.open_nursery() as clients:
            clients.start_soon(fetch, tight)
            await trio.sleep(0.005)
            with pytest.raises(httpx2.PoolTimeout):
                await fetch(tight)
        await pool.aclose()
        await tight.aclose()
        nursery.cancel_scope.cancel()


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@trio_test
async def test_streamed_bodies_with_length_and_chunked() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        pool = make_pool(server)
        parts = [b"a" * 70000, b"", b"b" * 5]
        headers = [(b"Host", b"h"), (b"Content-Length", b"70005")]
        exchange = await pool.send(b"PUT", b"127.0.0.1", b"/l", headers, _chunks(parts))
        assert [c async for c in exchange.aiter_raw()] == []
        await exchange.aclose()
        assert exchange.status_code == 200
        exchange = await pool.send(b"PUT", b"127.0.0.1", b"/c", [(b"Host", b"h")], _chunks(parts))
        assert [c async for c in exchange.aiter_raw()] == []
        await exchange.aclose()
        big = b"q" * (200 << 10)  # over the size sent with the head
        assert await fetch(pool, b"PUT", big, b"/b") == (200, b"")
        assert [r[2] for r in server.seen.requests] == [b"".join(parts), b"".join(parts), big]
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_body_larger_than_the_socket_buffers_goes_whole() -> None:
    """Plain TCP writes go straight to the socket (`Pool._send_all`): what the first write
    leaves (8 MiB is over loopback's buffers) is sent once the socket is writable, in
    order, with the server reading meanwhile on the same trio loop."""
    writes: list[int] = []
    real_write = os.write

    def counting(fd: int, data: Any) -> int:
        n = real_write(fd, data)
        writes.append(n)
        return n

    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        pool = make_pool(server, write=30.0, read=30.0)  # a loaded host: no timing here
        big = bytes(range(256)) * (32 << 10)
        pool_module._write = counting
        try:
            assert await fetch(pool, b"PUT", big, b"/big") == (200, b"")
        finally:
            pool_module._write = real_write
        assert server.seen.requests[-1] == (b"PUT", b"/big", big)
        assert writes
        assert writes[-1] < len(big)  # the body's first write was partial
        assert await fetch(pool) == (200, b"hello")  # and the connection is still good
        assert server.seen.connections == 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_a_whole_body_goes_from_a_worker_thread_and_a_cancel_stops_it() -> None:
    threads: list[int] = []
    transmit = pool_module.transmit

    def counting(fd: int, view: memoryview, wake: int, timeout: float) -> Any:
        threads.append(threading.get_ident())
        return transmit(fd, view, wake, timeout)

    pool_module.transmit = counting  # type: ignore[assignment]
    try:
        await _whole_body()
    finally:
        pool_module.transmit = transmit
    assert len(threads) == 3
    assert threading.get_ident() not in threads


async def _whole_body() -> None:
    """`WholeBody` (an upload's part) is sent by `receive.transmit` in a worker thread on
    plain TCP: all of it, the connection reused after; a cancelled send closes the
    connection and the thread stops (the server, never reading, keeps it blocked)."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        pool = make_pool(server)
        big = os.urandom(9 << 20)  # more than the socket buffers take at once
        headers = [(b"Host", b"h"), (b"Content-Length", str(len(big)).encode())]
        for _ in range(2):
            exchange = await pool.send(
                b"PUT", b"127.0.0.1", b"/w", headers, WholeBody(big, 1 << 20)
            )
            assert [c async for c in exchange.aiter_raw()] == []
            await exchange.aclose()
            assert exchange.status_code == 200
        assert [r[2] for r in server.seen.requests] == [big, big]
        assert server.seen.connections == 1

        stuck = trio.socket.socket()
        await stuck.bind(("127.0.0.1", 0))
        stuck.listen(1)
        port = stuck.getsockname()[1]
        blocked = Pool(port, max_connections=1, timeouts=TIMEOUTS)
        with trio.move_on_after(0.5) as scope:
            await blocked.send(b"PUT", b"127.0.0.1", b"/x", headers, WholeBody(big, 1 << 20))
        assert scope.cancelled_caught  # the thread was woken and waited for
        stuck.close()
        await blocked.aclose()
        await pool.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_wire_uses_the_lean_pool_for_http() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        wire = Wire(https=False, max_connections=2, timeouts=TIMEOUTS)
        for _ in range(2):
            answer = await wire.send(
                "GET", b"http", b"127.0.0.1", server.port, b"/w", [(b"Host", b"h")], b""
            )
            assert answer.status_code == 200
            assert b"".join([c async for c in answer.aiter_raw()]) == b"hello"
            assert answer.header(b"content-length") == "5"
            await answer.aclose()
        assert server.seen.connections == 1
        assert wire._lean
        await wire.aclose()
        nursery.cancel_scope.cancel()


# --- TLS: a self-signed certificate made with the openssl CLI --------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost; the certificate is its own CA."""
    where = tmp_path_factory.mktemp("tls")
    crt, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


def _server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    return context


def test_tls_with_a_trusted_ca_file(cert: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, tls=_server_context(cert))
            client = ssl.create_default_context(cafile=str(cert[0]))
            pool = Pool(server.port, max_connections=2, timeouts=TIMEOUTS, ssl_context=client)
            assert await fetch(pool) == (200, b"hello")
            assert await fetch(pool, b"PUT", b"x" * 100_000) == (200, b"")
            assert await fetch(pool, b"HEAD") == (200, b"")
            assert server.seen.connections == 1
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_tls_connection_closed_while_idle_is_not_used(cert: tuple[Path, Path]) -> None:
    async def close_after(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        return 200, [], b"x", "close"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, close_after, tls=_server_context(cert))
            client = ssl.create_default_context(cafile=str(cert[0]))
            pool = Pool(server.port, max_connections=2, timeouts=TIMEOUTS, ssl_context=client)
            for _ in range(3):
                assert await fetch(pool) == (200, b"x")
                await trio.sleep(0.05)
            assert server.seen.connections == 3
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_tls_untrusted_certificate_cannot_connect(cert: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, tls=_server_context(cert))
            pool = Pool(
                server.port,
                max_connections=2,
                timeouts=TIMEOUTS,
                ssl_context=_empty_trust(),
            )
            with pytest.raises(httpx2.ConnectError) as caught:
                await fetch(pool)
            assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
            assert isinstance(transport_error(caught.value, "e", "GET"), Unreachable)
            assert pool._open == 0
            await pool.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def _empty_trust() -> ssl.SSLContext:
    """Verifies certificates, and trusts no CA at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_wire_https_trusts_what_httpx2_trusts(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Wire` builds its context as httpx2 does: SSL_CERT_FILE names the CA file."""
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert os.environ["SSL_CERT_FILE"]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, tls=_server_context(cert))
            wire = Wire(https=True, max_connections=2, timeouts=TIMEOUTS)
            answer = await wire.send(
                "GET", b"https", b"127.0.0.1", server.port, b"/t", [(b"Host", b"h")], b""
            )
            assert answer.status_code == 200
            assert b"".join([c async for c in answer.aiter_raw()]) == b"hello"
            await answer.aclose()
            assert list(wire._lean) == [server.port]
            await wire.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
