"""WAL checkpoints of the cache index, in a worker thread instead of inside a commit.

Owns a second SQLite connection to `index.sqlite` and the task that checkpoints the WAL with
it. Why: SQLite's auto-checkpoint runs inside the commit that takes the WAL past 1,000 pages,
on the trio thread that answers the kernel, and a checkpoint syncs the WAL and the database
file; under disk pressure such a commit took tens of milliseconds instead of ~0.1 ms
(docs/cache.md, "Checkpoints").

Invariants:
- while `run` runs, the serving connection does not checkpoint (`wal_autocheckpoint=0`),
  except when `LIMIT` commits went by without the WAL wholly copied (commits kept landing
  during the thread's passes, so the WAL never started over, or the thread failed): then one
  commit checkpoints as SQLite's own auto-checkpoint would, so the WAL stays bounded whatever
  the disk does; when no task runs, SQLite's auto-checkpoint is on;
- a checkpoint changes where committed pages live (the WAL or the database file), never whether
  they are committed: a kill at any point loses nothing a commit returned (WAL mode does this;
  `synchronous=NORMAL` leaves a machine crash's last commits to fsync, as before);
- PASSIVE checkpoints (they never wait for, nor block, the serving connection) every `EVERY`
  commits, about SQLite's own 1,000 pages; when no commit came for `IDLE` seconds, a PASSIVE
  one and then a TRUNCATE, which has nothing left to copy and holds the write lock only to
  empty the file; the close of the last connection at unmount checkpoints and removes the WAL;
- the task belongs to the filesystem's nursery and wakes only after commits (an idle daemon
  stays asleep); a checkpoint in flight finishes before the task ends (its thread is never
  abandoned), and its connection is closed before the index's.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import trio

from bucketfs.cache.index import CacheIndex
from bucketfs.errors import CacheError

log = logging.getLogger(__name__)

#: commits between two PASSIVE checkpoints (a small file's FLUSH writes ~4 pages: ~1,000 pages)
EVERY = 256
#: seconds without a commit before the WAL is checkpointed and emptied (TRUNCATE); short, so
#: that the one wake-up it costs comes soon after the last commit rather than in a later lull
IDLE = 1.0
#: commits without the WAL wholly copied, before the serving connection checkpoints it itself
#: (about 16 MiB of WAL)
LIMIT = 4 * EVERY
#: SQLite's default `wal_autocheckpoint`, in pages: the serving connection's when no task runs
AUTO_PAGES = 1000
#: PASSIVE passes per wake-up while commits keep landing during them
PASSES = 4
#: the checkpoint thread's busy timeout (a TRUNCATE waits for a write transaction to end)
BUSY_MS = 200
#: checkpoints run in a worker thread; the unit tests' autojump clock runs them inline, since a
#: thread in flight lets virtual time race (tests/unit/conftest.py)
THREADED = True

T = TypeVar("T")


class Checkpoints:
    """Checkpoints the index's WAL from a worker thread (see the module's invariants)."""

    def __init__(self, index: CacheIndex) -> None:
        self._index = index
        self._db: sqlite3.Connection | None = None
        self._commits = 0  # every commit of the serving connection counted so far
        self._behind = 0  # commits since the WAL was last wholly copied
        self._since = 0  # commits since the last checkpoint started
        self._written = trio.Event()  # a commit since the task last looked
        self._due = trio.Event()  # EVERY commits since the last checkpoint started
        self._limiter = trio.CapacityLimiter(1)
        #: figures for tests and the performance notes: PASSIVE passes and TRUNCATEs in the
        #: thread, checkpoints the serving connection had to make itself (LIMIT)
        self.passes = 0
        self.truncates = 0
        self.fallbacks = 0

    # --- on the trio thread, inside the serving connection's statements --------------------

    def committed(self) -> None:
        """One commit of the serving connection (`_GuardedDb.on_commit`); no await."""
        self._commits += 1
        self._behind += 1
        self._since += 1
        if not self._written.is_set():
            self._written.set()
        if self._since >= EVERY and not self._due.is_set():
            self._due.set()
        if self._behind >= LIMIT:
            self._fall_back()

    def _fall_back(self) -> None:
        """The thread has not caught up for LIMIT commits (commits kept landing during its
        passes, or it failed): one PASSIVE checkpoint here, which nothing can write during,
        so the next commit starts the WAL over. Busy while the thread's pass runs: the next
        commit tries again; failed (logged): tried again LIMIT commits later."""
        result = self._index.checkpoint("PASSIVE")
        if result is None:
            self._behind = 0
        elif result[0] == 0 and result[2] >= result[1]:
            self.fallbacks += 1
            self._behind = 0
            log.debug("cache index: WAL checkpointed by a commit (%d frames)", result[1])

    # --- the task ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Checkpoint after commits, until cancelled; the serving connection's own
        checkpoints are off meanwhile."""
        db = self._index.db
        db.on_commit = self.committed
        self._index.autocheckpoint(0)
        try:
            task_status.started()
            while True:
                await self._written.wait()
                self._written = trio.Event()
                seen = self._commits
                with trio.move_on_after(IDLE):
                    await self._due.wait()
                if self._due.is_set():
                    await self._checkpoint(idle=False)
                    self._written.set()  # and empty the WAL once idle
                elif self._commits == seen:
                    await self._checkpoint(idle=True)
                # else: commits came within IDLE (fewer than EVERY): wait again
        finally:
            db.on_commit = None
            with trio.CancelScope(shield=True):
                await self._call(self._close)
            with contextlib.suppress(CacheError):  # the index may be closed already
                self._index.autocheckpoint(AUTO_PAGES)

    async def _checkpoint(self, *, idle: bool) -> None:
        """One trip to the thread (each trip wakes the trio thread once more when it ends)."""
        self._since = 0
        self._due = trio.Event()
        start = self._commits

        def work() -> bool:
            if not self._passive():
                return False
            if idle and self._commits == start:
                self._truncate()
            return True

        if await self._call(work):
            self._behind = self._commits - start

    async def _call(self, fn: Callable[[], T]) -> T:
        if THREADED:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        await trio.lowlevel.checkpoint()
        return fn()

    # --- in the worker thread --------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(
                self._index.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_MS / 1000,
            )
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        return self._db

    def _pragma(self, mode: str) -> tuple[int, int, int] | None:
        try:
            row = self._connection().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            # past LIMIT commits the serving connection checkpoints itself
            log.warning("cache index: %s checkpoint failed: %s", mode, exc)
            return None
        busy, log_frames, copied = (int(v) for v in row)
        return busy, log_frames, copied

    def _passive(self) -> bool:
        """PASSIVE passes until one copied the whole WAL with no commit landing meanwhile
        (then the serving connection's next write starts the WAL over: it stays small), at
        most PASSES of them; whether one did."""
        for _ in range(PASSES):
            before = self._commits  # an int the trio thread moves: read, never written here
            result = self._pragma("PASSIVE")
            self.passes += 1
            if result is None:
                return False
            busy, log_frames, copied = result
            if not busy and copied >= log_frames and self._commits == before:
                return True
        return False

    def _truncate(self) -> None:
        """Empty the WAL file (idle, right after a PASSIVE pass that copied it all: nothing is
        left to copy, so the write lock this takes is held only for the truncation)."""
        self._pragma("TRUNCATE")
        self.truncates += 1

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
