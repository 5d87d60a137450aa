"""One HTTP/1.1 exchange of the S3 backend: the lean h11 pool, httpcore2's, or a transport.

Owns `Wire` (a connection pool, or a caller's httpx2 transport) and `Answer` (status, raw
headers, raw body stream). The S3 backend already holds what a request needs as parts (host,
encoded target, header bytes); httpx2's `Request`, `URL` and `Response` models would parse the
URL it just built, normalise the headers again and wrap the answer twice, about a fifth of a
HEAD's whole CPU cost (docs/performance.md, "The request path"), and httpcore2's pool about
as much again. So the parts go to `s3/pool.py` (h11 over trio streams, our LIFO pool; TLS
through `trio.SSLStream` with the same `ssl.SSLContext` httpx2 would build, so the same
certificates are trusted). `Wire.lean = False` sends them to `httpcore2.AsyncConnectionPool`
(the pool `httpx2.AsyncHTTPTransport` wraps) as before: the bench's A/B. Invariants:

- HTTP framing and parsing are h11's (through `pool.py` or httpcore2): nothing here touches a
  socket or a byte of the protocol;
- a failure without an HTTP answer (also while reading a body) leaves as the httpx2 exception
  httpx2's own transport raises for it, so `http.transport_error` stays the one seam that turns
  them into `Transient`/`Unreachable`;
- `Content-Length` is sent for every body and for an empty PUT/POST (as httpx2 does); `Host`
  comes from the caller (it is signed);
- a caller's transport (`httpx2.MockTransport` in unit tests, anything else a user plugs in)
  is used through httpx2's models and yields the same `Answer`;
- an `Answer` is closed exactly once, by its owner, also after a failed read.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpcore2
import httpx2

from bucketfs.backends.base import Sink
from bucketfs.backends.s3.pool import Body, Exchange, Pool

#: httpcore2's exceptions -> httpx2's, most specific first (the order of httpx2's own mapping)
_MAPPED: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)
_LOW_LEVEL = tuple(low for low, _ in _MAPPED)

Headers = list[tuple[bytes, bytes]]


def as_httpx(exc: Exception) -> httpx2.TransportError:
    """The httpx2 exception for an httpcore2 one (its message kept)."""
    for low, high in _MAPPED:
        if isinstance(exc, low):
            return high(str(exc))
    raise TypeError(f"not an httpcore2 transport error: {exc!r}")  # pragma: no cover


class Answer:
    """A response whose body has not been read yet: `aiter_raw()` once, then `aclose()`."""

    __slots__ = ("_chunks", "_close", "_exchange", "_read_all", "headers", "status_code")

    def __init__(
        self,
        status_code: int,
        headers: Headers,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        exchange: Exchange | None = None,
        read_all: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        """`exchange`: the lean pool's exchange when it receives the body itself (`direct`);
        `read_all`: what reads the whole body in one call, if the transport has that."""
        self.status_code = status_code
        #: the raw (name, value) pairs as received, in order
        self.headers = headers
        self._chunks = chunks
        self._close = close
        self._exchange = exchange
        self._read_all = read_all

    async def read(self) -> bytes:
        """The whole body (instead of `aiter_raw`): without the two async generators, which
        were ~15 us of a HEAD's ~300 us of client CPU (its empty body too)."""
        if self._read_all is None:
            return b"".join([chunk async for chunk in self.aiter_raw()])
        try:
            return await self._read_all()
        except _LOW_LEVEL as exc:
            raise as_httpx(exc) from exc

    @property
    def direct(self) -> bool:
        """Whether `readinto` and `receive_each` receive the body themselves
        (`pool.Exchange`); else only `aiter_raw` reads it."""
        return self._exchange is not None

    async def readinto(self, view: memoryview) -> int:
        """The next bytes of the body into `view` (only when `direct`; see
        `pool.Exchange.readinto`)."""
        assert self._exchange is not None
        return await self._exchange.readinto(view)

    async def receive_each(self, view: memoryview, sink: Sink) -> int:
        """The rest of the body through `view`, each fill to `sink` (only when `direct`; see
        `pool.Exchange.receive_each`)."""
        assert self._exchange is not None
        return await self._exchange.receive_each(view, sink)

    def header(self, name: bytes) -> str | None:
        """The value of header `name` (lower case), Latin-1; repeated headers joined by ", "."""
        values = [v.decode("latin-1") for n, v in self.headers if n.lower() == name]
        return ", ".join(values) if values else None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                yield chunk
        except _LOW_LEVEL as exc:
            raise as_httpx(exc) from exc

    async def aclose(self) -> None:
        try:
            await self._close()
        except _LOW_LEVEL as exc:
            raise as_httpx(exc) from exc


