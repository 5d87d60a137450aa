"""What the two HTTP stores (`s3/`, `swift/`) share: names on the wire, the transport-error
seam, and ranged GETs buffered or streamed.

Owns `quote_key`/`quote_name` (a key or a name in a request path), `header_text`, the headers of
an object's system fields (`SYSTEM_HEADER_NAMES`) and of a write (`write_headers`: each store
says its metadata prefix and which name characters it keeps), `transport_error` (an httpx2
exception -> `Transient` or `Unreachable`), and the ranged GET: its `Range` header, and what its
answer means (`ranged_get`, `ranged_stream`, `ranged_body`: 416 is an empty range, a 200 to a
Range request is the whole object to slice; only an answer of exactly the bytes asked for is
received straight into the reader's buffer). What is a store's own stays in its folder: S3's
status and code mapping (`s3/errors.py`) and its HTTP exchange (`s3/wire.py`, `s3/pool.py`),
Swift's status mapping (`swift/client.py`). Invariants:

- a key is encoded once: every byte but the unreserved characters and `/`, the segments `.`
  and `..` as `%2E` (no HTTP layer may collapse them);
- a request that got no HTTP answer (also while its body was read) becomes an error only in
  `transport_error`, naming the endpoint; nothing here retries (that is `retry.py`);
- an empty range (`end <= start`) sends no request; a streamed answer is closed exactly once,
  when the caller leaves `ranged_stream`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Protocol
from urllib.parse import quote

import httpx2

from bucketfs.backends.base import Body, ChunkBody, Sink
from bucketfs.errors import InvalidRequest, Transient, Unreachable
from bucketfs.types import WriteOptions

_SAFE = "-_.~"
#: `WriteOptions.system` / `ObjectInfo.system` names -> the HTTP headers that carry them (S3
#: and Swift keep the same ones)
SYSTEM_HEADER_NAMES: Mapping[str, str] = {
    "cache_control": "Cache-Control",
    "content_encoding": "Content-Encoding",
    "content_disposition": "Content-Disposition",
    "content_language": "Content-Language",
    "expires": "Expires",
}
#: a key made of unreserved characters and `/` only (what `quote` leaves alone)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.~/-]*")


def quote_key(key: str) -> str:
    """URL-encode a key for a request path: every byte but unreserved characters and `/`."""
    if _PLAIN_KEY.fullmatch(key) and "/." not in key and not key.startswith("."):
        return key  # nothing to encode, no `.` or `..` segment: the usual case
    segments = []
    for segment in key.split("/"):
        if segment in (".", ".."):
            segments.append(segment.replace(".", "%2E"))
        else:
            segments.append(quote(segment, safe=_SAFE))
    return "/".join(segments)


@lru_cache(maxsize=64)
def quote_name(name: str) -> str:
    """A bucket or container name, or any single path segment, fully encoded."""
    return quote(name, safe=_SAFE)


def write_headers(
    opts: WriteOptions | None,
    *,
    meta_prefix: str,
    name_chars: str,
    bad_name: Callable[[str], str],
) -> dict[str, str]:
    """The headers that carry `opts` on a write: Content-Type, the system headers, and each
    metadata name (lower-cased) under `meta_prefix`. A metadata name must be ASCII letters,
    digits or one of `name_chars` (else `InvalidRequest(bad_name(name))`); no value may hold a
    line break. The one rule both HTTP stores follow; each says its prefix and characters."""
    headers: dict[str, str] = {}
    if opts is None:
        return headers
    if opts.content_type:
        headers["Content-Type"] = opts.content_type
    for name, value in opts.system.items():
        if name == "content_type":
            headers["Content-Type"] = value
            continue
        header = SYSTEM_HEADER_NAMES.get(name)
        if header is None:
            raise InvalidRequest(f"unknown system header {name!r}")
        headers[header] = value
    for name, value in opts.metadata.items():
        lname = name.lower()
        if not lname or not all(c.isascii() and (c.isalnum() or c in name_chars) for c in lname):
            raise InvalidRequest(bad_name(name))
        headers[meta_prefix + lname] = value
    for header, value in headers.items():
        if "\r" in value or "\n" in value:
            raise InvalidRequest(f"header {header} contains a line break")
    return headers


def header_text(raw: bytes) -> str:
    """A header value as text: UTF-8 when it is valid UTF-8, else Latin-1 (never fails).
    RFC 2047 encoded words (`=?UTF-8?B?...?=`) are kept as they are."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def transport_error(exc: httpx2.HTTPError, endpoint: str, what: str) -> Transient:
    """The error for a request that got no HTTP answer: refused connections are `Unreachable`
    (naming the endpoint), timeouts and broken connections `Transient`."""
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        return Unreachable(f"{what}: cannot connect to {endpoint}: {exc}")
    if isinstance(exc, httpx2.TimeoutException):
        return Transient(f"{what}: timed out talking to {endpoint} ({type(exc).__name__})")
    return Transient(f"{what}: connection to {endpoint} failed: {type(exc).__name__}: {exc}")


# --- ranged GETs -------------------------------------------------------------------------------


class RawResponse(Protocol):
    """An answer whose body is read raw: `httpx2.Response` or `s3.wire.Answer`."""

    @property
    def status_code(self) -> int: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


