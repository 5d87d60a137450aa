"""Reads of objects that are not being written: ranged GETs, a bounded chunk cache, readahead.

Owns the in-memory chunk cache shared by every open file. An object is read in aligned chunks
(`chunk_size`); a miss fetches the chunks it needs with one ranged GET, conditional on the ETag
the file was opened with. A handle that reads sequentially gets a readahead window that doubles
up to `max_window` chunks, fetched by several GETs in flight (bounded by `max_parallel`).

Invariants: a chunk is cached under (bucket, key, etag, index), so content of another version is
never served; memory is bounded by `max_chunks * chunk_size`; a failed fetch is reported to every
reader waiting for it and never cached; background fetches run in the nursery given at
construction and never raise into it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio
from cachetools import LRUCache

from bucketfs.backends.base import Backend
from bucketfs.errors import BucketfsError

log = logging.getLogger(__name__)

ChunkKey = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    bucket: str
    key: str
    etag: str
    size: int


@dataclass(slots=True)
class ReadState:
    """Per-handle sequential-access detection."""

    next_offset: int = 0
    window: int = 0


@dataclass(slots=True)
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class ChunkReader:
    def __init__(
        self,
        backend: Backend,
        nursery: trio.Nursery,
        *,
        chunk_size: int = 1 << 20,
        max_chunks: int = 192,
        max_parallel: int = 4,
        max_window: int = 32,
        fetch_chunks: int = 8,
    ) -> None:
        self._backend = backend
        self._nursery = nursery
        self.chunk_size = chunk_size
        self._chunks: LRUCache[ChunkKey, bytes] = LRUCache(maxsize=max_chunks)
        self._inflight: dict[ChunkKey, _Fetch] = {}
        self._limiter = trio.CapacityLimiter(max_parallel)
        self._max_window = min(max_window, max_chunks // 4)
        self._fetch_chunks = fetch_chunks
        self.gets = 0

    async def read(self, obj: ObjectRef, offset: int, size: int, state: ReadState) -> bytes:
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        if offset == state.next_offset and offset > 0:
            state.window = min(max(2, state.window * 2), self._max_window)
        elif offset != state.next_offset:
            state.window = 0
        state.next_offset = end
        nchunks = (obj.size + self.chunk_size - 1) // self.chunk_size
        if state.window:
            ahead_end = min(last + 1 + state.window, nchunks)
            missing = sum(
                1
                for index in range(last + 1, ahead_end)
                if (obj.bucket, obj.key, obj.etag, index) not in self._chunks
                and (obj.bucket, obj.key, obj.etag, index) not in self._inflight
            )
            # top the window up in whole GETs, not a chunk at a time
            if missing >= min(self._fetch_chunks, state.window) or (
                missing and ahead_end == nchunks
            ):
                self._start_missing(obj, last + 1, ahead_end, self._fetch_chunks)
        parts = []
        for index in range(first, last + 1):
            chunk = await self._chunk(obj, index, last)
            lo = offset - index * self.chunk_size if index == first else 0
            hi = end - index * self.chunk_size if index == last else len(chunk)
            parts.append(chunk[lo:hi])
        return b"".join(parts)

    def invalidate(self, bucket: str, key: str) -> None:
        for ck in [ck for ck in self._chunks if ck[0] == bucket and ck[1] == key]:
            self._chunks.pop(ck, None)

    async def _chunk(self, obj: ObjectRef, index: int, last_needed: int) -> bytes:
        ck = (obj.bucket, obj.key, obj.etag, index)
        for _ in range(4):
            chunk = self._chunks.get(ck)
            if chunk is not None:
                return chunk
            fetch = self._inflight.get(ck)
            if fetch is None:
                # fetch this chunk and the following ones the reader needs now, in one GET
                self._start_missing(obj, index, last_needed + 1, self._fetch_chunks)
                fetch = self._inflight[ck]
            await fetch.done.wait()
            if fetch.error is not None:
                raise fetch.error
        # evicted as fast as fetched: the cache is too small for the readers; fetch directly
        start = index * self.chunk_size
        return await self._backend.get(
            obj.bucket, obj.key, start, min(start + self.chunk_size, obj.size), if_match=obj.etag
        )

    def _start_missing(self, obj: ObjectRef, first: int, stop: int, per_get: int) -> None:
        """Start GETs for the chunks in [first, stop) that are neither cached nor in flight."""
        run: list[int] = []
        for index in range(first, stop):
            ck = (obj.bucket, obj.key, obj.etag, index)
            if ck in self._chunks or ck in self._inflight:
                if run:
                    self._spawn(obj, run)
                    run = []
                continue
            run.append(index)
            if len(run) == per_get:
                self._spawn(obj, run)
                run = []
        if run:
            self._spawn(obj, run)

    def _spawn(self, obj: ObjectRef, indexes: list[int]) -> None:
        fetch = _Fetch()
        for index in indexes:
            self._inflight[(obj.bucket, obj.key, obj.etag, index)] = fetch
        self._nursery.start_soon(self._fetch, obj, indexes, fetch)

    async def _fetch(self, obj: ObjectRef, indexes: list[int], fetch: _Fetch) -> None:
        start = indexes[0] * self.chunk_size
        end = min((indexes[-1] + 1) * self.chunk_size, obj.size)
        try:
            async with self._limiter:
                self.gets += 1
                data = await self._backend.get(obj.bucket, obj.key, start, end, if_match=obj.etag)
            for n, index in enumerate(indexes):
                piece = data[n * self.chunk_size : (n + 1) * self.chunk_size]
                self._chunks[(obj.bucket, obj.key, obj.etag, index)] = piece
        except BucketfsError as exc:
            fetch.error = exc
        except Exception as exc:  # a bug: report it to the readers, keep the nursery alive
            log.exception("fetching %s/%s [%d, %d) failed", obj.bucket, obj.key, start, end)
            fetch.error = exc
        finally:
            for index in indexes:
                self._inflight.pop((obj.bucket, obj.key, obj.etag, index), None)
            fetch.done.set()
