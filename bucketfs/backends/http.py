"""The one seam where HTTP answers and transport failures become `bucketfs.errors` classes.

Owns `error_class` (status + S3 error code -> class), `transport_error` (an httpx2 exception ->
`Transient` or `Unreachable`), and what a ranged GET's answer means (`ranged_content`,
`ranged_chunks`: 416 is an empty range, a 200 to a Range request is the whole object to slice).
Invariants: every status a server can send maps to exactly one `BackendError` subclass;
everything that `retry.retry_call` retries is a `Transient`, and nothing else is;
`tests/unit/test_errors.py` walks `HANDLED_STATUSES` and fails on an unmapped one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import httpx2

from bucketfs.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    Transient,
    Unreachable,
)

#: statuses retried with backoff (then surfaced as `Transient`)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: every status `error_class` maps on purpose; all others fall back by their hundreds
HANDLED_STATUSES = frozenset(
    {301, 307, 400, 401, 403, 404, 405, 409, 411, 412, 413, 416, 429, 500, 501, 502, 503, 504}
)

#: S3 error codes that are transient whatever their status says
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "ConditionalRequestConflict",
    }
)

_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "RequestTimeTooSkewed",
    }
)

#: status implied by a code when only the code is known (per-key errors of DeleteObjects)
_CODE_STATUS = {
    "NoSuchKey": 404,
    "NoSuchBucket": 404,
    "NoSuchVersion": 404,
    "NoSuchUpload": 404,
    "PreconditionFailed": 412,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "InvalidRange": 416,
}


def error_class(status: int | None, code: str | None = None) -> type[BackendError]:
    """The error class for an S3 answer: `status` (None when only a code is known, as in the
    per-key errors of DeleteObjects) and the `<Code>` of the error body (None for HEAD)."""
    if status is None:
        status = 403 if code in _DENIED_CODES else _CODE_STATUS.get(code or "", 500)
    if code in _TRANSIENT_CODES:
        return Transient
    if code in _DENIED_CODES or status in (401, 403):
        return AccessDenied
    if status == 404:
        return BucketNotFound if code == "NoSuchBucket" else NotFound
    if status == 412:
        return PreconditionFailed
    if status == 409:
        if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
            return AlreadyExists
        if code == "BucketNotEmpty":
            return BucketNotEmpty
        return InvalidRequest
    if status in RETRY_STATUSES or (status >= 500 and status != 501):
        return Transient
    # 3xx (wrong region, redirects we do not follow), other 4xx, 501 NotImplemented
    return InvalidRequest


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
    """An answer whose body is read raw: `httpx2.Response` or `wire.Answer`."""

    @property
    def status_code(self) -> int: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...


#: the statuses a ranged GET may answer with
RANGED_OK = frozenset({200, 206, 416})


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
