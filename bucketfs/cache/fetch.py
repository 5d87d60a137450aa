"""Reading through the block cache: present blocks from the data file, missing ones fetched from
the base object with ranged GETs (conditional on its ETag), with readahead for sequential
readers and a background fill for random ones.

Owns the fetches in flight (`CachedFile.inflight`), their parallelism (`max_parallel` GETs,
`FILL_PARALLEL` more for fills), their landing buffers (`_buffer`: at most one per GET that ran
at once, none kept once no GET ran for `SPARE_IDLE`), and the read counters (`gets`, `hits`,
`misses`).

Sequential readers (`ReadState`, `_advance`): a read that starts where the stream reached, or
touches one of the handle's last reads (the kernel sends its readahead as several requests at
once and they arrive in any order), doubles the readahead window (up to `max_window` blocks); a
read elsewhere inside the window keeps it; any other read makes the handle a random reader.
The missing blocks from the read's own to `window` blocks past the stream are fetched in parts
of `part_blocks(window)` blocks (window / `PARTS_AHEAD`: from `fetch_blocks` up to
`max_window / PARTS_AHEAD`, 16 MiB by default), one ranged GET each, `max_parallel` in flight;
a shorter part is sent only when it holds the reader's own blocks or ends at a block already
there or at the object's end, so a steady reader's GETs are full parts (a cold 1 GiB read:
about 70 GETs, 1 MiB blocks kept in the cache as before).

Random readers: after `FILL_AFTER` non-sequential misses in one file no larger than
`cache_size / 8`, the rest of the file is fetched in the background (`FILL_PARALLEL` ranged
GETs of a full readahead part each, beside the readers' own fetches), so a database or an
archive read at random places soon reads at local-disk speed, at the cost of fetching the file
once.

Bodies are streamed: a GET's bytes are received into one buffer of `LAND_BLOCKS` blocks
(`Backend.get_body`) and land in the data file each time it is full (`landing.Landing`, the
rules of every landing), and each block's readers go on as soon as that block is there, not
when the whole part is (a reader at the start of a 16 MiB part waits for ~2 MiB, and no whole
part is held in memory); the buffers are reused while GETs follow one another. On S3 over
plain HTTP one worker-thread job per GET receives every fill and writes it
(`Body.receive_each`), and the trio thread, woken once per fill, commits it to the index and
releases its readers; other stores receive on the trio thread and write fills of
`THREAD_WRITE_BLOCKS` or more in a worker thread. (Before session 15: two worker hand-offs
per fill, receive then write, ~50-90 us of CPU each and the largest Python cost of a cold read
in py-spy.) Steps of 4 blocks made no difference to the daemon's CPU and cost 8 MiB more of
RSS (docs/maintainers/performance.md, session 14). A connection that breaks mid-body costs one
more GET, for the blocks not landed yet (`Backend.get`, retried as every request is).

The GET an `open` of a small file sends instead of a HEAD (core/handles.py) lands its bytes
here too (`prime`), under the same rules as a fetch's.

Invariants: a block is fetched by at most one GET at a time (readers of it wait for that
one: `inflight` maps it to its own `Fetch`, released when it landed); fetched bytes land only
in blocks not present yet (a written block is present, so a
fetch never overwrites written bytes) and only if the base ETag is still the one they were
fetched under (a fetch writes only the blocks it claimed; it writes in a worker thread from
`THREAD_WRITE_BLOCKS` on, off the thread that serves FUSE, and the blocks stay claimed until
they are present, so a write or a truncate waits for them); a block is committed to the index
only after its bytes were written; a fetch's failure is raised in
every reader waiting for it, and logged if it is not a `BucketfsError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator, Mapping

import trio

from bucketfs.backends.base import Backend
from bucketfs.cache.blocks import CleanBlocks
from bucketfs.cache.cachedfile import CachedFile, Fetch, ReadState
from bucketfs.cache.datafiles import DataFiles, cache_error
from bucketfs.cache.index import CacheIndex
from bucketfs.cache.landing import Landing, coalesce, landable, pwrite_all, release
from bucketfs.errors import BackendError, BucketfsError

log = logging.getLogger(__name__)

#: non-sequential read misses in one file before the rest of it is fetched in the background
FILL_AFTER = 4
#: GETs a background fill keeps in flight, of `Fetcher._max_part` blocks each (as many and as
#: large as a sequential reader's): 1,000 random 4 KiB reads in a 256 MiB object took 1.14-1.44 s,
#: against 1.63-1.85 s with 2 GETs of 8 blocks (one loaded machine, alternating runs)
FILL_PARALLEL = 4
#: a sequential reader's window is fetched in about this many GETs (see `part_blocks`)
PARTS_AHEAD = 4
#: fetched bytes are written to the data file in a worker thread from this many blocks on
THREAD_WRITE_BLOCKS = 2
#: a streamed body lands in the data file this many blocks at a time
LAND_BLOCKS = 2
#: landing buffers no stream uses are kept this long (seconds) after the last stream ended: a
#: sequential reader's GETs start one at a time as it moves on, often with none in flight
SPARE_IDLE = 1.0


class Fetcher:
    def __init__(
        self,
        backend: Backend,
        nursery: trio.Nursery,
        data_files: DataFiles,
        index: CacheIndex,
        blocks: CleanBlocks,
        files: Mapping[int, CachedFile],
        *,
        block_size: int,
        cache_size: int,
        max_parallel: int,
        max_window: int,
        fetch_blocks: int,
    ) -> None:
        self._backend = backend
        self._nursery = nursery
        self._data_files = data_files
        self._index = index
        self._blocks = blocks
        self._files = files
        self.block_size = block_size
        self._cache_size = cache_size
        self._limiter = trio.CapacityLimiter(max_parallel)
        self._fill_limiter = trio.CapacityLimiter(FILL_PARALLEL)
        self._max_window = max_window
        self._fetch_blocks = fetch_blocks
        self._max_part = max(fetch_blocks, max_window // PARTS_AHEAD)
        #: landing buffers of `LAND_BLOCKS` blocks no stream uses (`_buffer`)
        self._spare: list[bytearray] = []
        self._streams = 0
        self._idle_since = 0.0
        self._reaping = False
        self.gets = 0
        self.hits = 0
        self.misses = 0

    def _fetchable(self, cf: CachedFile, idx: int) -> bool:
        return (
            cf.base_etag is not None
            and idx * self.block_size < cf.base_size
            and idx not in cf.present
        )

    async def read(
        self, cf: CachedFile, offset: int, size: int, state: ReadState, *, lend: bool = False
    ) -> bytes | memoryview:
        """Bytes [offset, offset+size) of `cf` (fewer past its end), its blocks fetched first.

        With `lend`, a sequential reader gets a view of the data file's mapping
        (`DataFiles.lend`) instead of a copy when the file reaches the read's end: valid only
        until the caller's next checkpoint (the FUSE read hands it to pyfuse3, whose reply
        copies from it before any other task runs, so nothing truncates the file under it).
        Cold 1 GiB: ~0.2 s less CPU per GiB than `pread` into a new `bytes` that the reply
        copies again. A random reader gets a copy: it would map a window per read (1,000
        cached random 4 KiB reads: 0.31 s of CPU against 0.22-0.24 s, docs/maintainers/
        performance.md, session 15)."""
        end = min(offset + size, cf.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        sequential = self._advance(state, offset, end)
        if cf.base_etag is not None:
            if sequential:
                self._read_ahead(cf, first, last, state)
            else:
                self._count_random_miss(cf, first, last)
        await self.materialize_blocks(cf, first, last + 1)
        for idx in range(first, last + 1):
            self._blocks.touch(cf, idx)
        try:
            with self._data_files.using(cf.id) as fd:
                if lend and sequential:
                    view = self._data_files.lend(cf.id, fd, offset, end)
                    if view is not None:
                        return view  # no checkpoint from here to the caller
                data = os.pread(fd, end - offset, offset)
        except OSError as exc:
            raise cache_error(exc, "reading") from exc
        if len(data) < end - offset:  # a sparse tail past what was written
            data += bytes(end - offset - len(data))
        return data

    def _advance(self, state: ReadState, offset: int, end: int) -> bool:
        """Record a read of [offset, end) in `state`; whether it continues a sequential stream.

        Sequential: it starts where the stream reached, or touches one of the last reads (the
        kernel's readahead requests arrive in any order); each such read doubles the window.
        A read elsewhere within the window of a stream is part of it too (window kept); any
        other read ends the stream (window 0: a random reader)."""
        reached = state.next_offset
        touches = offset == reached or any(offset == e or end == s for s, e in state.recent)
        state.recent.append((offset, end))
        if touches:
            state.window = min(max(2, state.window * 2), self._max_window)
        elif not (state.window and abs(offset - reached) <= state.window * self.block_size):
            state.window = 0
            state.next_offset = end
            state.scanned = 0
            return False
        state.next_offset = max(reached, end)
        return True

    def part_blocks(self, window: int) -> int:
        """Blocks per GET for a readahead window: about `PARTS_AHEAD` GETs cover it, each at
        least `fetch_blocks` and at most `max_window / PARTS_AHEAD` blocks."""
        return min(max(self._fetch_blocks, window // PARTS_AHEAD), self._max_part)

    def _read_ahead(self, cf: CachedFile, first: int, last: int, state: ReadState) -> None:
        """Start GETs for the missing blocks from the read's own to `window` blocks past where
        the stream reached, in parts of `part_blocks(window)`. A part shorter than that starts
        only if it holds the reader's own blocks, ends at a block already there (or in flight)
        or at the object's end; else it waits for the window to move on, so a steady reader's
        GETs are all full parts.

        The scan starts past `state.scanned` (what the stream's last scan left behind was there
        or on its way), so a steady reader's read scans only the blocks the window gained, not
        the whole window (~65 blocks per 1 MiB read). A block that went missing behind it
        (evicted, or its fetch failed) comes with the read that needs it (`materialize`)."""
        bs = self.block_size
        nblocks = (cf.base_size + bs - 1) // bs
        stop = min((state.next_offset + bs - 1) // bs + state.window, nblocks)
        part = self.part_blocks(state.window)
        run: list[int] = []
        for idx in range(max(first, state.scanned), stop + 1):
            if idx < stop and self._fetchable(cf, idx) and idx not in cf.inflight:
                run.append(idx)
                if len(run) == part:
                    self._spawn(cf, run)
                    run = []
                continue
            if run and not (run[0] <= last or idx < stop or stop == nblocks):
                state.scanned = run[0]  # a short part waits for the window to move on
                return
            if run:
                self._spawn(cf, run)
            run = []
        state.scanned = stop

    def _count_random_miss(self, cf: CachedFile, first: int, last: int) -> None:
        if cf.filling or not any(self._fetchable(cf, i) for i in range(first, last + 1)):
            return
        cf.random_misses += 1
        if cf.random_misses >= FILL_AFTER and cf.base_size <= self._cache_size // 8:
            cf.filling = True
            self._nursery.start_soon(self._fill, cf)

    async def _fill(self, cf: CachedFile) -> None:
        """Fetch every block of `cf` not present yet, `FILL_PARALLEL` GETs of `_max_part`
        blocks at a time; stop when the base object changed, the file left the cache or a fetch
        failed."""
        etag, bs, part = cf.base_etag, self.block_size, self._max_part
        nblocks = (cf.base_size + bs - 1) // bs
        starts = iter(range(0, nblocks, part))

        async def worker() -> None:
            for start in starts:
                if cf.base_etag != etag or self._files.get(cf.id) is not cf:
                    return
                stop = min(start + part, nblocks)
                run = [
                    i for i in range(start, stop) if self._fetchable(cf, i) and i not in cf.inflight
                ]
                if not run:
                    continue
                claimed = self._claim(cf, run)
                # a run with holes (blocks present or in flight) is fetched whole; what is
                # already there is not written again
                span = list(range(run[0], run[-1] + 1))
                if await self._fetch(cf, span, claimed, self._fill_limiter) is not None:
                    return

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(FILL_PARALLEL):
                    nursery.start_soon(worker)
        finally:
            cf.filling = False

    async def read_local(self, cf: CachedFile, start: int, end: int) -> bytes:
        """Bytes [start, end) as the cache has them (materialize first); zeros in holes."""
        try:
            with self._data_files.using(cf.id) as fd:
                if end - start > 4 * self.block_size:
                    data = await trio.to_thread.run_sync(os.pread, fd, end - start, start)
                else:
                    data = os.pread(fd, end - start, start)
        except OSError as exc:
            raise cache_error(exc, "reading") from exc
        if len(data) < end - start:
            data += bytes(end - start - len(data))
        return data

    async def materialize(self, cf: CachedFile, start: int, end: int) -> None:
        """Make every block of [start, end) that the base object fills present."""
        if end > start:
            await self.materialize_blocks(
                cf, start // self.block_size, (end - 1) // self.block_size + 1
            )

    async def materialize_blocks(self, cf: CachedFile, first: int, stop: int) -> None:
        missing = [i for i in range(first, stop) if self._fetchable(cf, i)]
        if missing:
            self.misses += 1
            self._start_fetches(cf, missing)
        else:
            self.hits += 1
        for idx in range(first, stop):
            for _ in range(3):
                fetch = cf.inflight.get(idx)
                if fetch is None:
                    if self._fetchable(cf, idx):
                        self._start_fetches(cf, [idx])
                        continue
                    break
                await fetch.done.wait()
                if fetch.error is not None:
                    raise fetch.error

    async def prime(self, cf: CachedFile, etag: str, data: bytes) -> None:
        """The object's first bytes, fetched under `etag` with its attributes at open (one
        GET instead of a HEAD and a GET): land the blocks they fill that are missing and that
        no fetch brings; the last block only if `data` reaches the object's end."""
        bs = self.block_size
        whole = len(data) if len(data) >= cf.base_size else len(data) - len(data) % bs
        indexes = [
            i
            for i in range((whole + bs - 1) // bs)
            if i not in cf.present and i not in cf.inflight and self._fetchable(cf, i)
        ]
        if not indexes or not self._current(cf, etag):
            return
        claimed = self._claim(cf, indexes)
        try:
            await self._land(cf, 0, data[:whole], claimed, etag)
        finally:
            for idx, fetch in claimed.items():
                if cf.inflight.get(idx) is fetch:
                    del cf.inflight[idx]
                fetch.done.set()

    def _start_fetches(self, cf: CachedFile, indexes: list[int]) -> None:
        run: list[int] = []
        for idx in indexes:
            if idx in cf.inflight or not self._fetchable(cf, idx):
                continue
            if run and (idx != run[-1] + 1 or len(run) == self._fetch_blocks):
                self._spawn(cf, run)
                run = []
            run.append(idx)
        if run:
            self._spawn(cf, run)

    def _spawn(self, cf: CachedFile, indexes: list[int]) -> None:
        self._nursery.start_soon(self._fetch, cf, indexes, self._claim(cf, indexes))

    @staticmethod
    def _claim(cf: CachedFile, indexes: list[int]) -> dict[int, Fetch]:
        """A fetch per block of `indexes`: readers of a block wait for its own meanwhile."""
        claimed: dict[int, Fetch] = {}
        for idx in indexes:
            claimed[idx] = cf.inflight[idx] = Fetch()
        return claimed

    async def _fetch(
        self,
        cf: CachedFile,
        indexes: list[int],
        claimed: dict[int, Fetch],
        limiter: trio.CapacityLimiter | None = None,
    ) -> BaseException | None:
        """One ranged GET for blocks indexes[0]..indexes[-1], streamed into the data file; every
        claimed block is released once it landed (or the fetch ended). Returns the error that
        ended it, also set in the fetches of the blocks it did not bring."""
        bs = self.block_size
        start = indexes[0] * bs
        end = min((indexes[-1] + 1) * bs, cf.base_size)
        etag, base_key = cf.base_etag, cf.base_key
        error: BaseException | None = None
        try:
            assert etag is not None
            assert base_key is not None
            async with limiter or self._limiter:
                self.gets += 1
                reached = await self._stream(cf, base_key, start, end, etag, claimed)
                if reached < end:  # the body broke off: the rest once more, buffered
                    self.gets += 1
                    data = await self._backend.get(cf.bucket, base_key, reached, end, if_match=etag)
                    await self._land(cf, reached, data, claimed, etag)
        except BucketfsError as exc:
            error = exc
        except Exception as exc:
            log.exception("fetching %s/%s [%d, %d) failed", cf.bucket, base_key, start, end)
            error = exc
        finally:
            for idx, fetch in claimed.items():
                if cf.inflight.get(idx) is fetch:
                    del cf.inflight[idx]
                if not fetch.done.is_set():
                    fetch.error = error
                    fetch.done.set()
        return error

    async def _stream(
        self,
        cf: CachedFile,
        key: str,
        start: int,
        end: int,
        etag: str,
        claimed: dict[int, Fetch],
    ) -> int:
        """Receive [start, end) into a buffer of `LAND_BLOCKS` blocks and land it each time it
        is full (`landing.Landing`: written by the thread that received it, committed here);
        returns how far it landed: `end`, or less when the connection broke after the answer
        began (an error before that, such as a changed ETag, is raised)."""
        bs = self.block_size
        broke: BackendError | None = None
        with self._buffer(end - start) as view, self._data_files.using(cf.id) as fd:
            landing = Landing(
                cf, claimed, fd, start, end,
                block_size=bs,
                current=lambda: self._current(cf, etag),
                commit=lambda indexes: self._commit(cf, indexes),
            )  # fmt: skip
            async with self._backend.get_body(cf.bucket, key, start, end, if_match=etag) as body:
                while landing.reached < end:
                    fill = view[: min(len(view), end - landing.reached)]
                    try:
                        await body.receive_each(fill, landing, thread_from=THREAD_WRITE_BLOCKS * bs)
                    except BackendError as exc:  # the connection broke mid-body
                        broke = exc
                        break
                    if landing.full is None:
                        break  # the body ended, or broke off after some bytes came
                    # the disk was full: that fill lands here, where eviction makes room
                    full, landing.full = landing.full, None
                    await self._land(cf, landing.reached, full, claimed, etag)
                    landing.skip(len(full))
        if landing.reached < end:
            log.info(
                "GET %s/%s ended at %d of [%d, %d): fetching the rest again (%s)",
                cf.bucket, key, landing.reached, start, end, broke or "the connection broke",
            )  # fmt: skip
        return landing.reached

    @contextlib.contextmanager
    def _buffer(self, size: int) -> Iterator[memoryview]:
        """A landing buffer for a body of `size` bytes. Full-size ones are kept for the next
        streams until none ran for `SPARE_IDLE` (else each GET's buffer is allocated and
        zeroed on the trio thread, a fresh mapping if it is 4 MiB or more:
        `app.mount.MMAP_THRESHOLD`)."""
        full = self.block_size * LAND_BLOCKS
        buffer = self._spare.pop() if size >= full and self._spare else bytearray(min(size, full))
        self._streams += 1
        try:
            yield memoryview(buffer)
        finally:
            self._streams -= 1
            if len(buffer) == full:
                self._spare.append(buffer)
            if not self._streams:
                self._idle_since = trio.current_time()
                if not self._reaping:
                    self._reaping = True
                    try:
                        self._nursery.start_soon(self._drop_spare)
                    except RuntimeError:  # the cache is closing
                        self._spare.clear()
                        self._reaping = False

    async def _drop_spare(self) -> None:
        """Drop the spare landing buffers once no stream ran for `SPARE_IDLE`."""
        try:
            while self._spare:
                wait = self._idle_since + SPARE_IDLE - trio.current_time()
                if not self._streams and wait <= 0:
                    self._spare.clear()
                    return
                await trio.sleep(wait if not self._streams else SPARE_IDLE)
        finally:
            self._reaping = False

    async def _land(
        self,
        cf: CachedFile,
        offset: int,
        data: bytes | memoryview,
        claimed: dict[int, Fetch],
        etag: str,
    ) -> None:
        """Write the fetched bytes at block-aligned `offset` into the blocks this fetch still
        claims and that are not present, then release every claimed block they cover."""
        bs = self.block_size
        first = offset // bs
        stop = first + (len(data) + bs - 1) // bs
        # only blocks this fetch claimed: a fill's run may span blocks another fetch brings
        # (and a write may land in those once that one is done)
        got = landable(cf, claimed, first, stop)
        if got and self._current(cf, etag):
            await self._write_fetched(cf, offset, data, got, etag)
        release(cf, claimed, first, stop)

    def _current(self, cf: CachedFile, etag: str) -> bool:
        """Whether bytes fetched under `etag` still belong to `cf` (not reset, not forgotten)."""
        return cf.base_etag == etag and self._files.get(cf.id) is cf

    async def _write_fetched(
        self, cf: CachedFile, start: int, data: bytes | memoryview, indexes: list[int], etag: str
    ) -> None:
        """Write the fetched blocks `indexes` (claimed by the running fetch, so no write or
        truncate touches them meanwhile) and mark them present. Large writes go to a worker
        thread, off the thread that serves FUSE; a full disk is retried here (eviction)."""
        bs = self.block_size
        pieces = coalesce(memoryview(data), start, indexes, bs)
        with self._data_files.using(cf.id) as fd:
            if len(indexes) >= THREAD_WRITE_BLOCKS:
                try:
                    await trio.to_thread.run_sync(pwrite_all, fd, pieces)
                    pieces = []
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise cache_error(exc, "writing") from exc
                if not self._current(cf, etag):
                    return  # reset or forgotten meanwhile: these bytes are no one's
            for piece, offset in pieces:  # the pwrite that evicts and tries once more
                self._blocks.pwrite(fd, piece, offset)
        self._commit(cf, indexes)

    def _commit(self, cf: CachedFile, indexes: list[int]) -> None:
        """Fetched blocks `indexes` were written: mark them present (the index with them)."""
        cf.present.update(indexes)
        for idx in indexes:
            self._blocks.touch(cf, idx)
        self._index.set_blocks(cf.id, indexes, dirty=False)
        self._blocks.evict()
