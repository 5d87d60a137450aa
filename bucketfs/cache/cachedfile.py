"""What the block cache knows about one file, in memory: `CachedFile`; and `ReadState`, what a
handle's reads so far say about the next one.

Owns no I/O: `store.BlockCache` changes these values (and the index with them, index first),
`fetch.Fetcher` fills `present` and `inflight`, `blocks.CleanBlocks` empties `present`.

Invariants: `dirty_blocks` is a subset of `present`; `dirty` is true while the file has a
change the server has not confirmed (also a new file not uploaded yet, with no dirty block);
`inflight` maps a block index to the fetch that brings it, only while that fetch runs; a
fetch's `done` is set when it ends, failed or not; `charge` is what the file counts in the
cache's dirty bytes (`BlockCache._recharge` keeps it in step); `in_index` is false only for
a new file before its first FLUSH (`BlockCache.record`): no base object, every block dirty,
nothing of it in the index yet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from bucketfs.errors import BucketfsError

#: reads a handle remembers to tell a sequential reader whose requests arrive out of order
RECENT_READS = 8


@dataclass(slots=True)
class ReadState:
    """Per-handle sequential-access detection (`fetch.Fetcher._advance` keeps it).

    `next_offset` is where the stream of sequential reads has reached (the highest end seen),
    `window` how many blocks past it are fetched ahead (0: a random reader), `recent` the
    (start, end) of the last `RECENT_READS` reads: the kernel sends a sequential reader's
    readahead as several requests at once, and they arrive in any order.
    """

    next_offset: int = 0
    window: int = 0
    #: blocks of the stream before this index were there or on their way at its last
    #: readahead scan (`Fetcher._read_ahead` starts past it; 0 when a stream starts)
    scanned: int = 0
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RECENT_READS))


@dataclass(slots=True)
class Fetch:
    """One ranged GET in flight; readers of its blocks wait for `done`."""

    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class EarlyUpload:
    """A multipart upload of a new file whose full parts go while it is written (early.py
    sends them; `BlockCache` tells it of every change). Invariant: `sent` holds a part only
    while no write or truncate touched its bytes since they were read for it: a change
    drops the part and bumps its epoch, so a part in flight across a change is not kept."""

    bucket: str
    key: str
    #: bytes per part (fixed when the upload starts)
    part: int
    #: what CreateMultipartUpload carried (metadata, content type, system headers)
    opts: Any
    upload_id: str | None = None
    #: part number -> ETag of the parts on the server whose bytes are still the file's
    sent: dict[int, str] = field(default_factory=dict)
    #: part number -> changes that touched it (a part read before a change is not kept)
    epochs: dict[int, int] = field(default_factory=dict)
    inflight: set[int] = field(default_factory=set)
    #: no longer usable (renamed, deleted, too large, failed): aborted, never completed
    void: bool = False
    #: the due upload took it over: no part starts here any more
    taken: bool = False
    #: parts below `size - slack` counted at the last wake (`early.EarlyParts.wrote`)
    seen: int = 0
    wake: trio.Event = field(default_factory=trio.Event)

    def touched(self, start: int, end: int) -> None:
        """Bytes [start, end) changed: the parts holding them are no longer the file's."""
        if end <= start:
            return
        first, last = start // self.part + 1, (end - 1) // self.part + 1
        for number in [n for n in self.sent if first <= n <= last]:
            del self.sent[number]
        for number in self.inflight:
            if first <= number <= last:
                self.epochs[number] = self.epochs.get(number, 0) + 1
        # a part not sent nor in flight has nothing to drop

    def poke(self) -> None:
        """Wake every task waiting on `wake` (each takes the event before it looks)."""
        event, self.wake = self.wake, trio.Event()
        event.set()

    def drop(self) -> None:
        """The file was renamed, deleted or replaced: the upload is aborted, never used."""
        self.void = True
        self.poke()


@dataclass(eq=False, slots=True)
class CachedFile:
    id: int
    bucket: str
    key: str | None
    size: int
    base_key: str | None  # where the base object lives (the key it was opened under)
    base_etag: str | None
    base_size: int
    meta: dict[str, Any]
    dirty: bool = False
    state: str = "clean"
    error: str | None = None
    #: what the last failed upload raised (its errno is what fsync reports)
    failure: BucketfsError | None = None
    present: set[int] = field(default_factory=set)
    dirty_blocks: set[int] = field(default_factory=set)
    #: what this file counts in `BlockCache.dirty_bytes` (see `_recharge`)
    charge: int = 0
    generation: int = 0
    uploaded_generation: int = 0
    #: when the file last changed (content, upload metadata) or was released, on trio's
    #: clock: its upload waits until it was left alone for `writeback_delay` after that
    changed: float = 0.0
    inflight: dict[int, Fetch] = field(default_factory=dict)
    #: set while an upload runs; a write cancels it (the upload is then stale)
    upload_scope: trio.CancelScope | None = None
    #: set (and replaced) whenever an upload finished or failed, for waiters
    progress: trio.Event = field(default_factory=trio.Event)
    #: non-sequential reads that missed; FILL_AFTER of them start a background fill
    random_misses: int = 0
    filling: bool = False
    #: nodes whose `cached` is this file (core.nodes.Node keeps the count)
    holders: int = 0
    #: whether the index has the file's row (a new file gets it at its first FLUSH)
    in_index: bool = True
    #: the multipart upload sent while the file is written (cache/early.py), if any
    early: EarlyUpload | None = None

    @property
    def upload_state(self) -> str:
        if not self.dirty:
            return "clean"
        if self.state == "failed":
            return f"failed: {self.error}"
        return self.state
