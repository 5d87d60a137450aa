"""File contents for the namespace core: a façade over the block cache and write-back.

Owns the link between a `Node` and its `CachedFile`, and server-side copies. Reads and writes
go to `cache.store.BlockCache`; dirty files are uploaded by `cache.writeback.WriteBack` after
close (`schedule`), on fsync (`flush`) and at unmount (`drain`).

Invariants: a node's `cached` is the cache's current file for its key (re-attached when the
cache dropped it); the metadata a dirty file will be uploaded with is refreshed from the node
before every change the node's attributes see; a writer waits (throttled) while the cache holds
more than `max_dirty` dirty bytes, instead of filling the disk.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Any

import trio

from bucketfs.backends.base import MAX_PUT_SIZE, Backend
from bucketfs.cache.store import BlockCache, CachedFile, ReadState
from bucketfs.cache.writeback import WriteBack, abort_quietly
from bucketfs.concurrency import for_each
from bucketfs.core.attrs import posix_metadata
from bucketfs.core.nodes import Kind, Node
from bucketfs.types import PutResult, WriteOptions

DIRECTORY_CONTENT_TYPE = "application/x-directory"


@dataclass(frozen=True, slots=True)
class DataOptions:
    max_parallel: int = 8
    max_dirty: int = 1 << 30


def write_options(node: Node) -> WriteOptions:
    """The metadata an upload of `node` carries: its user metadata plus POSIX attributes."""
    metadata = dict(node.metadata)
    metadata.update(posix_metadata(node.st_mode, node.uid, node.gid, node.mtime, node.atime))
    content_type = node.content_type
    if content_type is None:
        if node.kind is Kind.DIR:
            content_type = DIRECTORY_CONTENT_TYPE
        else:
            content_type = mimetypes.guess_type(node.name)[0] or "application/octet-stream"
    return WriteOptions(metadata=metadata, content_type=content_type, system=dict(node.system))


def upload_meta(node: Node) -> dict[str, Any]:
    opts = write_options(node)
    return {
        "metadata": dict(opts.metadata),
        "content_type": opts.content_type,
        "system": dict(opts.system),
    }


class FileData:
    def __init__(
        self,
        backend: Backend,
        cache: BlockCache,
        writeback: WriteBack,
        options: DataOptions,
    ) -> None:
        self._backend = backend
        self.cache = cache
        self.writeback = writeback
        self._opts = options
        self._limiter = trio.CapacityLimiter(options.max_parallel)
        self.locks: dict[int, trio.Lock] = {}
        self._clean = trio.Event()  # set whenever an upload finished: throttled writers retry

    def lock(self, node: Node) -> trio.Lock:
        lock = self.locks.get(node.ino)
        if lock is None:
            lock = self.locks[node.ino] = trio.Lock()
        return lock

    def dropped(self, ino: int, cf: CachedFile | None) -> None:
        """The node `ino` is gone (forgotten by the kernel, closed, saved): drop its lock, and
        its cached file if nothing else needs it."""
        lock = self.locks.get(ino)
        if lock is not None and not lock.locked():
            del self.locks[ino]
        if cf is not None:
            self.cache.release(cf)

    def uploaded(self) -> None:
        event, self._clean = self._clean, trio.Event()
        event.set()

    # --- the node's cached file --------------------------------------------------------------

    def cached(self, node: Node) -> CachedFile:
        cf = node.cached
        if cf is not None and cf.id in self.cache.files:
            if cf.dirty or cf.key is None or cf.base_etag == node.etag:
                return cf
            node.cached = None  # the object changed on the server since it was cached
        assert node.bucket is not None
        cf = self.cache.find(node.bucket, node.key)
        if cf is None or (not cf.dirty and cf.base_etag != node.etag):
            cf = self.cache.attach(node.bucket, node.key, node.etag, node.size)
        node.cached = cf
        return cf

    def create(self, node: Node) -> CachedFile:
        assert node.bucket is not None
        cf = self.cache.create(node.bucket, node.key, upload_meta(node))
        node.cached = cf
        return cf

    def refresh_meta(self, node: Node) -> None:
        """A dirty file's pending upload carries the node's current attributes."""
        cf = node.cached
        if cf is not None and cf.dirty:
            self.cache.set_meta(cf, upload_meta(node))

    # --- reading and writing -----------------------------------------------------------------

    async def read(self, node: Node, offset: int, size: int, state: ReadState) -> bytes:
        if node.etag is None and node.cached is None:
            return b""
        return await self.cache.read(self.cached(node), offset, size, state)

    async def read_all(self, node: Node) -> bytes:
        cf = self.cached(node)
        return await self.cache.read(cf, 0, cf.size, ReadState())

    async def write(self, node: Node, offset: int, data: bytes) -> int:
        await self._throttle()
        cf = self.cached(node)
        if not cf.dirty:
            self.cache.set_meta(cf, upload_meta(node))
        written = await self.cache.write(cf, offset, data)
        node.size = cf.size
        return written

    async def truncate(self, node: Node, size: int) -> None:
        cf = self.cached(node)
        if not cf.dirty:
            self.cache.set_meta(cf, upload_meta(node))
        await self.cache.truncate(cf, size)
        node.size = size

    async def _throttle(self) -> None:
        while self.cache.dirty_bytes > self._opts.max_dirty:
            for cf in self.cache.dirty_files():
                self.writeback.schedule(cf, now=True)
            await self._clean.wait()

    # --- uploads -------------------------------------------------------------------------------

    def closed(self, node: Node) -> None:
        """The last writable handle was released (or a truncate without one): upload the
        file in the background if it changed. Never called for a FLUSH: the data is in
        the cache's index since each write returned."""
        cf = node.cached
        if cf is not None and cf.dirty:
            self.cache.set_meta(cf, upload_meta(node))
            self.writeback.released(cf)
            # without a configured delay, a close also ends a worker's wait for quiet
            self.writeback.schedule(cf, now=self.writeback.delay == 0)

    async def previous_save(self, node: Node) -> None:
        """Before a writer opens the file: its last save's upload lands first (WriteBack)."""
        cf = node.cached
        if cf is not None and cf.dirty:
            await self.writeback.previous_save(cf)

    async def flush(self, node: Node) -> None:
        """Return once the node's content as of now is on the server."""
        cf = node.cached
        if cf is not None and (cf.dirty or cf.upload_scope is not None):
            self.cache.set_meta(cf, upload_meta(node))
            await self.writeback.flush(cf)

    # --- server-side copies --------------------------------------------------------------------

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
        part = max(self.writeback.part_size_for(size), 512 << 20)
        upload_id = await self._backend.create_multipart(bucket, dst_key, opts)
        etags: dict[int, str] = {}

        async def one(item: tuple[int, int]) -> None:
            number, start = item
            etags[number] = await self._backend.upload_part_copy(
                bucket,
                dst_key,
                upload_id,
                number,
                src_key,
                start,
                min(start + part, size),
                if_match=etag,
            )

        try:
            await for_each(enumerate(range(0, size, part), start=1), one, self._limiter)
            return await self._backend.complete_multipart(
                bucket, dst_key, upload_id, sorted(etags.items())
            )
        except BaseException:
            await abort_quietly(self._backend, bucket, dst_key, upload_id)
            raise