class Wire:
    """Sends requests given as parts over one connection pool (or `transport`)."""

    #: every endpoint (http and https) goes through `pool.Pool`; False: through httpcore2's
    #: pool as before the lean path (the requests bench's A/B)
    lean = True

    def __init__(
        self,
        *,
        https: bool,
        max_connections: int,
        timeouts: Mapping[str, float | None],
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        """`timeouts`: httpcore2's per-request `timeout` extension (connect, read, write,
        pool seconds)."""
        self._transport = transport
        self._extensions: dict[str, Any] = {"timeout": dict(timeouts)}
        self._lean: dict[int, Pool] = {}
        self._lean_args: dict[str, Any] | None = None
        self._pool: httpcore2.AsyncConnectionPool | None = None
        self._default_port = 443 if https else 80
        if transport is not None:
            return
        ssl_context = httpx2.create_ssl_context() if https else None
        if self.lean:
            self._lean_args = {
                "max_connections": max_connections,
                "timeouts": dict(timeouts),
                "ssl_context": ssl_context,
            }
        else:
            self._pool = httpcore2.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=5.0,  # httpx2's default
            )

    async def send(
        self,
        method: str,
        scheme: bytes,
        host: bytes,
        port: int | None,
        target: bytes,
        headers: Headers,
        body: Body,
    ) -> Answer:
        """Send one request; the answer's body is not read yet. `target` is the encoded path
        and query exactly as sent; `headers` must hold `Host` (and nothing about framing)."""
        if isinstance(body, bytes) and (body or method in ("PUT", "POST", "PATCH")):
            headers = [*headers, (b"Content-Length", str(len(body)).encode("ascii"))]
        if self._transport is not None:
            return await self._send_transport(method, scheme, host, port, target, headers, body)
        if self._lean_args is not None:
            return await self._send_lean(method, host, port, target, headers, body)
        assert self._pool is not None
        request = httpcore2.Request(
            method.encode("ascii"),
            httpcore2.URL(scheme=scheme, host=host, port=port, target=target),
            headers=headers,
            content=body if isinstance(body, bytes) else _stream(body),
            extensions=self._extensions,
        )
        try:
            response = await self._pool.handle_async_request(request)
        except _LOW_LEVEL as exc:
            raise as_httpx(exc) from exc
        return Answer(response.status, response.headers, response.aiter_stream(), response.aclose)

    async def _send_lean(
        self,
        method: str,
        host: bytes,
        port: int | None,
        target: bytes,
        headers: Headers,
        body: Body,
    ) -> Answer:
        port = self._default_port if port is None else port
        pool = self._lean.get(port)
        if pool is None:
            assert self._lean_args is not None
            pool = self._lean[port] = Pool(port, **self._lean_args)
        exchange = await pool.send(method.encode("ascii"), host, target, headers, body)
        return Answer(
            exchange.status_code,
            exchange.headers,
            exchange.aiter_raw(),
            exchange.aclose,
            exchange if exchange.direct else None,
            exchange.read_all,
        )

    async def _send_transport(
        self,
        method: str,
        scheme: bytes,
        host: bytes,
        port: int | None,
        target: bytes,
        headers: Headers,
        body: Body,
    ) -> Answer:
        assert self._transport is not None
        netloc = host.decode("ascii") + ("" if port is None else f":{port}")
        url = f"{scheme.decode('ascii')}://{netloc}{target.decode('ascii')}"
        content = body if isinstance(body, bytes) else _stream(body)
        request = httpx2.Request(
            method, url, headers=headers, content=content, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        return Answer(
            response.status_code, list(response.headers.raw), response.aiter_raw(), response.aclose
        )

    async def aclose(self) -> None:
        for pool in self._lean.values():
            await pool.aclose()
        if self._pool is not None:
            await self._pool.aclose()
        if self._transport is not None:
            await self._transport.aclose()


async def _stream(body: AsyncIterable[bytes] | AsyncIterable[memoryview]) -> AsyncIterator[bytes]:
    """The pieces as `bytes`, what httpx2 and httpcore2 take."""
    async for chunk in body:
        yield chunk if isinstance(chunk, bytes) else bytes(chunk)
