"""Landing a ranged GET's bytes in a data file: which blocks a fetch may write, writing them,
and releasing the readers that wait for them (`fetch.Fetcher` owns the fetches; this module
is the rules every landing follows, and the `Sink` a streamed GET lands through).

The landing rules: fetched bytes go only into blocks the running fetch still claims
(`CachedFile.inflight` maps them to its own `Fetch`) and that are not present, and only while
the file still belongs to the ETag they were fetched under (`current`); the blocks are marked
present, and the index commits them, only after their bytes were written (a crash between the
two leaves bytes the index does not claim, never the other way round); every claimed block a
landing covers is released then, written or not.

`Landing` is the `backends.base.Sink` of one streamed GET: `write` runs in the worker thread
that received the fill (S3 over plain HTTP: `s3/receive.py`), checks the rules there and
writes; `landed` runs on the trio thread after each fill, commits and releases. The rules may
be read from another thread: CPython's GIL makes each read of `inflight`, `present` and the
ETag whole, and the only change that can happen to a claimed block meanwhile is a reset or a
forget of its file (a write and a truncate wait for claimed blocks; only this fetch releases
them), which `current` catches again before the commit: bytes written in between are in a
block that is not present, fetched again when read, as with a write in a worker thread
before. A full disk stops the receive (`full`: the fill stays in the buffer) and the fetcher
lands that fill on the trio thread, where a full disk evicts clean blocks and tries again.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable

from bucketfs.cache.cachedfile import CachedFile, Fetch
from bucketfs.cache.datafiles import cache_error
from bucketfs.errors import CacheError


def landable(cf: CachedFile, claimed: dict[int, Fetch], first: int, stop: int) -> list[int]:
    """Blocks of [first, stop) that this fetch (`claimed`) still claims and are not present."""
    inflight, present = cf.inflight, cf.present
    return [
        i
        for i in range(first, stop)
        if i in claimed and inflight.get(i) is claimed[i] and i not in present
    ]


def release(cf: CachedFile, claimed: dict[int, Fetch], first: int, stop: int) -> None:
    """The claimed blocks of [first, stop) landed (or will not): their readers go on."""
    for idx in range(first, stop):
        fetch = claimed.get(idx)
        if fetch is not None and not fetch.done.is_set():
            if cf.inflight.get(idx) is fetch:
                del cf.inflight[idx]
            fetch.done.set()


class Landing:
    """The `Sink` of one streamed GET of [start, end) of `cf`'s base object."""

    __slots__ = (
        "_bs",
        "_cf",
        "_claimed",
        "_commit",
        "_current",
        "_fd",
        "_steps",
        "end",
        "error",
        "full",
        "offset",
        "reached",
    )

    def __init__(
        self,
        cf: CachedFile,
        claimed: dict[int, Fetch],
        fd: int,
        start: int,
        end: int,
        *,
        block_size: int,
        current: Callable[[], bool],
        commit: Callable[[list[int]], None],
    ) -> None:
        """`current`: whether the bytes still belong to `cf`; `commit(indexes)`: mark those
        blocks present (index included), on the trio thread."""
        self._cf = cf
        self._claimed = claimed
        self._fd = fd
        self._bs = block_size
        self._current = current
        self._commit = commit
        self.end = end
        #: where the next fill lands (the writing thread's), and how far it landed (trio's)
        self.offset = start
        self.reached = start
        #: fills written and not committed yet: (offset, length, blocks written)
        self._steps: deque[tuple[int, int, list[int]]] = deque()
        #: a fill not written because the disk was full (a view of the buffer)
        self.full: memoryview | None = None
        self.error: CacheError | None = None

    def write(self, filled: memoryview) -> bool:
        """In the receiving thread: write the blocks of `filled` the rules allow. A fill that
        ends short of `end` (the connection broke) lands its whole blocks only."""
        bs, offset = self._bs, self.offset
        size = len(filled)
        if offset + size < self.end:
            size -= size % bs
        first = offset // bs
        indexes = landable(self._cf, self._claimed, first, first + (size + bs - 1) // bs)
        if indexes and self._current():
            try:
                pwrite_all(self._fd, coalesce(filled[:size], offset, indexes, bs))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.full = filled[:size]
                else:
                    self.error = cache_error(exc, "writing")
                return False
        else:
            indexes = []
        self._steps.append((offset, size, indexes))
        self.offset = offset + size
        return size == len(filled)

    def landed(self) -> None:
        """On the trio thread: commit what was written, release the readers."""
        bs = self._bs
        while self._steps:
            offset, size, indexes = self._steps.popleft()
            if indexes and self._current():  # reset or forgotten meanwhile: no one's bytes
                self._commit(indexes)
            release(self._cf, self._claimed, offset // bs, (offset + size + bs - 1) // bs)
            self.reached = offset + size
        if self.error is not None:
            raise self.error

    def skip(self, size: int) -> None:
        """`size` bytes from `offset` were landed by other means (`full`)."""
        self.offset += size
        self.reached = self.offset


def coalesce(
    view: memoryview, start: int, indexes: list[int], bs: int
) -> list[tuple[memoryview, int]]:
    """The blocks `indexes` of `view` (which starts at file offset `start`), adjacent ones as
    one write each: (piece, file offset)."""
    out: list[tuple[memoryview, int]] = []
    for idx in indexes:
        lo = idx * bs - start
        hi = min(lo + bs, len(view))
        if out and out[-1][1] + len(out[-1][0]) == idx * bs:
            first = out[-1][1] - start
            out[-1] = (view[first:hi], out[-1][1])
        else:
            out.append((view[lo:hi], idx * bs))
    return out


def pwrite_all(fd: int, pieces: list[tuple[memoryview, int]]) -> None:
    """pwrite every piece whole (OSError as the OS said)."""
    for piece, offset in pieces:
        done = 0
        while done < len(piece):
            done += os.pwrite(fd, piece[done:], offset + done)
