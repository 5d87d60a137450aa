"""The on-disk block cache: file contents in sparse data files, by blocks.

Owns the table of cached files (`files`, `by_key`), their content in
`CACHE_DIR/data/<file id>` (`datafiles.py` makes and removes the files) and every change to it:
writes, truncation, new files, and what an upload, a rename or a delete does to a file. The
parts: `cachedfile.py` (one file's state), `fetch.py` (reads, fetches, readahead, fills),
`blocks.py` (clean blocks in LRU order, eviction), `index.py` (the persistent index),
`checkpoints.py` (its WAL checkpoints, in a worker thread).
A file's content is: its dirty blocks (written here), else its present clean blocks (fetched
from the *base* object, the server object it was opened from), else the base object's bytes
(fetched on demand with ranged GETs conditional on the base ETag), else zeros (past the end
of the base object).

Invariants (README and docs/cache.md say them in prose):
- a dirty block is never evicted; a block is marked clean only after the backend confirmed an
  upload that contained it;
- every dirty block and the file's size are in the index before the write that changed them
  returns, except in a new file before its first FLUSH (`in_index` false): its row, size,
  metadata and blocks go in with one commit at that FLUSH (`record`; `close` returns after
  it), or earlier when something needs them there (an upload starts, a rename); a crash before
  it loses a file that was never closed (as a local file system may before `fsync`) and
  leaves no row of it. Only a file with no base object may wait so: in a file with clean
  blocks, the index says "dirty" before bytes of a block change, so that a crash never
  leaves a clean block holding bytes it does not own;
- a block that the base object could fill is present before any write lands in it, so a fetch
  never overwrites written bytes;
- clean blocks are cached only under the ETag they were fetched with: `attach` drops them when
  the server's object changed;
- clean bytes stay under `cache_size` (least recently used evicted first); dirty bytes are not
  counted against it (`max_dirty` throttles writers instead);
- memory and the index hold a file only while it is dirty, has blocks present, is in use (a
  fetch, a fill or an upload in flight) or a node holds it (`holders`): a clean file that is
  none of these is forgotten (`release`, when its node goes; eviction, when its last block
  goes; and a sweep whenever the table doubled since the last one, for files a node let go of
  by other ways), so what a mount keeps is bounded by what is open and cached, not by every
  file it ever touched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bucketfs.backends.base import Backend
from bucketfs.cache.blocks import CleanBlocks
from bucketfs.cache.cachedfile import CachedFile, ReadState
from bucketfs.cache.checkpoints import Checkpoints
from bucketfs.cache.datafiles import DataFiles, cache_error
from bucketfs.cache.fetch import Fetcher
from bucketfs.cache.index import CacheIndex, FileRow
from bucketfs.errors import CacheError

__all__ = ["BlockCache", "CachedFile", "ReadState"]

log = logging.getLogger(__name__)

#: index settings: the machine's boot id when the last mount started, whether it ended with
#: the cache synced ("1"), the clean files' eviction order (file ids, oldest first)
BOOT_SETTING = "boot_id"
SYNCED_SETTING = "synced"
ORDER_SETTING = "clean_order"

#: the table of files is swept for files nothing needs when it grew past twice its size after
#: the last sweep plus this
SWEEP_SLACK = 1024


class BlockCache:
    def __init__(
        self,
        root: Path,
        backend: Backend,
        nursery: trio.Nursery,
        *,
        block_size: int = 1 << 20,
        cache_size: int = 10 << 30,
        max_parallel: int = 4,
        max_window: int = 64,
        fetch_blocks: int = 8,
    ) -> None:
        self.root = root
        self.backend = backend
        self._nursery = nursery
        self.block_size = block_size
        self.cache_size = cache_size
        self.data_files = DataFiles(root)
        self._lock_fd = self._take_lock(root)
        self.index = CacheIndex(root / "index.sqlite")
        #: checkpoints the index's WAL off the trio thread (`run` in the mount's nursery)
        self.checkpoints = Checkpoints(self.index)
        stored = self.index.setting("block_size")
        if stored is not None and int(stored) != block_size:
            log.warning("cache %s uses %s-byte blocks; keeping them", root, stored)
            self.block_size = int(stored)
        self.index.set_setting("block_size", str(self.block_size))
        #: tags our uploads (metadata `bucketfs.upload`), to know our own object when an
        #: upload's answer was lost (killed daemon, reset connection)
        self.cache_id = self.index.setting("cache_id") or uuid.uuid4().hex
        self.index.set_setting("cache_id", self.cache_id)
        self.files: dict[int, CachedFile] = {}
        self.by_key: dict[tuple[str, str], CachedFile] = {}
        self.blocks = CleanBlocks(
            self.data_files,
            self.index,
            self.files,
            self.release,
            block_size=self.block_size,
            cache_size=cache_size,
        )
        self.fetcher = Fetcher(
            backend,
            nursery,
            self.data_files,
            self.index,
            self.blocks,
            self.files,
            block_size=self.block_size,
            cache_size=cache_size,
            max_parallel=max_parallel,
            max_window=max_window,
            fetch_blocks=fetch_blocks,
        )
        #: dirty bytes over every file, kept in step by every change (`_recharge`)
        self._dirty_charge = 0
        #: told when a file leaves the cache or loses its name (the write-back ends its worker)
        self.on_forget: Callable[[CachedFile], None] = lambda _cf: None
        #: told after every write (early.py sends a large new file's parts while written)
        self.on_write: Callable[[CachedFile], None] = lambda _cf: None
        self._load()
        self._sweep_at = len(self.files) + SWEEP_SLACK

    @staticmethod
    def _take_lock(root: Path) -> int:
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CacheError(
                f"cache directory {root} is in use by another bucketfs mount"
            ) from None
        return fd

    def _load(self) -> None:
        """Dirty files from an earlier run come back, and so do clean ones with their blocks
        when those can be trusted (`_clean_blocks_survived`)."""
        keep_clean = self._clean_blocks_survived()
        for row in self.index.dirty_files():
            cf = self._from_row(row)
            self.data_files.cut_to(row.id, row.size)  # what a kill left past its size
            for idx, dirty in self.index.blocks(row.id):
                cf.present.add(idx)
                if dirty:
                    cf.dirty_blocks.add(idx)
            cf.generation = 1
            self._recharge(cf)
            self._register(cf)
        # clean files of an earlier run: their blocks stay valid for their base ETag (`attach`
        # compares it with what the server has now), evicted oldest first, the order saved by
        # the last `close` (files it did not see were used after it: newest)
        clean = self.index.clean_files()
        order = {file_id: n for n, file_id in enumerate(self._saved_order())}
        clean.sort(key=lambda row: (order.get(row.id, len(order)), row.id))
        for row in clean:
            blocks = [idx for idx, dirty in self.index.blocks(row.id) if not dirty]
            if not keep_clean or row.key is None or not blocks:
                self.index.remove(row.id)
                self.data_files.remove(row.id)
                continue
            cf = self._from_row(row)
            cf.present.update(blocks)
            self._register(cf)
            for idx in sorted(blocks):
                self.blocks.touch(cf, idx)
        self.data_files.sweep(self.files.keys())
        self.blocks.evict()  # `cache_size` may be smaller than last time
        self.index.set_setting(BOOT_SETTING, _boot_id())
        self.index.set_setting(SYNCED_SETTING, "0")

    def _clean_blocks_survived(self) -> bool:
        """Whether the data files hold what the index says of their clean blocks. Blocks are
        written without fsync, so after a machine crash an index row may have reached the
        disk while its bytes did not. They are trusted when the machine has not restarted
        since the last mount used them (a killed daemon leaves its writes in the page cache),
        or when that mount ended by syncing the cache's file system (`close`)."""
        if self.index.setting(SYNCED_SETTING) == "1":
            return True
        return self.index.setting(BOOT_SETTING) == _boot_id()

    def _saved_order(self) -> list[int]:
        try:
            return [int(i) for i in json.loads(self.index.setting(ORDER_SETTING) or "[]")]
        except (ValueError, TypeError):
            return []

    def _from_row(self, row: FileRow) -> CachedFile:
        return CachedFile(
            id=row.id,
            bucket=row.bucket,
            key=row.key,
            size=row.size,
            base_key=row.meta.get("base_key", row.key),
            base_etag=row.base_etag,
            base_size=row.base_size,
            meta=row.meta,
            dirty=row.dirty,
            state=row.state,
            error=row.error,
        )

    def _register(self, cf: CachedFile) -> None:
        self.files[cf.id] = cf
        if cf.key is not None:
            self.by_key[(cf.bucket, cf.key)] = cf

    def close(self) -> None:
        """Save the clean files' eviction order, make the data files durable (so the next
        mount keeps their clean blocks even after the machine restarted), close."""
        try:
            self.index.set_setting(ORDER_SETTING, json.dumps(self.blocks.file_order()))
            self.data_files.sync()
            self.index.set_setting(SYNCED_SETTING, "1")
        except (OSError, CacheError) as exc:
            log.warning(
                "cache %s not synced at unmount (%s): its clean blocks are kept only until "
                "the machine restarts",
                self.root,
                exc,
            )
        finally:
            self.data_files.close_all()
            self.index.close()
            os.close(self._lock_fd)

    # --- finding and creating files -----------------------------------------------------

    def find(self, bucket: str, key: str) -> CachedFile | None:
        return self.by_key.get((bucket, key))

    def dirty_files(self) -> list[CachedFile]:
        return [cf for cf in self.files.values() if cf.dirty]

    def dirty_children(self, bucket: str, prefix: str) -> list[CachedFile]:
        """Dirty files directly in directory `prefix` (they may not be on the server yet)."""
        return [
            cf
            for (b, k), cf in self.by_key.items()
            if b == bucket and cf.dirty and k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]

    def attach(self, bucket: str, key: str, etag: str | None, size: int) -> CachedFile:
        """The cached file for object `key` as the server has it now (ETag `etag`)."""
        cf = self.by_key.get((bucket, key))
        if cf is not None:
            if cf.dirty or cf.base_etag == etag:
                return cf
            self._reset_clean(cf, etag, size)  # the object changed on the server
            return cf
        self._maybe_sweep()
        file_id = self.index.add(bucket, key, size, etag)
        self.data_files.given_out(file_id, self._nursery)
        cf = CachedFile(
            id=file_id,
            bucket=bucket,
            key=key,
            size=size,
            base_key=key,
            base_etag=etag,
            base_size=size if etag else 0,
            meta={},
        )
        self._register(cf)
        return cf

    def _reset_clean(self, cf: CachedFile, etag: str | None, size: int) -> None:
        self.blocks.drop(cf, set(cf.present))
        cf.base_etag, cf.base_size, cf.size, cf.base_key = etag, size if etag else 0, size, cf.key
        self.index.update(cf.id, base_etag=etag, base_size=cf.base_size, size=size)

    # --- reading (fetch.py) --------------------------------------------------------------

    async def read(
        self, cf: CachedFile, offset: int, size: int, state: ReadState, *, lend: bool = False
    ) -> bytes | memoryview:
        """Bytes [offset, offset+size) of `cf`; with `lend`, possibly a view of the data file
        valid only until the caller's next checkpoint (`Fetcher.read`)."""
        return await self.fetcher.read(cf, offset, size, state, lend=lend)

    async def prime(self, cf: CachedFile, etag: str, data: bytes) -> None:
        """The object's first bytes as a GET at open brought them (fetch.py)."""
        await self.fetcher.prime(cf, etag, data)

    def holds(self, cf: CachedFile, etag: str | None) -> bool:
        """Whether every block of the object `etag` is present (reading it needs no GET)."""
        bs = self.block_size
        blocks = (cf.base_size + bs - 1) // bs
        return cf.base_etag == etag and all(i in cf.present for i in range(blocks))

    async def read_local(self, cf: CachedFile, start: int, end: int) -> bytes:
        """Bytes [start, end) as the cache has them (materialize first); zeros in holes."""
        return await self.fetcher.read_local(cf, start, end)

    async def materialize(self, cf: CachedFile, start: int, end: int) -> None:
        """Make every block of [start, end) that the base object fills present."""
        await self.fetcher.materialize(cf, start, end)

    @property
    def gets(self) -> int:
        return self.fetcher.gets

    @property
    def hits(self) -> int:
        return self.fetcher.hits

    @property
    def misses(self) -> int:
        return self.fetcher.misses

    # --- writing ---------------------------------------------------------------------------

    async def write(self, cf: CachedFile, offset: int, data: bytes) -> int:
        if not data:
            return 0
        bs = self.block_size
        end = offset + len(data)
        first, last = offset // bs, (end - 1) // bs
        # blocks only partly overwritten must hold the base's bytes first
        edges = {first, last}
        for idx in edges:
            lo, hi = idx * bs, (idx + 1) * bs
            if not (offset <= lo and end >= hi):
                await self.fetcher.materialize_blocks(cf, idx, idx + 1)
        for idx in range(first, last + 1):
            fetch = cf.inflight.get(idx)
            if fetch is not None:  # a readahead of a block we overwrite whole: let it land first
                await fetch.done.wait()
        new_dirty = [idx for idx in range(first, last + 1) if idx not in cf.dirty_blocks]
        # the index first: if the disk is full, nothing is touched (a clean block is never
        # left holding bytes it does not own)
        self._record(cf, new_dirty, max(cf.size, end))
        with self.data_files.using(cf.id) as fd:
            written = self.blocks.pwrite(fd, data, offset)
        self._changed(cf, new_dirty, max(cf.size, offset + written), recorded=True)
        if cf.early is not None:
            cf.early.touched(offset, offset + written)
        self.on_write(cf)
        return written

    def _record(self, cf: CachedFile, new_dirty: list[int], size: int) -> None:
        if not cf.in_index:
            return  # a new file: all of it goes in at its first FLUSH (`record`)
        with self.index.transaction():
            if new_dirty:
                self.index.set_blocks(cf.id, new_dirty, dirty=True)
            if size != cf.size or not cf.dirty or cf.state != "dirty":
                self.index.update(cf.id, size=size, dirty=True, state="dirty", error=None)

    def _changed(
        self, cf: CachedFile, new_dirty: list[int], size: int, *, recorded: bool = False
    ) -> None:
        """Record a change: index first (before the write is acknowledged), then memory."""
        if not recorded:
            self._record(cf, new_dirty, size)
        for idx in new_dirty:
            cf.dirty_blocks.add(idx)
            cf.present.add(idx)
            self.blocks.untrack(cf, idx)
        cf.size = size
        self._recharge(cf)
        cf.dirty = True
        cf.state = "dirty"
        cf.error = None
        cf.generation += 1
        cf.changed = trio.current_time()
        if cf.upload_scope is not None:
            cf.upload_scope.cancel()  # that upload is stale now

    async def truncate(self, cf: CachedFile, size: int) -> None:
        """No block needs fetching: bytes past `size` are cut (and no longer taken from the
        base object), bytes up to it keep coming from where they came from."""
        bs = self.block_size
        for fetch in {f for i, f in cf.inflight.items() if i * bs + bs > size}:
            await fetch.done.wait()  # a readahead must not land past the new end
        keep = (size + bs - 1) // bs
        gone = {idx for idx in cf.present if idx >= keep}
        base_size = min(cf.base_size, size)  # the base's bytes past `size` are cut too
        # the index first (one commit), then the data file: killed between the two, a daemon
        # found rows saying the cut blocks were there and clean, and read zeros (docs/cache.md)
        if cf.in_index:
            with self.index.transaction():
                if gone:
                    self.index.drop_blocks(cf.id, gone)
                self.index.update(
                    cf.id, size=size, base_size=base_size, dirty=True, state="dirty", error=None
                )
        try:
            with self.data_files.using(cf.id) as fd:
                self.data_files.truncate(cf.id, fd, size)
        except OSError as exc:
            raise cache_error(exc, "truncating") from exc
        finally:  # memory as the index says, whether the data file was cut or not
            self.blocks.drop(cf, gone, punch=False, recorded=True)
            cf.dirty_blocks -= gone
            if cf.early is not None:  # bytes past the shorter of the two ends changed
                cf.early.touched(min(size, cf.size), max(size, cf.size) + self.block_size)
            cf.base_size = base_size
            self._changed(cf, [], size, recorded=True)

    def create(self, bucket: str, key: str, meta: dict[str, Any]) -> CachedFile:
        """A new, empty, dirty file (replacing any cached state for the key). Not in the
        index yet: its first FLUSH records it (`record`), unless it replaces a dirty file,
        whose content a crash must not lose before the new one is recorded."""
        old = self.by_key.get((bucket, key))
        replaces_dirty = old is not None and old.dirty
        if old is not None:
            self.forget(old)
        self._maybe_sweep()
        meta = dict(meta)
        file_id = self.index.new_id()
        self.data_files.given_out(file_id, self._nursery)
        cf = CachedFile(
            id=file_id,
            bucket=bucket,
            key=key,
            size=0,
            base_key=None,
            base_etag=None,
            base_size=0,
            meta=meta,
            in_index=False,
        )
        self._register(cf)
        self._changed(cf, [], 0, recorded=True)
        if replaces_dirty:
            self.record(cf)
        return cf

    def record(self, cf: CachedFile) -> None:
        """A new file goes into the index: row, size, metadata and dirty blocks in one
        commit (its first FLUSH; an upload or a rename does it first if none came yet).
        Nothing for a file in the index already, or unlinked (never uploaded)."""
        if cf.in_index or cf.key is None:
            return
        self.index.add_new(cf.id, cf.bucket, cf.key, cf.size, cf.meta, sorted(cf.dirty_blocks))
        cf.in_index = True

    def set_meta(self, cf: CachedFile, meta: dict[str, Any]) -> None:
        """What the next upload sends as metadata (bookkeeping keys are kept). A change while
        the file is dirty is a new generation: an upload in flight with the old metadata is
        stale."""
        kept = {k: cf.meta[k] for k in ("replaces",) if k in cf.meta}
        new = {**meta, **kept, "base_key": cf.base_key}
        if new == cf.meta:
            return
        self._keep_meta(cf, new)
        if cf.dirty:
            cf.generation += 1
            cf.changed = trio.current_time()
            if cf.upload_scope is not None:
                cf.upload_scope.cancel()

    def set_replaces(self, cf: CachedFile, replaces: bool) -> None:
        """Whether the pending upload knowingly replaces the object under its key (a rename
        onto an existing name: uploaded with no condition), or expects none there."""
        meta = {k: v for k, v in cf.meta.items() if k != "replaces"}
        if replaces:
            meta["replaces"] = True
        if meta != cf.meta:
            self._keep_meta(cf, meta)

    def _keep_meta(self, cf: CachedFile, meta: dict[str, Any]) -> None:
        """`meta` is what the next upload sends: in the index too once the file has a row (a
        new file's goes in with its first FLUSH, `record`)."""
        cf.meta = meta
        if cf.in_index:
            self.index.update(cf.id, meta=cf.meta)

    # --- after an upload, rename, delete ------------------------------------------------

    def mark_clean(self, cf: CachedFile, generation: int, etag: str, size: int) -> bool:
        """The server confirmed an upload of `generation`: its blocks are clean and the object
        it made is the base, in one commit (a small file's `stored` is left to here)."""
        cf.uploaded_generation = max(cf.uploaded_generation, generation)
        if cf.generation != generation or cf.key is None:
            return False
        cf.meta["base_key"] = cf.key  # what `stored` records, for a small file not done yet
        with self.index.transaction():
            self.index.mark_blocks_clean(cf.id)
            base = {"base_etag": etag, "base_size": size, "meta": cf.meta}
            self.index.update(cf.id, dirty=False, state="clean", error=None, **base)
        cf.dirty = False
        cf.state = "clean"
        cf.error = None
        cf.base_etag, cf.base_size, cf.base_key = etag, size, cf.key
        dirty, cf.dirty_blocks = cf.dirty_blocks, set()
        self._recharge(cf)
        for idx in dirty:
            self.blocks.touch(cf, idx)
        self.blocks.evict()
        return True

    def stored(self, cf: CachedFile, key: str, etag: str, size: int) -> None:
        """The server now holds an upload of ours (maybe of an older generation): it is the
        base from now on. Blocks clean now were clean then too, so they still match it."""
        if cf.key != key:
            return
        base_size = min(cf.base_size, size) if cf.base_etag is not None else 0
        cf.base_key, cf.base_etag, cf.base_size = key, etag, base_size
        cf.meta["base_key"] = key
        self.index.update(cf.id, base_etag=etag, base_size=base_size, meta=cf.meta)

    def rebase(self, cf: CachedFile, etag: str) -> None:
        """The server object got a new ETag with the same content (metadata copied in place)."""
        cf.base_etag = etag
        self.index.update(cf.id, base_etag=etag)

    def mark_failed(self, cf: CachedFile, reason: str) -> None:
        cf.state, cf.error = "failed", reason
        self.index.update(cf.id, state="failed", error=reason)

    def mark_uploading(self, cf: CachedFile) -> None:
        self.record(cf)  # what is uploaded and marked clean has its row
        cf.state = "uploading"

    def move(self, cf: CachedFile, bucket: str, key: str) -> None:
        # a new file is recorded first: a rename onto a name replaces what a crash must not
        # lose (and tools rename a file they closed, recorded already)
        self.record(cf)
        self._drop_early(cf)  # its multipart upload was for the old key
        other = self.by_key.get((bucket, key))
        if other is not None and other is not cf:
            self.forget(other)
        if cf.key is not None and self.by_key.get((cf.bucket, cf.key)) is cf:
            del self.by_key[(cf.bucket, cf.key)]
        self.index.move(cf.id, bucket, key)
        cf.bucket, cf.key = bucket, key
        if not cf.dirty:
            cf.base_key = key  # a clean file's object moved with it
        cf.meta["base_key"] = cf.base_key
        self.index.update(cf.id, meta=cf.meta)
        self._register(cf)

    def detach(self, cf: CachedFile) -> None:
        """Unlinked while open: keep the content for the handles, never upload it."""
        if cf.key is not None and self.by_key.get((cf.bucket, cf.key)) is cf:
            del self.by_key[(cf.bucket, cf.key)]
        if cf.upload_scope is not None:
            cf.upload_scope.cancel()
        self._drop_early(cf)
        if cf.in_index:
            self.index.detach(cf.id)
        cf.dirty_blocks.clear()
        self._recharge(cf)
        cf.key = None
        cf.dirty = False
        self.on_forget(cf)

    def forget(self, cf: CachedFile) -> None:
        """Drop a file from the cache entirely (deleted, or replaced)."""
        if cf.upload_scope is not None:
            cf.upload_scope.cancel()
        self._drop_early(cf)
        if cf.key is not None and self.by_key.get((cf.bucket, cf.key)) is cf:
            del self.by_key[(cf.bucket, cf.key)]
        for idx in cf.present:
            self.blocks.untrack(cf, idx)
        cf.dirty_blocks.clear()
        self._recharge(cf)
        self.files.pop(cf.id, None)
        if cf.in_index:
            self.index.remove(cf.id)
        self.data_files.remove(cf.id)
        cf.key = None
        cf.dirty = False
        self.index.db.retake_reserve()
        self.on_forget(cf)

    @staticmethod
    def _drop_early(cf: CachedFile) -> None:
        """The file's early multipart upload (if any) will never complete: early.py aborts it."""
        if cf.early is not None:
            cf.early.drop()
            cf.early = None

    # --- files nothing needs -------------------------------------------------------------

    def release(self, cf: CachedFile) -> None:
        """A node let go of `cf`, or its blocks went: forget it unless it is still needed."""
        if self._unneeded(cf):
            self.forget(cf)

    def _unneeded(self, cf: CachedFile) -> bool:
        """Clean, no block present, nothing in flight, no node holding it: nothing to keep.
        (A file without a name, unlinked while open, is forgotten by its last release.)"""
        return (
            cf.holders <= 0
            and not cf.dirty
            and not cf.present
            and not cf.inflight
            and not cf.filling
            and cf.upload_scope is None
            and cf.key is not None
            and self.files.get(cf.id) is cf
        )

    def _maybe_sweep(self) -> None:
        if len(self.files) < self._sweep_at:
            return
        for cf in [cf for cf in self.files.values() if self._unneeded(cf)]:
            self.forget(cf)
        self._sweep_at = 2 * len(self.files) + SWEEP_SLACK

    # --- accounting -----------------------------------------------------------------------

    @property
    def clean_bytes(self) -> int:
        return self.blocks.nbytes

    @property
    def dirty_bytes(self) -> int:
        """Bytes not on the server yet: a file's dirty blocks, but no more than its size (a
        100-byte file is 100 bytes, not a block; `max_dirty` throttles on this)."""
        return self._dirty_charge

    def _recharge(self, cf: CachedFile) -> None:
        """Account `cf` again after its dirty blocks or its size changed."""
        charge = min(len(cf.dirty_blocks) * self.block_size, cf.size) if cf.dirty_blocks else 0
        self._dirty_charge += charge - cf.charge
        cf.charge = charge


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # unknown: never equal to a stored one, so only a synced cache is trusted
