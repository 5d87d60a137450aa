"""Eviction: the clean blocks of the cache in least-recently-used order, and giving their disk
space back.

Owns the LRU of clean present blocks (`(file id, block index)`) and the writes to data files
that may need room (`pwrite`: on ENOSPC/EDQUOT it evicts every clean block and tries once
more). Dropping a block forgets it in memory and in the index and punches a hole in its data
file (reads there return zeros). A file whose last block went is handed to `release`
(`BlockCache.release`), which forgets it unless something still needs it.

Invariants: a dirty block is never in the LRU (`touch` skips it, `untrack` takes a block out
when it becomes dirty), so eviction never drops one; after `evict()` the clean bytes are at
most `cache_size`; a block is in the LRU only while it is in its file's `present`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping

from bucketfs.cache.cachedfile import CachedFile
from bucketfs.cache.datafiles import DataFiles, cache_error, libc
from bucketfs.cache.index import CacheIndex

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the disk space of [offset, offset+length) back; reads there return zeros."""
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class CleanBlocks:
    def __init__(
        self,
        data_files: DataFiles,
        index: CacheIndex,
        files: Mapping[int, CachedFile],
        release: Callable[[CachedFile], None],
        *,
        block_size: int,
        cache_size: int,
    ) -> None:
        self._data_files = data_files
        self._index = index
        self._files = files
        self._release = release
        self._block_size = block_size
        self._cache_size = cache_size
        self._lru: OrderedDict[tuple[int, int], None] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return len(self._lru) * self._block_size

    def touch(self, cf: CachedFile, idx: int) -> None:
        """Block `idx` of `cf` was used: it is evicted last (a dirty block is not tracked)."""
        if idx in cf.dirty_blocks:
            return
        key = (cf.id, idx)
        self._lru[key] = None
        self._lru.move_to_end(key)

    def file_order(self) -> list[int]:
        """Ids of the files with clean blocks, least recently used first (by their newest
        block)."""
        last: dict[int, int] = {}
        for n, (file_id, _idx) in enumerate(self._lru):
            last[file_id] = n
        return sorted(last, key=last.__getitem__)

    def untrack(self, cf: CachedFile, idx: int) -> None:
        """Block `idx` of `cf` is no longer evictable (dirty now, or its file is gone)."""
        self._lru.pop((cf.id, idx), None)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        """pwrite, evicting clean blocks and trying once more when the disk is full."""
        try:
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._lru:
                raise cache_error(exc, "writing") from exc
        self.evict(target=0)
        try:
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            raise cache_error(exc, "writing") from exc

    def evict(self, target: int | None = None) -> None:
        """Drop least recently used clean blocks until they take at most `target` bytes
        (default: `cache_size`)."""
        limit = self._cache_size if target is None else target
        victims: dict[int, set[int]] = {}
        while self._lru and len(self._lru) * self._block_size > limit:
            (file_id, idx), _ = self._lru.popitem(last=False)
            victims.setdefault(file_id, set()).add(idx)
        for file_id, indexes in victims.items():
            cf = self._files.get(file_id)
            if cf is not None:
                self.drop(cf, indexes - cf.dirty_blocks)
                self._release(cf)  # its last block may have gone

    def drop(
        self, cf: CachedFile, indexes: set[int], *, punch: bool = True, recorded: bool = False
    ) -> None:
        """Blocks `indexes` of `cf` are no longer present (their holes punched if `punch`;
        their rows left alone if `recorded`: the caller dropped them already)."""
        if not indexes:
            return
        bs = self._block_size
        for idx in indexes:
            cf.present.discard(idx)
            self._lru.pop((cf.id, idx), None)
        # the rows first: a daemon killed between the two must not find rows saying that
        # blocks whose holes were punched are there (it would read them back as zeros)
        if not recorded:
            self._index.drop_blocks(cf.id, indexes)

        def punch_all(fd: int) -> None:
            for idx in sorted(indexes):
                punch_hole(fd, idx * bs, bs)

        if punch:
            try:
                self._data_files.punch(cf.id, punch_all)
            except OSError as exc:
                log.warning("could not free cache blocks of file %d: %s", cf.id, exc)