#: the statuses a ranged GET may answer with
RANGED_OK = frozenset({200, 206, 416})

#: sends the GET with these headers (open when the flag says stream) and returns the answer
#: and its body (b"" when streamed); the store's request loop, retries included
SendGet = Callable[[Mapping[str, str], bool], Awaitable[tuple[RawResponse, bytes]]]


def range_header(start: int, end: int | None) -> dict[str, str]:
    """The `Range` header for bytes [start, end); none for a whole object."""
    if start > 0 or end is not None:
        return {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
    return {}


async def ranged_get(
    send: SendGet, headers: Mapping[str, str], start: int, end: int | None
) -> bytes:
    """Bytes [start, end) of the object, buffered; `headers` hold `range_header`'s."""
    if end is not None and end <= start:
        return b""
    response, content = await send(headers, False)
    return ranged_content(response.status_code, headers, content, start, end)


@asynccontextmanager
async def ranged_stream(
    send: SendGet,
    headers: Mapping[str, str],
    start: int,
    end: int | None,
    endpoint: str,
    what: str,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """Bytes [start, end) of the object as they arrive; the answer is closed on leaving."""
    if end is not None and end <= start:
        yield no_chunks()
        return
    response, _ = await send(headers, True)
    try:
        yield ranged_chunks(response, headers, start, end, endpoint, what)
    finally:
        await response.aclose()


class DirectResponse(RawResponse, Protocol):
    """An answer that may receive its body into a buffer (`s3.wire.Answer`)."""

    @property
    def direct(self) -> bool: ...

    async def readinto(self, view: memoryview) -> int: ...

    async def receive_each(self, view: memoryview, sink: Sink) -> int: ...


#: `SendGet` of a store whose answers are `DirectResponse`s
SendDirectGet = Callable[[Mapping[str, str], bool], Awaitable[tuple[DirectResponse, bytes]]]


@asynccontextmanager
async def ranged_body(
    send: SendDirectGet,
    headers: Mapping[str, str],
    start: int,
    end: int | None,
    endpoint: str,
    what: str,
) -> AsyncIterator[Body]:
    """Bytes [start, end) of the object as a `Body`: received straight into the reader's
    buffer when the answer can (`direct`: the bytes asked for, a 206 or a whole object), else
    over `ranged_chunks`. The answer is closed on leaving."""
    if end is not None and end <= start:
        yield ChunkBody(no_chunks())
        return
    response, _ = await send(headers, True)
    try:
        whole = response.status_code == 206 or (
            response.status_code == 200 and "Range" not in headers
        )
        if whole and response.direct:
            yield _DirectBody(response, endpoint, what)
        else:
            yield ChunkBody(ranged_chunks(response, headers, start, end, endpoint, what))
    finally:
        await response.aclose()


class _DirectBody:
    """`DirectResponse.readinto` with its transport errors as `transport_error`."""

    __slots__ = ("_endpoint", "_response", "_what")

    def __init__(self, response: DirectResponse, endpoint: str, what: str) -> None:
        self._response = response
        self._endpoint = endpoint
        self._what = what

    async def readinto(self, view: memoryview) -> int:
        try:
            return await self._response.readinto(view)
        except httpx2.TransportError as exc:
            raise transport_error(exc, self._endpoint, self._what) from exc

    async def receive_each(self, view: memoryview, sink: Sink, *, thread_from: int = 0) -> int:
        """Every fill received and written in one worker-thread job (`thread_from` moot)."""
        try:
            return await self._response.receive_each(view, sink)
        except httpx2.TransportError as exc:
            raise transport_error(exc, self._endpoint, self._what) from exc


def ranged_content(
    status: int, sent: Mapping[str, str], content: bytes, start: int, end: int | None
) -> bytes:
    """The bytes [start, end) from a buffered answer to a GET sent with headers `sent`."""
    if status == 416:
        return b""  # the range starts at or after the end: empty, not an error
    if status == 200 and "Range" in sent:  # the server ignored Range
        return content[start:end]
    return content


def ranged_chunks(
    response: RawResponse,
    sent: Mapping[str, str],
    start: int,
    end: int | None,
    endpoint: str,
    what: str,
) -> AsyncIterator[bytes]:
    """The bytes [start, end) of a streamed answer, chunk by chunk; a broken connection while
    reading becomes `transport_error`."""
    if response.status_code == 416:
        return no_chunks()
    chunks = _chunks(response, endpoint, what)
    if response.status_code == 200 and "Range" in sent:
        return _sliced(chunks, start, end)
    return chunks


async def no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _chunks(response: RawResponse, endpoint: str, what: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx2.TransportError as exc:
        raise transport_error(exc, endpoint, what) from exc


async def _sliced(
    chunks: AsyncIterator[bytes], start: int, end: int | None
) -> AsyncIterator[bytes]:
    """The bytes [start, end) of a whole-object stream (for servers that ignore Range)."""
    offset = 0
    async for chunk in chunks:
        lo, hi = offset, offset + len(chunk)
        offset = hi
        if hi <= start:
            continue
        if end is not None and lo >= end:
            break
        yield chunk[max(start - lo, 0) : None if end is None else max(end - lo, 0)]
