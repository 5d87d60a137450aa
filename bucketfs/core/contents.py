"""File contents for the namespace core: the one door from core/ into the cache.

Owns the link between a `Node` and its `CachedFile`, the block cache and write-back of one
mount (built and started here), and server-side copies. Reads and writes go to
`cache.store.BlockCache`; dirty files are uploaded by `cache.writeback.WriteBack` once left
alone for `writeback_delay` after close (`closed`; changes of the attributes meanwhile go up
with the content), at once on fsync (`flush`) and at unmount (`drain`). No other core module
calls the cache: the namespace learns about unsaved files through `Unsaved`, and about
confirmed uploads and conflicts through the callbacks given at construction (`saved`,
`conflicted`).

Invariants: a node's `cached` is the cache's current file for its key (re-attached when the
cache dropped it); the metadata a dirty file will be uploaded with is refreshed from the node
before every change the node's attributes see; a writer waits (throttled) while the cache holds
more than `max_dirty` dirty bytes, instead of filling the disk; a file whose upload is in
flight is moved, renamed or dropped only once that upload landed; a rename moves the server's
object as the node last saw it (its ETag), never a clean cached copy of an older version; a
file not uploaded yet renamed onto an existing name replaces that name's object by its upload
(marked `replaces`: other clients see the old object until then, never no object), so when it
leaves the name first (unlink, rename away) the old object is deleted then (deferred).
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bucketfs.backends.base import MAX_PUT_SIZE
from bucketfs.cache.attrstore import DEFAULT_ROWS, AttrStore
from bucketfs.cache.deletes import DeferredDeletes
from bucketfs.cache.store import BlockCache, CachedFile
from bucketfs.cache.store import ReadState as ReadState  # a handle's readahead state
from bucketfs.cache.writeback import Uploaded, WriteBack
from bucketfs.concurrency import Foreground, for_each
from bucketfs.core.attrs import posix_metadata
from bucketfs.core.nodes import Kind, Node
from bucketfs.errors import BucketfsError
from bucketfs.types import PutResult, WriteOptions

log = logging.getLogger(__name__)

DIRECTORY_CONTENT_TYPE = "application/x-directory"
#: metadata a file being written changes with every write: an early multipart upload is
#: created without them (cache/early.py), its restamp sets them
VOLATILE = ("mtime", "atime")


@dataclass(frozen=True, slots=True)
class DataOptions:
    max_parallel: int = 8
    max_dirty: int = 1 << 30
    transfers: int = 16
    upload_parts: int = 8
    meta_cache_size: int = DEFAULT_ROWS
    block_size: int = 1 << 20
    cache_size: int = 10 << 30
    writeback_delay: float = 1.0
    upload_defer: float = 5.0
    part_size: int = 16 << 20
    early_parts: str = "off"


def write_options(node: Node) -> WriteOptions:
    """The metadata an upload of `node` carries: its user metadata plus POSIX attributes."""
    metadata = dict(node.metadata)
    metadata.update(posix_metadata(node.st_mode, node.uid, node.gid, node.mtime, node.atime))
    content_type = node.content_type or guessed_type(node)
    return WriteOptions(metadata=metadata, content_type=content_type, system=dict(node.system))


def guessed_type(node: Node) -> str:
    """The Content-Type an upload of `node` carries when none was set: guessed from its name."""
    if node.kind is Kind.DIR:
        return DIRECTORY_CONTENT_TYPE
    return mimetypes.guess_type(node.name)[0] or "application/octet-stream"


def upload_meta(node: Node) -> dict[str, Any]:
    opts = write_options(node)
    return {
        "metadata": dict(opts.metadata),
        "content_type": opts.content_type,
        "system": dict(opts.system),
    }


class Unsaved:
    """A file the cache holds dirty, perhaps not on the server yet (after a crash): what the
    namespace may know of it without reaching into the cache. Read when asked, not copied."""

    __slots__ = ("file",)

    def __init__(self, cf: CachedFile) -> None:
        self.file = cf

    @property
    def key(self) -> str | None:
        return self.file.key

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def etag(self) -> str | None:
        """The ETag of the server's object it changes, if that is under the same key."""
        cf = self.file
        return cf.base_etag if cf.base_key == cf.key else None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.file.meta.get("metadata", {}))

    @property
    def content_type(self) -> str | None:
        content_type: str | None = self.file.meta.get("content_type")
        return content_type

    @property
    def system(self) -> dict[str, str]:
        return dict(self.file.meta.get("system", {}))


