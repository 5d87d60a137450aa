"""File contents: reading clean objects, staging writes, uploading whole files.

Owns the data path of one mount. Reads of a file nobody is writing go to the `ChunkReader`
(ranged GETs conditional on the ETag). The first write or truncate of a file copies the object
into a `Staging` file; later reads and writes of that file use the staging copy; `upload`
sends the staging copy to the server (one PUT up to `part_size`, parallel multipart above) with
the node's metadata, and marks it clean only if nothing changed meanwhile.

Invariants: a node's content lock is held for every staging change and for a whole upload, so
an upload never reads a half-applied write; `Staging.dirty` is cleared only by an upload of the
generation it read; a failed multipart upload is aborted; an unlinked node is never uploaded.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from bucketfs.backends.base import MAX_PARTS, MAX_PUT_SIZE, Backend
from bucketfs.concurrency import for_each
from bucketfs.errors import BucketfsError
from bucketfs.inodes import Kind, Node
from bucketfs.meta import posix_metadata
from bucketfs.reader import ChunkReader, ObjectRef, ReadState
from bucketfs.staging import Staging
from bucketfs.types import PutResult, WriteOptions

log = logging.getLogger(__name__)

DIRECTORY_CONTENT_TYPE = "application/x-directory"


@dataclass(frozen=True, slots=True)
class DataOptions:
    part_size: int = 16 << 20
    max_parallel: int = 8


def write_options(node: Node) -> WriteOptions:
    """The metadata an upload of `node` carries: its user metadata plus POSIX attributes."""
    metadata = dict(node.metadata)
    metadata.update(posix_metadata(node.st_mode, node.uid, node.gid, node.mtime))
    content_type = node.content_type
    if content_type is None:
        if node.kind is Kind.DIR:
            content_type = DIRECTORY_CONTENT_TYPE
        else:
            content_type = mimetypes.guess_type(node.name)[0] or "application/octet-stream"
    return WriteOptions(metadata=metadata, content_type=content_type, system=dict(node.system))


class FileData:
    def __init__(
        self,
        backend: Backend,
        reader: ChunkReader,
        staging_dir: Path,
        options: DataOptions,
    ) -> None:
        self._backend = backend
        self._reader = reader
        self._staging_dir = staging_dir
        self._opts = options
        self._limiter = trio.CapacityLimiter(options.max_parallel)
        self.locks: dict[int, trio.Lock] = {}

    def lock(self, node: Node) -> trio.Lock:
        lock = self.locks.get(node.ino)
        if lock is None:
            lock = self.locks[node.ino] = trio.Lock()
        return lock

    def forget(self, ino: int) -> None:
        lock = self.locks.get(ino)
        if lock is not None and not lock.locked():
            del self.locks[ino]

    # --- reading ---------------------------------------------------------------------------

    async def read(self, node: Node, offset: int, size: int, state: ReadState) -> bytes:
        staging = node.staging
        if staging is not None and staging.loaded:
            return staging.read(offset, size)
        if node.etag is None or node.bucket is None:
            return b""
        ref = ObjectRef(node.bucket, node.key, node.etag, node.size)
        return await self._reader.read(ref, offset, size, state)

    async def read_all(self, node: Node) -> bytes:
        assert node.bucket is not None
        if node.staging is not None and node.staging.loaded:
            return node.staging.read(0, node.staging.size)
        return await self._backend.get(node.bucket, node.key, if_match=node.etag or None)

    # --- staging -----------------------------------------------------------------------------

    async def staging_for(self, node: Node, *, load: bool) -> Staging:
        """The node's staging copy, holding the object's content when `load` (lock held)."""
        staging = node.staging
        if staging is None:
            staging = node.staging = Staging(self._staging_dir)
        if staging.loaded:
            return staging
        if load and node.etag is not None and node.size > 0:
            await self._download(node, staging)
        staging.loaded = True
        staging.size = staging.size if staging.dirty else (node.size if load else 0)
        return staging

    async def _download(self, node: Node, staging: Staging) -> None:
        assert node.bucket is not None
        assert node.etag is not None
        offset = 0
        async with self._backend.get_stream(node.bucket, node.key, if_match=node.etag) as body:
            async for chunk in body:
                os.pwrite(staging.fd, chunk, offset)
                offset += len(chunk)
        os.ftruncate(staging.fd, offset)
        staging.size = offset

    # --- uploading ---------------------------------------------------------------------------

    async def upload(self, node: Node) -> None:
        """Send the staging copy to the server if it changed (takes the node's lock)."""
        async with self.lock(node):
            await self.upload_locked(node)

    async def upload_locked(self, node: Node) -> None:
        staging = node.staging
        if staging is None or not staging.dirty or node.unlinked or node.bucket is None:
            return
        generation = staging.generation
        opts = write_options(node)
        started = time.monotonic()
        if staging.size <= self._opts.part_size:
            data = await trio.to_thread.run_sync(staging.read, 0, staging.size)
            result = await self._backend.put(node.bucket, node.key, data, opts)
        else:
            result = await self._multipart(node.bucket, node.key, staging, opts)
        log.debug(
            "uploaded %s/%s (%d bytes) in %.3fs",
            node.bucket,
            node.key,
            staging.size,
            time.monotonic() - started,
        )
        node.etag = result.etag
        node.version_id = result.version_id
        node.size = staging.size
        node.metadata = dict(opts.metadata)
        node.content_type = opts.content_type
        node.kernel_etag = result.etag
        if staging.generation == generation:
            staging.dirty = False

    def part_size_for(self, size: int) -> int:
        part = self._opts.part_size
        while (size + part - 1) // part > MAX_PARTS:
            part *= 2
        return part

    async def _multipart(
        self, bucket: str, key: str, staging: Staging, opts: WriteOptions
    ) -> PutResult:
        size = staging.size

        async def send(upload_id: str, number: int, start: int, end: int) -> str:
            data = await trio.to_thread.run_sync(staging.read, start, end - start)
            return await self._backend.upload_part(bucket, key, upload_id, number, data)

        return await self._multipart_upload(bucket, key, opts, size, self.part_size_for(size), send)

    async def copy_object(
        self,
        bucket: str,
        src_key: str,
        dst_key: str,
        size: int,
        opts: WriteOptions | None,
        *,
        etag: str | None = None,
    ) -> PutResult:
        """Server-side copy of any size (multipart copy above the single-copy limit)."""
        if size <= MAX_PUT_SIZE:
            return await self._backend.copy(bucket, src_key, dst_key, opts, if_match=etag)
        if opts is None:
            info = await self._backend.head(bucket, src_key)
            opts = WriteOptions(info.metadata, info.content_type, dict(info.system))

        async def send(upload_id: str, number: int, start: int, end: int) -> str:
            return await self._backend.upload_part_copy(
                bucket, dst_key, upload_id, number, src_key, start, end, if_match=etag
            )

        part = max(self.part_size_for(size), 512 << 20)
        return await self._multipart_upload(bucket, dst_key, opts, size, part, send)

    async def _multipart_upload(
        self,
        bucket: str,
        key: str,
        opts: WriteOptions,
        size: int,
        part: int,
        send: Callable[[str, int, int, int], Awaitable[str]],
    ) -> PutResult:
        """One multipart upload whose parts `send(upload_id, number, start, end)` makes, at
        most `max_parallel` at a time; aborted on any failure."""
        upload_id = await self._backend.create_multipart(bucket, key, opts)
        etags: dict[int, str] = {}

        async def one(item: tuple[int, int]) -> None:
            number, start = item
            etags[number] = await send(upload_id, number, start, min(start + part, size))

        try:
            await for_each(enumerate(range(0, size, part), start=1), one, self._limiter)
            return await self._backend.complete_multipart(
                bucket, key, upload_id, sorted(etags.items())
            )
        except BaseException:
            await self._abort(bucket, key, upload_id)
            raise

    async def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a failed multipart upload, even while being cancelled; never raise."""
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            try:
                await self._backend.abort_multipart(bucket, key, upload_id)
            except BucketfsError as exc:
                log.warning("could not abort upload %s of %s/%s: %s", upload_id, bucket, key, exc)
