"""The one async protocol every object store implements.

Owns the contract between the filesystem core and the stores. Invariants every implementation
keeps (checked by `tests/backends/test_contract.py` against real servers):

- errors are raised only as `bucketfs.errors.BackendError` subclasses: a missing object is
  `NotFound`, a missing bucket `BucketNotFound`, refused credentials `AccessDenied`, a failed
  `if_match`/`if_none_match` `PreconditionFailed`; transient failures are retried inside the
  backend (backoff, jitter, deadline) and surface as `Transient` only when the deadline passed;
- listings are in ascending key order (UTF-8 byte order), a `next_token` of None means the end;
- ETags are returned without quotes; `last_modified` is POSIX seconds, UTC;
- `get` ranges are half-open `[start, end)`; `end=None` reads to the end of the object; a range
  past the end is clipped, never an error;
- `put` is atomic: readers see the old object or the new one, never a mix.
- `get_body` is `get_stream` read into the caller's buffer (`Body.readinto`); its default
  copies the chunks (`ChunkBody`), a store may receive straight into the buffer instead (S3
  over plain HTTP, `s3/pool.py`). `Body.receive_each` hands each fill of the buffer to a
  `Sink` (`write` off the trio thread, then `landed` in the caller's task); a store that
  receives in a worker thread does both in one job per call (S3 over plain HTTP).

Optional capabilities (what not every store has: its region, its usage figures and quota
(`space`), the metadata of a bucket, its limit on user metadata, per-object expiry, checksums,
upload URLs) are declared here with the answer of a store that lacks them (None, S3's limit,
False, a plain HEAD, NotSupported). A store states what it has by subclassing `Backend` and
overriding them; nothing outside `backends/` asks a backend's type or probes it with `getattr`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from bucketfs.errors import BucketfsError, NotSupported
from bucketfs.types import (
    BucketInfo,
    ListPage,
    ObjectInfo,
    PutResult,
    VersionPage,
    WriteOptions,
)

#: S3's limits; a backend with other limits says so in its own constants.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PUT_SIZE = 5 * 1024**3
#: the largest object S3 stores (5 TiB); a file is never made larger (EFBIG)
MAX_OBJECT_SIZE = 5 * 1024**4
#: S3's limit on the user metadata of an object (names and values, in UTF-8 bytes)
MAX_METADATA_BYTES = 2048


@dataclass(frozen=True, slots=True)
class Space:
    """What a store says about the room a bucket (or the whole account) takes and has, for `df`
    and the bucket's `user.bucketfs.*` settings. None: the store does not say."""

    #: bytes and objects of the current objects (old versions not counted where known)
    bytes_used: int
    object_count: int
    #: a quota set on the bucket (or account): df's total is then the quota
    quota_bytes: int | None = None
    quota_count: int | None = None
    #: room left where the store has a real size (the local store: its disk's free space)
    free_bytes: int | None = None
    free_files: int | None = None


class Sink(Protocol):
    """Where `Body.receive_each` puts each fill of the caller's buffer."""

    def write(self, filled: memoryview) -> bool:
        """Keep the bytes of `filled`, in a worker thread (or the caller's, below
        `receive_each`'s `thread_from`): the next fill overwrites them once this returns.
        False: receive no more now (`filled` is left as it is in the buffer)."""
        ...

    def landed(self) -> None:
        """In the task that called `receive_each`, after each `write` returned, in order; what
        it raises ends the receive (after its worker thread stopped) and leaves from there."""
        ...


class Body(Protocol):
    """A GET's body, read into the caller's buffer (`Backend.get_body`)."""

    async def readinto(self, view: memoryview) -> int:
        """Fill `view` with the next bytes: all of it, fewer only at the body's end (0 once it
        ended) or when the connection broke after some bytes came: the next call raises that
        (a `BackendError`, as `get_stream`'s chunks do)."""
        ...

    async def receive_each(self, view: memoryview, sink: Sink, *, thread_from: int = 0) -> int:
        """Receive the rest of the body through `view`: fill it (`readinto`'s rules), then
        `sink.write` the fill and `sink.landed()`, until the body ended, broke off (the next
        call raises that) or `write` said stop; returns the bytes received (every fill passed
        to `write`). A fill of `thread_from` bytes or more is written in a worker thread."""
        ...


