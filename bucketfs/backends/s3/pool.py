"""The lean HTTP/1.1 path of the S3 backend: h11 over trio streams, a LIFO pool per host.

Owns `Pool` (keep-alive connections to one endpoint, TCP or TLS over TCP, at most
`max_connections` of them, idle or busy, over every host) and `Exchange` (one request on one
connection, its response body read chunk by chunk). `s3/wire.py` sends every S3 request of the
daemon through it (a caller's httpx2 transport aside).
Why: httpcore2's pool, request and response models cost about twice a HEAD's own work
(docs/maintainers/performance.md, "The request path"); this path is one h11 state machine, one
write and one read for a small exchange. On plain TCP those are `os.write`/`os.read` on the
non-blocking socket (a wait for writable or readable only when the socket asks for one):
trio's `SocketStream.send_all` costs ~48 us of CPU a call in a loop where `os.write` costs 2
(a cancel scope, a conflict check and a yield to the scheduler after every send;
scripts/sockmicro.py, session 18). Invariants:

- HTTP framing and parsing are h11's, but a HEAD's (its request bytes joined and checked, its
  answer's head parsed by llhttp: `s3/headexchange.py`; h11's state machine for that
  connection stays idle), TLS is the `ssl` module's through `trio.SSLStream` (the caller's
  `ssl.SSLContext`: certificate and host name checks are its own); this module only moves
  bytes between those parsers and a stream (no header or status line parsing of ours, and no
  body framing but `readinto`'s count of a `Content-Length` body, below);
  `Host` and the other headers come from the caller, `Content-Length` too when the body is an
  async iterable (else chunked encoding);
- a connection goes back to the pool only when both h11 sides are DONE (the response read to
  its end, no `Connection: close`); a body not read to the end, a failure, a timeout or a
  cancellation (`trio.Cancelled` included) closes the connection it interrupted;
- an idle connection is checked before reuse (a zero-byte `poll`: readable while idle means
  the server closed it or sent garbage): a stale one is closed and the request, not sent yet,
  goes on another (or a new) connection;
- failures leave as the httpx2 exceptions httpx2's own transport raises for them
  (`ConnectError` also for a TLS handshake refused, `ConnectTimeout`, `ReadTimeout`,
  `WriteError`, `RemoteProtocolError`, `PoolTimeout` ...), so `http.transport_error` stays
  the one seam mapping them;
- timeouts: `connect` bounds opening a connection, `read` each wait for response bytes,
  `write` each send, `pool` the wait for a free connection slot (None: no limit);
- every connection slot taken is given back exactly once (`Exchange.aclose`);
- a body may instead be received straight into the caller's buffer (`Exchange.readinto`),
  in a worker thread, off the trio thread: only on plain TCP, for an HTTP/1.1 answer framed
  by `Content-Length` alone (h11 parsed its head and gives up what it holds of the body; the
  bytes after it are counted here, the one framing of ours). Once all of them came, the
  connection gets a fresh h11 state machine and is reused unless the answer said
  `Connection: close`. Why: h11 copies each body byte three times on the trio thread, the
  largest share of that thread's work in a cold read (docs/cache.md has the figures). A
  cancelled receive wakes its thread and waits for it (`receive.in_thread`): no thread ever
  touches a buffer or a socket after `readinto` left. `receive_each` receives every fill of a
  buffer and hands it to a `Sink` in one worker-thread job per call (`receive.ReceiveJob`),
  under the same rules.
"""

from __future__ import annotations

import math
import os
import select
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import h11
import httpx2
import trio

from bucketfs.backends.base import Sink
from bucketfs.backends.s3.headexchange import ResponseHead, request_bytes
from bucketfs.backends.s3.receive import ReceiveJob, in_thread, receive, transmit

#: bytes asked for per receive: large, so a ranged GET of several MiB takes few reads
READ_SIZE = 1 << 20
#: bytes asked for per receive while waiting for a response's head: a head and a small body
#: fit, and of a large body little goes through h11 on the trio thread before
#: `Exchange.readinto` takes over (with `READ_SIZE`, up to 1 MiB of each GET's body did, copied
#: five times there)
HEAD_READ_SIZE = 64 << 10
#: request bodies up to this size go out in the same `send_all` as the request head
_JOIN_BODY = 64 << 10

Headers = list[tuple[bytes, bytes]]


