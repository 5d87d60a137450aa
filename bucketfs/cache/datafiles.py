"""The block cache's data files: `CACHE_DIR/data/<file id>`, one sparse file per cached file.

Owns creating, opening and removing them. Creating a file is a journaled change of the cache
directory's file system: while the object store on the same disk syncs its writes it takes
0.1-0.6 ms, and it would take it on the one thread that serves FUSE, once per new file. File
ids only grow (the index's AUTOINCREMENT), so the next ones are known: a worker thread creates
the data files of the next `SPARE` ids ahead of time, and opening a new file's data file is
then a plain open.

Invariants:
- ids are never reused, so a file created ahead is empty when its id is first given out; the
  worker never truncates or writes (an open that raced it finds the same empty file);
- a data file whose id has no row in the index (created ahead and never used, or left by a
  crash between the index update and the unlink) is removed at the next start (`sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection
from pathlib import Path

import trio

log = logging.getLogger(__name__)

#: data files kept created ahead of the newest id
SPARE = 64


class DataFiles:
    def __init__(self, root: Path) -> None:
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._ahead = 0  # the highest id whose data file was created ahead
        self._creating = False
        self.created_ahead = 0

    def open(self, file_id: int) -> int:
        """The data file of `file_id`, created if it does not exist (OSError as the OS said)."""
        return os.open(self.dir / str(file_id), os.O_RDWR | os.O_CREAT, 0o600)

    def remove(self, file_id: int) -> None:
        self._unlink(str(file_id))

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()

    def sweep(self, known: Collection[int]) -> int:
        """Remove the data files of ids the index does not know; how many there were."""
        removed = 0
        for name in os.listdir(self.dir):
            if not name.isdigit() or int(name) not in known:
                self._unlink(name)
                removed += 1
        if removed:
            log.debug("removed %d data files the index does not know", removed)
        return removed

    def given_out(self, file_id: int, nursery: trio.Nursery) -> None:
        """`file_id` was just given to a new cached file: keep data files ready past it."""
        if SPARE <= 0 or self._creating or self._ahead - file_id > SPARE // 2:
            return
        self._creating = True
        first, last = max(self._ahead, file_id) + 1, file_id + SPARE
        try:
            nursery.start_soon(self._create_ahead, first, last)
        except RuntimeError:  # the cache is closing: nothing to prepare for
            self._creating = False

    async def _create_ahead(self, first: int, last: int) -> None:
        try:
            await trio.to_thread.run_sync(self._create_range, first, last)
        except OSError as exc:  # e.g. no inodes left: `open` will say so when it matters
            log.debug("creating data files ahead failed: %s", exc)
        finally:
            self._creating = False

    def _create_range(self, first: int, last: int) -> None:
        for file_id in range(first, last + 1):
            os.close(self.open(file_id))
            self._ahead = file_id
            self.created_ahead += 1