async def receive_by_reads(
    readinto: Callable[[memoryview], Awaitable[int]],
    view: memoryview,
    sink: Sink,
    thread_from: int,
) -> int:
    """`Body.receive_each` over `readinto`: each fill received in this task, written in a
    worker thread from `thread_from` bytes on (a store that receives in this task)."""
    total = 0
    while True:
        got = await readinto(view)
        if not got:
            return total
        filled = view[:got]
        if got >= thread_from:
            go_on = await trio.to_thread.run_sync(sink.write, filled)
        else:
            go_on = sink.write(filled)
        total += got
        sink.landed()
        if not go_on or got < len(view):
            return total


class ChunkBody:
    """A `Body` over `get_stream`'s chunks (each byte copied once, into the view)."""

    __slots__ = ("_chunks", "_error", "_pending")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._error: BaseException | None = None

    async def readinto(self, view: memoryview) -> int:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        got = 0
        while got < len(view):
            if not self._pending:
                try:
                    self._pending = memoryview(await anext(self._chunks))
                except StopAsyncIteration:
                    break
                except Exception as exc:  # a broken connection: the bytes so far first
                    if not got:
                        raise
                    self._error = exc
                    break
            n = min(len(self._pending), len(view) - got)
            view[got : got + n] = self._pending[:n]
            self._pending = self._pending[n:]
            got += n
        return got

    async def receive_each(self, view: memoryview, sink: Sink, *, thread_from: int = 0) -> int:
        return await receive_by_reads(self.readinto, view, sink, thread_from)

    async def finish(self) -> None:
        """After the last read: the chunks run to their end when nothing is left over (an
        HTTP answer read to its end keeps its connection for the next request)."""
        if self._pending or self._error is not None:
            return
        with contextlib.suppress(StopAsyncIteration, BucketfsError):
            await anext(self._chunks)


@asynccontextmanager
async def chunk_body(
    stream: AbstractAsyncContextManager[AsyncIterator[bytes]],
) -> AsyncIterator[Body]:
    """`get_stream`'s answer as a `Body`."""
    async with stream as chunks:
        body = ChunkBody(chunks)
        try:
            yield body
            await body.finish()
        finally:
            if inspect.isasyncgen(chunks):
                await chunks.aclose()