class WholeBody:
    """A large request body (an upload's data), sent from a worker thread on plain TCP (the
    trio thread serves the kernel meanwhile); elsewhere in slices of `slice_size` views."""

    __slots__ = ("slice_size", "view")

    def __init__(self, data: bytes, slice_size: int) -> None:
        self.view = memoryview(data)
        self.slice_size = slice_size

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        for start in range(0, len(self.view), self.slice_size):
            yield self.view[start : start + self.slice_size]


#: a request body: whole, or in pieces (views of one `bytes`: `WholeBody`)
Body = bytes | WholeBody | AsyncIterable[bytes] | AsyncIterable[memoryview]


class _Conn:
    """One TCP connection and its h11 state machine."""

    __slots__ = ("fd", "h11", "host", "poll", "socket", "stream")

    def __init__(
        self, host: bytes, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    ) -> None:
        self.host = host
        self.stream = stream
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        self.socket = tcp.socket
        #: plain TCP: the socket's descriptor, read and written here without trio's stream
        #: (`Pool._send_all`, `Pool._next`); -1 over TLS
        self.fd = -1 if isinstance(stream, trio.SSLStream) else self.socket.fileno()
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 << 10)
        self.poll = select.poll()
        self.poll.register(self.socket.fileno(), select.POLLIN)

    def stale(self) -> bool:
        """Readable while idle: the server closed it (EOF, TLS close_notify) or sent something
        unasked."""
        return bool(self.poll.poll(0))

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _timeout(value: float | None) -> float:
    return math.inf if value is None else value