class FileData:
    def __init__(
        self,
        backend: DeferredDeletes,
        cache_dir: Path,
        nursery: trio.Nursery,
        options: DataOptions,
        *,
        node_at: Callable[[str, str | None], Node | None],
        saved: Callable[[Node], None],
        conflicted: Callable[[Node | None], None],
        foreground: Foreground | None = None,
    ) -> None:
        """The cache in `cache_dir` and its write-back; `node_at` finds the node of a key,
        `saved` hears of a node whose upload was confirmed (its fields set from it here),
        `conflicted` of a key whose upload went to a conflict name (node None: not known)."""
        self._backend = backend
        self._opts = options
        self._node_at = node_at
        self._saved = saved
        self._conflicted = conflicted
        self.cache = BlockCache(
            cache_dir,
            backend,
            nursery,
            block_size=options.block_size,
            cache_size=options.cache_size,
        )
        self.writeback = WriteBack(
            self.cache,
            backend,
            delay=options.writeback_delay,
            defer=options.upload_defer,
            foreground=foreground,
            part_size=options.part_size,
            max_files=options.transfers,
            max_parts=options.upload_parts,
            on_uploaded=self._on_uploaded,
            on_conflict=self._on_conflict,
            held=self._held,
            early_parts=options.early_parts,
            volatile=VOLATILE,
        )
        #: what HEADs said, kept across mounts (the namespace asks it before a HEAD)
        self.attrs = AttrStore(cache_dir / "attrs.sqlite", max_rows=options.meta_cache_size)
        self._limiter = trio.CapacityLimiter(options.max_parallel)
        self.locks: dict[int, trio.Lock] = {}
        self._clean = trio.Event()  # set whenever an upload finished: throttled writers retry

    async def start(self, nursery: trio.Nursery) -> None:
        """Journal deferred deletes in the cache's index, then send them and upload; the
        index's WAL is checkpointed in a worker thread from then on."""
        await nursery.start(self.cache.checkpoints.run)
        self._backend.attach(self.cache.index)
        await nursery.start(self._backend.run)
        await nursery.start(self.writeback.run)
        await nursery.start(self.attrs.run)

    def close(self) -> None:
        """Only once every task that used the cache is gone (threads finish before cancelling)."""
        self.attrs.close()
        self.cache.close()

    async def drain(self) -> list[str]:
        """Upload every dirty file; returns those that could not be uploaded (they stay in
        the cache's index and are uploaded by the next mount of this cache directory)."""
        failed = await self.writeback.drain()
        names = [f"{cf.bucket}/{cf.key}" for cf in failed]
        for cf in failed:
            log.error("could not upload %s/%s: %s", cf.bucket, cf.key, cf.error)
        return names

    # --- what the write-back tells the namespace -----------------------------------------------

    def _on_conflict(self, cf: CachedFile, key: str) -> None:
        """Our version of `key` went to a conflict name: the name shows the server's again."""
        node = self._node_at(cf.bucket, key)
        if node is not None:
            node.cached = None
        self._conflicted(node)

    def _held(self, cf: CachedFile) -> bool:
        """Whether a handle has the file open for writing (its upload waits, WriteBack)."""
        node = self._node_at(cf.bucket, cf.key)
        return node is not None and node.writers > 0

    def _on_uploaded(self, done: Uploaded) -> None:
        """The write-back confirmed an upload: the node (if any) now matches the server."""
        cf = done.file
        if cf.key is not None:
            node = self._node_at(cf.bucket, cf.key)
            if node is not None and node.cached is cf:
                node.etag = done.result.etag
                node.version_id = done.result.version_id
                node.size = done.size
                node.metadata = dict(cf.meta.get("metadata", {}))
                node.content_type = cf.meta.get("content_type")
                node.kernel_etag = done.result.etag
                node.full = True
                self._saved(node)
        self.uploaded()

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

    def adopt(self, node: Node, unsaved: Unsaved) -> None:
        """`node` (just made from what the cache holds) shows that unsaved file."""
        node.cached = unsaved.file

    def unsaved(self, bucket: str, key: str) -> Unsaved | None:
        """The dirty file the cache holds under `key`, if any."""
        cf = self.cache.find(bucket, key)
        return Unsaved(cf) if cf is not None and cf.dirty else None

    def unsaved_under(self, bucket: str, prefix: str) -> list[Unsaved]:
        """The dirty files the cache holds directly under the directory `prefix`."""
        return [Unsaved(cf) for cf in self.cache.dirty_children(bucket, prefix)]

    def rebased(self, node: Node, etag: str) -> None:
        """The node's object was copied onto itself (new ETag): a clean copy follows it."""
        if node.cached is not None and not node.cached.dirty:
            self.cache.rebase(node.cached, etag)  # same bytes, new ETag

    # --- reading and writing -----------------------------------------------------------------

    async def read(
        self, node: Node, offset: int, size: int, state: ReadState, *, lend: bool = False
    ) -> bytes | memoryview:
        """With `lend`, possibly a view valid only until the caller's next checkpoint
        (`cache.fetch.Fetcher.read`)."""
        if node.etag is None and node.cached is None:
            return b""
        return await self.cache.read(self.cached(node), offset, size, state, lend=lend)

    def holds(self, node: Node) -> bool:
        """Whether the cache holds all of the node's object as the node last saw it (also
        from an earlier mount of this cache directory)."""
        cf = node.cached
        if cf is None and node.bucket is not None:
            cf = self.cache.find(node.bucket, node.key)
        return cf is not None and not cf.dirty and self.cache.holds(cf, node.etag)

    async def prime(self, node: Node, data: bytes) -> None:
        """The object's first bytes, as the GET that brought the node's attributes had them.
        Never fails the open: bytes that could not be kept are fetched again when read."""
        cf = self.cached(node)
        if cf.dirty or node.etag is None:
            return
        try:
            await self.cache.prime(cf, node.etag, data)
        except BucketfsError as exc:  # e.g. the cache disk is full
            log.debug("keeping the bytes of %s fetched at open failed: %s", node.key, exc)

    async def read_all(self, node: Node) -> bytes:
        cf = self.cached(node)
        data = await self.cache.read(cf, 0, cf.size, ReadState())
        assert isinstance(data, bytes)  # nothing lent without `lend`
        return data

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

    def flushed(self, node: Node) -> None:
        """A descriptor was closed (FLUSH: `close` returns after it): what was written and
        the attributes it goes up with are in the cache's index now. One commit for a new
        file (its row, size, blocks and metadata: `BlockCache.record`); for another file,
        whose writes are in the index since each returned, one only if its attributes
        changed since (a write's mtime). Nothing is uploaded (a shell's `>` closes a
        duplicate descriptor first): the release of the last writer does that (`closed`)."""
        cf = node.cached
        if cf is not None and cf.dirty and cf.key is not None:
            self.cache.set_meta(cf, upload_meta(node))
            self.cache.record(cf)

    def closed(self, node: Node) -> None:
        """The last writable handle was released (or a truncate without one): upload the
        file in the background, once left alone for `writeback_delay`, if it changed. After
        the FLUSH of a `close` this commits nothing, unless the attributes changed between
        the two (or no FLUSH came)."""
        cf = node.cached
        if cf is not None and cf.dirty:
            self.cache.set_meta(cf, upload_meta(node))
            self.cache.record(cf)
            self.writeback.closed(cf)  # uploaded once left alone for `writeback_delay`

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

    @staticmethod
    def upload_state(node: Node) -> str:
        """Where the node's data is ("clean", "dirty", "uploading", ...: control.py)."""
        cf = node.cached
        return cf.upload_state if cf is not None else "clean"

    def released(self, node: Node) -> None:
        """The last writable handle is gone and nothing is left to upload: a write-back
        worker waiting for it ends its wait."""
        if node.cached is not None:
            self.writeback.released(node.cached)

    def forget(self, node: Node) -> None:
        """The last handle of a deleted file is gone: so goes its local copy."""
        if node.cached is not None:
            self.cache.forget(node.cached)
            node.cached = None

    async def flush_under(self, bucket: str | None, prefix: str) -> None:
        """Return once every file dirty now under `prefix` (in `bucket`, or in any bucket if
        None) is on the server."""
        pending = [
            cf
            for cf in self.cache.dirty_files()
            if cf.key is not None
            and (bucket is None or cf.bucket == bucket)
            and cf.key.startswith(prefix)
        ]
        for cf in pending:
            await self.writeback.flush(cf)

    def forget_clean_under(self, bucket: str | None, prefix: str) -> None:
        """The objects under `prefix` move (a directory's rename, after its uploads): their
        blocks are dropped; an open handle fetches again under the new key (`cached`)."""
        cache = self.cache
        for cf in list(cache.files.values()):
            under = cf.key is not None and cf.key.startswith(prefix)
            if under and cf.bucket == bucket and not cf.dirty:
                cache.forget(cf)

    async def drop(self, node: Node) -> bool:
        """The name goes away: cancel its upload; open handles keep reading a local copy.
        True if an object is on the server under the name even though the node has no ETag:
        an upload of ours (an older generation that landed after the file changed again), or
        the object the pending upload was to replace (`replaces`)."""
        assert node.bucket is not None
        cf = node.cached or self.cache.find(node.bucket, node.key)
        if cf is None and node.opens > 0 and node.etag is not None:
            cf = self.cached(node)  # never read yet: attach, to copy it locally below
        if cf is None:
            return False
        while cf.upload_scope is not None:  # let an upload in flight land, then delete it
            await cf.progress.wait()
        # a pending upload meant to replace an object (a rename onto its name) goes with it:
        # that object is on the server still, and only a delete now removes it
        stored = (cf.base_etag is not None and cf.base_key == node.key) or bool(
            cf.meta.get("replaces")
        )
        if node.opens > 0:
            node.cached = cf
            await self.cache.materialize(cf, 0, cf.size)
            self.cache.detach(cf)
        else:
            self.cache.forget(cf)
            node.cached = None
        return stored

    def report(self) -> dict[str, object]:
        """Where the data is, for `bucketfs status` (control.py)."""
        cache, writeback = self.cache, self.writeback
        dirty = cache.dirty_files()
        lookups = cache.hits + cache.misses
        return {
            "dirty_files": len([cf for cf in dirty if cf.key is not None]),
            "dirty_bytes": sum(
                min(len(cf.dirty_blocks) * cache.block_size, cf.size) for cf in dirty
            ),
            "dirty": sorted(f"{cf.bucket}/{cf.key}" for cf in dirty if cf.key is not None)[:100],
            "uploading": sum(1 for cf in dirty if cf.upload_scope is not None),
            "failed": {f"{cf.bucket}/{cf.key}": cf.error for cf in dirty if cf.state == "failed"},
            "uploads": writeback.uploads,
            "uploaded_bytes": writeback.uploaded_bytes,
            "upload_rate": round(writeback.upload_rate()),
            "last_errors": writeback.last_errors,
            "early_parts": {
                "on": writeback.early.enabled,
                "sent": writeback.early.sent,
                "used": writeback.early.used,
                "restamps": writeback.early.restamps,
                "held_back": writeback.early.held_back,
                "open_uploads": len(cache.index.pending_uploads()),
            },
            "cache_bytes": cache.clean_bytes + cache.dirty_bytes,
            "cache_size": cache.cache_size,
            "hit_ratio": round(cache.hits / lookups, 3) if lookups else None,
            "cached_files": len(cache.files),
            "open_data_files": cache.data_files.open_count,
        }

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
        early = self.writeback.early
        early.journal(upload_id, bucket, dst_key)  # a kill leaves none behind
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
            result = await self._backend.complete_multipart(
                bucket, dst_key, upload_id, sorted(etags.items())
            )
            early.ended(upload_id)
            return result
        except BaseException:
            await early.abort(bucket, dst_key, upload_id)
            raise

    async def rename(self, node: Node, new_key: str, *, replaces: bool) -> None:
        """Upload pending content under the old name, then copy on the server and delete."""
        assert node.bucket is not None
        async with self.lock(node):
            cf = node.cached
            while cf is not None and cf.upload_scope is not None:
                await cf.progress.wait()  # an upload in flight lands under the old name first
            if cf is not None and not cf.dirty and node.etag not in (None, cf.base_etag):
                # a clean copy of an older version (another client replaced the object since):
                # the server's version is what moves, under the ETag the lookup just saw
                node.cached = cf = None
            stored = cf is not None and cf.base_etag is not None and cf.base_key == node.key
            if node.etag is None and not stored:
                if cf is not None:  # nothing on the server yet: the pending upload moves
                    if cf.meta.get("replaces"):  # the object it was to replace is left
                        await self._backend.defer_delete(node.bucket, node.key)
                    self.cache.move(cf, node.bucket, new_key)
                    # and knowingly replaces whatever the target's object is, or expects none
                    self.cache.set_replaces(cf, replaces)
                return
            # unchanged ranges of a modified object come from the old key: upload, then move
            await self.flush(node)
            etag = cf.base_etag if cf is not None and cf.base_key == node.key else node.etag
            result = await self.copy_object(
                node.bucket, node.key, new_key, node.size, None, etag=etag
            )
            await self._backend.defer_delete(node.bucket, node.key)
            node.etag, node.version_id = result.etag, result.version_id
            if cf is not None:
                self.cache.move(cf, node.bucket, new_key)
                self.cache.rebase(cf, result.etag)