class Backend(Protocol):
    """An object store: buckets holding objects addressed by key."""

    #: short name for logs and errors, e.g. "s3 http://127.0.0.1:8333"
    description: str
    #: whether the store keeps object versions at all (per bucket see `get_versioning`)
    supports_versions: bool
    #: the largest object the store takes: truncating or writing past it is EFBIG
    max_object_size: int

    # --- optional capabilities, with the answer of a store that lacks them -----------------
    #: the region the store lives in (`user.bucketfs.region`); None: the store has none
    region: str | None = None
    #: the most user metadata an object may carry (names and values, UTF-8 bytes)
    max_metadata_bytes: int = MAX_METADATA_BYTES
    #: whether an object can be given a time at which the store deletes it (Swift's
    #: `X-Delete-At`), carried as `system["delete_at"]` (see `ObjectInfo.system`); S3 has
    #: bucket lifecycle rules instead
    expiry: bool = False
    #: whether the store enforces `put(if_none_match=True)` (`If-None-Match: *`): then an
    #: exclusive create through a mount may trust a fresh listing, the upload's refusal
    #: catching a name another client made meanwhile (docs/core.md)
    exclusive_put: bool = False
    #: whether a copy of an object onto itself with new metadata leaves its data in place
    #: (a change of metadata only, milliseconds at any size): the local store (a new row),
    #: Swift (a POST), SeaweedFS. None: not known; AWS S3 copies the data (seconds per GiB).
    #: `-o early_parts=auto` sends a large new file's parts while it is written only where
    #: this is True (cache/early.py: its final metadata is such a copy) and `remote`
    copy_in_place: bool | None = None
    #: whether requests cross a network (False: the local store, in this process, whose
    #: uploads are disk copies: sending parts early there only competes with the writer)
    remote: bool = True

    async def usage(self, bucket: str) -> tuple[int, int] | None:
        """(bytes, objects) of the current objects of `bucket`, for `df`, when the store can
        say so in one cheap request; None when it cannot (S3 has no such request)."""
        return None

    async def space(self, bucket: str | None) -> Space | None:
        """Usage and quota of `bucket` (None: of the whole account) in one cheap request, for
        `df`; None when the store cannot say so cheaply (S3)."""
        return None

    async def bucket_metadata(self, bucket: str) -> dict[str, str] | None:
        """The user metadata of a bucket (keys lower case, without the protocol prefix); None
        when the store keeps none on buckets."""
        return None

    async def set_bucket_metadata(self, bucket: str, changes: dict[str, str | None]) -> None:
        """Set (a value) or remove (None) keys of the bucket's user metadata, other keys kept;
        NotSupported when the store keeps none on buckets."""
        raise NotSupported("this store keeps no metadata on buckets")

    async def head_checksums(
        self, bucket: str, key: str, *, version_id: str | None = None
    ) -> ObjectInfo:
        """Like `head`, with `ObjectInfo.checksums` filled where the store keeps checksums. S3
        returns them only when asked, and asking is not free (on AWS a KMS-encrypted object
        then needs `kms:Decrypt`), so plain `head` never asks."""
        return await self.head(bucket, key, version_id=version_id)

    async def head_and_get(
        self, bucket: str, key: str, *, up_to: int
    ) -> tuple[ObjectInfo, bytes] | None:
        """What `head` says and the object's first `up_to` bytes (all of a smaller one), in
        one request; None where the store has no such request (the caller sends a HEAD)."""
        return None

    def presign_upload(self, bucket: str, key: str, expires: int) -> str:
        """A URL that plain HTTP PUT can upload the object's new content to for `expires`
        seconds (a presigned PUT, a Swift TempURL for PUT)."""
        raise NotSupported(f"{self.description} has no upload URLs")

    # --- buckets -----------------------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]: ...

    async def head_bucket(self, bucket: str) -> None:
        """Raise BucketNotFound / AccessDenied / Transient; return if the bucket is usable."""

    async def create_bucket(self, bucket: str) -> None: ...

    async def delete_bucket(self, bucket: str) -> None:
        """Raise BucketNotEmpty if it still holds objects."""

    async def get_versioning(self, bucket: str) -> str:
        """'Enabled', 'Suspended' or 'Off'."""

    async def set_versioning(self, bucket: str, enabled: bool) -> None: ...

    # --- reading -----------------------------------------------------------------------
    async def list_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One page of keys under `prefix`; with a delimiter, deeper keys fold into prefixes."""

    async def list_versions_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        key_marker: str | None = None,
        version_marker: str | None = None,
        max_keys: int = 1000,
    ) -> VersionPage: ...

    async def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo: ...

    async def get(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> bytes:
        """Bytes [start, end) of the object, buffered in memory."""

    def get_stream(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Like `get`, but yields the body in chunks as they arrive."""

    def get_body(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> AbstractAsyncContextManager[Body]:
        """Like `get_stream`, read into the caller's buffer: a store whose connection allows
        it (S3 over plain HTTP) receives the bytes straight into it, off the trio thread."""
        stream = self.get_stream(bucket, key, start, end, if_match=if_match, version_id=version_id)
        return chunk_body(stream)

    # --- writing -----------------------------------------------------------------------
    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        opts: WriteOptions | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> PutResult:
        """Store the whole object. `if_none_match=True` fails if the key exists."""

    async def create_multipart(
        self, bucket: str, key: str, opts: WriteOptions | None = None
    ) -> str:
        """Start a multipart upload; returns its upload id."""

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
    ) -> str:
        """Upload one part (numbered from 1); returns its ETag."""

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        src_key: str,
        start: int,
        end: int,
        *,
        src_version_id: str | None = None,
        if_match: str | None = None,
    ) -> str:
        """Make part `part_number` from bytes [start, end) of `src_key`; returns its ETag."""

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult: ...

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None: ...

    async def copy(
        self,
        bucket: str,
        src_key: str,
        dst_key: str,
        opts: WriteOptions | None = None,
        *,
        src_version_id: str | None = None,
        if_match: str | None = None,
    ) -> PutResult:
        """Server-side copy of an object up to MAX_PUT_SIZE. `opts=None` keeps the source's
        metadata; otherwise the metadata is replaced by `opts` (also for src_key == dst_key)."""

    async def delete(self, bucket: str, key: str) -> None:
        """Delete the key; deleting a missing key is not an error."""

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        """Delete up to any number of keys (batched as the store allows)."""

    # --- misc --------------------------------------------------------------------------
    def presign(self, bucket: str, key: str, expires: int, *, version_id: str | None = None) -> str:
        """A URL that plain HTTP GET can download for `expires` seconds."""

    async def aclose(self) -> None: ...