class Pool:
    """Keep-alive connections to one endpoint (any number of virtual hosts on it)."""

    def __init__(
        self,
        port: int,
        *,
        max_connections: int,
        timeouts: Mapping[str, float | None],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: TLS over every connection (an https:// endpoint)."""
        self._port = port
        self._ssl = ssl_context
        self._slots = trio.Semaphore(max_connections)
        self._max = max_connections
        self._connect = _timeout(timeouts.get("connect"))
        self._read = _timeout(timeouts.get("read"))
        self._write = _timeout(timeouts.get("write"))
        self._pool_wait = _timeout(timeouts.get("pool"))
        #: idle connections by host, most recently used last
        self._idle: dict[bytes, list[_Conn]] = {}
        self._open = 0
        self._closed = False

    # --- connections ---------------------------------------------------------------------

    async def _connection(self, host: bytes) -> _Conn:
        """An idle connection to `host` that is still open, else a new one; the caller
        holds a slot."""
        idle = self._idle.get(host)
        while idle:
            conn = idle.pop()
            if not conn.stale():
                return conn
            self._open -= 1
            await conn.close()
        if self._open >= self._max:
            await self._close_one_idle()
        self._open += 1
        try:
            with trio.fail_after(self._connect):
                return _Conn(host, await self._open_stream(host.decode("ascii")))
        except trio.TooSlowError as exc:
            self._open -= 1
            raise httpx2.ConnectTimeout("timed out connecting") from exc
        except (OSError, trio.BrokenResourceError) as exc:
            self._open -= 1
            cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
            raise httpx2.ConnectError(str(cause) or type(cause).__name__) from exc
        except BaseException:
            self._open -= 1
            raise

    async def _open_stream(
        self, host: str
    ) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream(host, self._port)
        if self._ssl is None:
            return tcp
        # https_compatible: a server closing without close_notify ends a response with
        # Content-Length cleanly (as browsers and httpcore2 accept)
        stream = trio.SSLStream(tcp, self._ssl, server_hostname=host, https_compatible=True)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return stream

    async def _close_one_idle(self) -> None:
        """Make room: every slot is free or idle, so with all connections open one is idle
        (for another host)."""
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)
                self._open -= 1
                await conn.close()
                return

    def _release(self, conn: _Conn | None, reusable: bool, *, h11_used: bool = True) -> None:
        """Give the slot back, and `conn` to the idle list when it may serve again
        (`h11_used` False: its h11 state machine stayed idle, a HEAD)."""
        self._slots.release()
        if conn is None:
            return
        if reusable and not self._closed:
            if h11_used and conn.h11.our_state is h11.DONE:  # not a fresh one (`readinto`)
                conn.h11.start_next_cycle()
            self._idle.setdefault(conn.host, []).append(conn)
        else:
            self._open -= 1
            conn.socket.close()  # no await: also safe inside a cancelled scope

    # --- requests -----------------------------------------------------------------------

    async def send(
        self,
        method: bytes,
        host: bytes,
        target: bytes,
        headers: Headers,
        body: Body,
    ) -> Exchange:
        """Send one request to `host` and read the response head; its body is not read yet
        (`Exchange.aiter_raw`). `headers` hold `Host` and, for a bytes body, its framing."""
        if self._closed:
            raise httpx2.ConnectError("the connection pool is closed")
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(self._pool_wait) as scope:
                await self._slots.acquire()
            if scope.cancelled_caught:
                raise httpx2.PoolTimeout("timed out waiting for a connection") from None
        conn: _Conn | None = None
        bare_head = method == b"HEAD" and body == b""  # through llhttp (`_head`)
        try:
            conn = await self._connection(host)
            if bare_head:
                answer = await self._head(conn, target, headers)
            else:
                await self._send_request(conn, method, target, headers, body)
                head = await self._next(conn, HEAD_READ_SIZE)
                while isinstance(head, h11.InformationalResponse):
                    head = await self._next(conn, HEAD_READ_SIZE)
        except BaseException:
            self._release(conn, False)
            raise
        if bare_head:
            self._release(conn, answer.keep and not answer.extra, h11_used=False)
            return Exchange(self, None, answer.status, answer.headers, None, False)
        assert isinstance(head, h11.Response)
        return Exchange(self, conn, head.status_code, head.headers.raw_items(), *_framing(head))

    async def _head(self, conn: _Conn, target: bytes, headers: Headers) -> ResponseHead:
        """A HEAD on `conn`, its answer's head parsed by llhttp (`s3/headexchange.py`); h11's
        state machine stays idle: the connection serves the next request as before."""
        await self._send_all(conn, request_bytes(b"HEAD", target, headers))
        answer = ResponseHead()
        while True:
            data = await self._read_some(conn, HEAD_READ_SIZE)
            if not data:
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            if answer.feed(data):
                return answer

    async def _send_request(
        self,
        conn: _Conn,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Body,
    ) -> None:
        h = conn.h11
        if not isinstance(body, bytes) and not any(
            n.lower() == b"content-length" for n, _ in headers
        ):
            headers = [*headers, (b"Transfer-Encoding", b"chunked")]
        try:
            out = h.send(h11.Request(method=method, target=target, headers=headers))
            assert out is not None
            if isinstance(body, bytes):
                if body and len(body) <= _JOIN_BODY:
                    out += _data(h, body)
                    body = b""
                if not body:
                    end = h.send(h11.EndOfMessage())
                    await self._send_all(conn, out + end if end else out)
                    return
                await self._send_all(conn, out)
                await self._send_all(conn, _data(h, body))
            elif isinstance(body, WholeBody) and isinstance(conn.stream, trio.SocketStream):
                await self._send_all(conn, out)
                data = h11.Data(data=body.view)  # type: ignore[arg-type]  # bytes-like
                for piece in h.send_with_data_passthrough(data) or ():
                    await self._transmit(conn, memoryview(piece))
            else:
                await self._send_all(conn, out)
                async for chunk in body:
                    if chunk:
                        # the piece itself goes to the socket, not a copy h11 would join
                        data = h11.Data(data=chunk)  # type: ignore[arg-type]  # bytes-like
                        for piece in h.send_with_data_passthrough(data) or ():
                            await self._send_all(conn, piece)
            end = h.send(h11.EndOfMessage())
            if end:
                await self._send_all(conn, end)
        except h11.LocalProtocolError as exc:
            raise httpx2.LocalProtocolError(str(exc)) from exc

    async def _transmit(self, conn: _Conn, view: memoryview) -> None:
        """`view` to the socket from a worker thread (plain TCP): the kernel's copy and the
        loopback's TCP work off the trio thread, as `readinto` does for bodies received."""
        fd, timeout = conn.socket.fileno(), self._write
        error = await in_thread(lambda wake: transmit(fd, view, wake, timeout))
        if error is not None:
            raise error

    async def _send_all(self, conn: _Conn, data: bytes | memoryview) -> None:
        if conn.fd >= 0:
            # plain TCP: straight to the (non-blocking) socket; a request head fits its send
            # buffer, so this is one syscall, without trio's stream around it (a cancel scope,
            # a conflict check and a yield to the scheduler after the send: ~10% of a HEAD's
            # CPU in the daemon); what does not fit waits below as before
            try:
                sent = _write(conn.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise httpx2.WriteError(str(exc) or type(exc).__name__) from exc
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        try:
            with trio.fail_after(self._write):
                await conn.stream.send_all(data)
        except trio.TooSlowError as exc:
            raise httpx2.WriteTimeout("timed out sending") from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx2.WriteError(str(exc) or type(exc).__name__) from exc

    async def _next(self, conn: _Conn, size: int = READ_SIZE) -> h11.Event:
        """The next response event, reading from the socket as h11 needs (`size` bytes at
        most per receive)."""
        h = conn.h11
        try:
            while True:
                event = h.next_event()
                if event is h11.PAUSED:  # pragma: no cover - only after a full response
                    raise httpx2.RemoteProtocolError("response after the end of the exchange")
                if event is not h11.NEED_DATA:
                    assert not isinstance(event, type)
                    return event
                data = await self._read_some(conn, size)
                if not data and h.their_state is h11.SEND_RESPONSE:
                    raise httpx2.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                h.receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise httpx2.RemoteProtocolError(str(exc)) from exc

    async def _read_some(self, conn: _Conn, size: int) -> bytes:
        """At most `size` bytes from `conn` once some came (b"": the server closed it), within
        the read timeout. A cancel scope of its own, not `trio.fail_after`: its context
        manager generator cost ~2 us of the ~10 a wait's timeout costs."""
        try:
            with trio.CancelScope(deadline=trio.current_time() + self._read):
                if conn.fd >= 0:  # plain TCP: wait, then one read (see `_send_all`)
                    return await _receive(conn.fd, size)
                data = await conn.stream.receive_some(size)
                return data if isinstance(data, bytes) else bytes(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc
        # only the scope's deadline ends it without a return
        raise httpx2.ReadTimeout("timed out reading")

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                self._open -= 1
                await conn.close()


#: the plain-TCP socket calls (module names, so that a test can count them)
_write = os.write
_read = os.read


async def _receive(fd: int, size: int) -> bytes:
    """At most `size` bytes from plain TCP socket `fd` once it is readable (b"": the server
    closed it). Waits first: right after a request nothing is there yet, and a read that
    fails first costs a syscall and an exception."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return _read(fd, size)
        except BlockingIOError:  # pragma: no cover - woken without data
            continue


def _data(h: h11.Connection, chunk: bytes) -> bytes:
    out = h.send(h11.Data(data=chunk))
    assert out is not None
    return out


class Exchange:
    """A response head and its connection: read the body once (`aiter_raw`, or `readinto`
    when `direct`), then `aclose`."""

    __slots__ = (
        "_conn",
        "_done",
        "_error",
        "_keep",
        "_left",
        "_length",
        "_pending",
        "_pool",
        "direct",
        "headers",
        "status_code",
    )

    def __init__(
        self,
        pool: Pool,
        conn: _Conn | None,
        status_code: int,
        headers: Headers,
        length: int | None,
        keep: bool,
    ) -> None:
        """`conn` None: the answer has no body and its connection was given back (HEAD).
        `length`, `keep`: what `_framing` says of the head."""
        self._pool = pool
        self._conn = conn
        self._done = conn is None
        self.status_code = status_code
        #: (name, value) pairs as received, in order
        self.headers = headers
        self._keep = keep
        #: `readinto` may receive the body itself (plain TCP, framed by Content-Length only)
        self.direct = (
            conn is not None and length is not None and isinstance(conn.stream, trio.SocketStream)
        )
        #: body bytes still to come from the socket (None: h11 still holds what it read)
        self._left: int | None = None if self.direct else 0
        self._pending = b""
        self._error: Exception | None = None
        self._length = length or 0

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunk()) is not None:
            yield chunk

    async def read_all(self) -> bytes:
        """The whole body, as `aiter_raw` would give it (one call, no generator)."""
        chunks: list[bytes] = []
        while (chunk := await self._chunk()) is not None:
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _chunk(self) -> bytes | None:
        """The body's next bytes through h11; None once it ended (the connection given back
        then, or closed on any error)."""
        conn = self._conn
        if conn is None or self._done:
            return None
        try:
            event = await self._pool._next(conn)
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if not isinstance(event, h11.EndOfMessage):  # pragma: no cover - h11 yields
                raise httpx2.RemoteProtocolError(f"unexpected {event!r}")  # nothing else
        except BaseException:
            self._finish(False)
            raise
        self._done = True
        self._finish(True)
        return None

    async def readinto(self, view: memoryview) -> int:
        """Fill `view` with the next bytes of the body (only when `direct`): all of it, fewer
        only at the body's end (0 once it ended) or when the connection broke after some
        bytes came (the next call raises). The socket is read in a worker thread."""
        conn = self._receiving(view)
        if conn is None:
            return 0
        try:
            if self._left is None:
                self._left = self._take_buffered(conn)
            got = min(len(self._pending), len(view))
            if got:
                view[:got] = self._pending[:got]
                self._pending = self._pending[got:]
            want = min(len(view) - got, self._left)
            if want:
                fd, timeout = conn.socket.fileno(), self._pool._read
                part = view[got : got + want]
                n, error = await in_thread(lambda wake: receive(fd, part, wake, timeout))
                got += n
                self._left -= n
                if error is not None:
                    if not got:
                        raise error
                    self._error = error
                    return got
        except BaseException:
            self._finish(False)
            raise
        self._end_if_drained(conn)
        return got

    async def receive_each(self, view: memoryview, sink: Sink) -> int:
        """The rest of the body through `view` (only when `direct`), in one worker-thread job:
        fill `view` (`readinto`'s rules), `sink.write(fill)` in that thread, and
        `sink.landed()` here after each; until the body ended, broke off (the next call
        raises) or `write` said stop. Returns the bytes received."""
        conn = self._receiving(view)
        if conn is None:
            return 0
        try:
            if self._left is None:
                self._left = self._take_buffered(conn)
            pending, self._pending = self._pending, b""
            job = ReceiveJob(conn.socket.fileno(), self._pool._read, view, sink, pending)
            try:
                total, error = await job.run(self._left)
            finally:  # what the thread took, also when `landed` raised or we were cancelled
                self._left -= job.received
                self._pending = pending[job.taken :]
            if error is not None:
                if not total:
                    raise error
                self._error = error
                return total
        except BaseException:
            self._finish(False)
            raise
        self._end_if_drained(conn)
        return total

    def _receiving(self, view: memoryview) -> _Conn | None:
        """The connection to receive the body on; None once it ended (or `view` is empty).
        A break the last call stored (it returned the bytes before it) is raised now."""
        if self._error is not None:
            stored, self._error = self._error, None
            self._finish(False)
            raise stored
        if self._conn is None or self._done or not view:
            return None
        return self._conn

    def _end_if_drained(self, conn: _Conn) -> None:
        """The body was wholly received: the connection goes back to the pool (kept alive)."""
        if not self._left and not self._pending:
            self._done = True
            if self._keep:
                conn.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 << 10)
            self._finish(self._keep)

    def _take_buffered(self, conn: _Conn) -> int:
        """What h11 read of the body along with the head (kept in `_pending`); returns how
        many bytes of the body the socket still holds."""
        h = conn.h11
        pending: list[bytes] = []
        try:
            while True:
                event = h.next_event()
                if isinstance(event, h11.Data):
                    pending.append(bytes(event.data))
                elif event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
                    break
                else:  # pragma: no cover - h11 yields nothing else inside a response
                    raise httpx2.RemoteProtocolError(f"unexpected {event!r}")
        except h11.RemoteProtocolError as exc:
            raise httpx2.RemoteProtocolError(str(exc)) from exc
        self._pending = b"".join(pending)
        return self._length - len(self._pending)

    def _finish(self, complete: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        h = conn.h11
        if self.direct and self._left is not None:  # the body came past h11 (`readinto`)
            reusable = complete and self._keep
        else:
            reusable = (
                complete
                and h.our_state is h11.DONE
                and h.their_state is h11.DONE
                and h.trailing_data == (b"", False)  # nothing sent past the response, no EOF
            )
        self._pool._release(conn, reusable)

    async def aclose(self) -> None:
        """Give the connection back (kept only when the body was read to its end)."""
        self._finish(self._done)


def _framing(head: h11.Response) -> tuple[int | None, bool]:
    """The body's length when only `Content-Length` frames it (else None), and whether the
    connection stays open after it (HTTP/1.1 without `Connection: close`)."""
    length: int | None = None
    keep = head.http_version == b"1.1"
    for name, value in head.headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            return None, False
        elif name == b"connection" and b"close" in value.lower():
            keep = False
    return length, keep
