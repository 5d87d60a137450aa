"""The block cache's data files: `CACHE_DIR/data/<file id>`, one sparse file per cached file.

Owns creating, opening, closing and removing them, and the descriptors open on them.

Creating a file is a journaled change of the cache directory's file system: while the object
store on the same disk syncs its writes it takes 0.1-0.6 ms, and it would take it on the one
thread that serves FUSE, once per new file. File ids only grow (`CacheIndex.new_id`), so
the next ones are known: a worker thread creates the data files of the next `SPARE` ids ahead
of time, and opening a new file's data file is then a plain open.

Descriptors: at most `max_open` data files stay open, least recently used closed first, so a
mount that touches many files stays far below the open files limit (each cached file kept its
descriptor until its inode was forgotten: 1,300 small files written under the default soft
limit of 1024 failed with EMFILE). A file is reopened on its next use; the open is cheap next
to the request that needs it.

Invariants:
- a descriptor is used only inside `using(file_id)`, and one in use there is never closed,
  by the LRU or by `remove` (an operation in flight, e.g. a read in a worker thread, keeps
  it; it is closed when the last use ends), so a descriptor number is never reused under a
  reader or a writer; more than `max_open` are open only while that many are in use;
- ids are never reused within a run (one given to a new file a crash lost before its row
  was written may come again in the next run, after `sweep` removed its data file), so a
  file created ahead is empty when its id is first given out; the worker never truncates or
  writes (an open that raced it finds the same empty file);
- a data file whose id has no row in the index (created ahead and never used, or left by a
  crash between the index update and the unlink) is removed at the next start (`sweep`).

Mappings (`lend`): a read may be answered from a shared read-only mapping of the data file
instead of a `pread` copy (the FUSE reply copies from it straight into the kernel). A mapping
covers one `MAP_WINDOW` of a file (more if a read crosses its end), and at most `MAX_MAPS` are
kept, least recently used dropped first: the pages a mapping touched count in the daemon's
RSS (a mapping of the whole file put the peak RSS of a 1 GiB read at 1 GiB; 4 windows of 4 MiB
added ~15 MiB to it, 4 of 2 MiB ~9 MiB), at the cost of a new mapping per `MAP_WINDOW` a reader
moves on. Touching a mapped page past the file's end is SIGBUS, so:
- a mapping is never longer than its file was when it was made, and a data file shrinks only
  through `truncate` (which drops its mappings first; `remove` unlinks, which keeps the pages);
- a view is lent only until the borrower's next checkpoint (`Fetcher.read`'s `lend`: the FUSE
  read replies from it before any other task runs), so no truncate runs while one is read.
  Holes (punched by eviction, or never written) read as zeros through a mapping as through
  `pread`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import trio

from bucketfs.errors import CacheError, CacheFull

log = logging.getLogger(__name__)

#: data files kept created ahead of the newest id
SPARE = 64
#: data files kept open at most (beyond those in use right now)
MAX_OPEN = 64
#: a read is answered from a mapping of this much of its data file around it (`lend`)
MAP_WINDOW = 2 << 20
#: mappings kept at most, least recently used dropped first
MAX_MAPS = 2


libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def cache_error(exc: OSError, what: str) -> CacheError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"cache disk full while {what}")
    return CacheError(f"cache I/O error while {what}: {exc}")


class DataFiles:
    def __init__(self, root: Path, *, max_open: int = MAX_OPEN) -> None:
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir = str(self.dir)
        self._ahead = 0  # the highest id whose data file was created ahead
        self._creating = False
        self.created_ahead = 0
        self.max_open = max_open
        #: file id -> open descriptor, least recently used first
        self._open: OrderedDict[int, int] = OrderedDict()
        #: file id -> uses in flight (`using`)
        self._uses: dict[int, int] = {}
        #: descriptors of removed files still in use: closed when their last use ends
        self._orphans: dict[int, list[int]] = {}
        #: (file id, offset) -> a read-only mapping of the data file from that offset (`lend`),
        #: least recently used first
        self._maps: OrderedDict[tuple[int, int], mmap.mmap] = OrderedDict()
        self.opens = 0
        self.maps = 0

    def _open_file(self, file_id: int) -> int:
        """The data file of `file_id`, created if it does not exist (OSError as the OS said).

        One created ahead is opened without O_CREAT: an open with it takes the directory's
        lock, which the thread creating the next files holds (measured: 3 us alone, ~90 us
        beside that thread)."""
        path = os.path.join(self._dir, str(file_id))
        if file_id <= self._ahead:
            try:
                return os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                pass  # removed since (a sweep, a forget): create it as below
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def using(self, file_id: int) -> Iterator[int]:
        """The data file's descriptor, open (and kept open) until the block ends (CacheError
        if it cannot be opened)."""
        fd = self._open.get(file_id)
        if fd is None:
            try:
                fd = self._open_file(file_id)
            except OSError as exc:
                raise cache_error(exc, "opening a data file") from exc
            self.opens += 1
            self._open[file_id] = fd
        else:
            self._open.move_to_end(file_id)
        self._uses[file_id] = self._uses.get(file_id, 0) + 1
        try:
            yield fd
        finally:
            left = self._uses.pop(file_id) - 1
            if left:
                self._uses[file_id] = left
            else:
                for orphan in self._orphans.pop(file_id, ()):
                    os.close(orphan)
            self._trim()

    def _trim(self) -> None:
        """Close the least recently used descriptors not in use, down to `max_open`."""
        if len(self._open) <= self.max_open:
            return
        for file_id in list(self._open):
            if len(self._open) <= self.max_open:
                return
            if file_id not in self._uses:
                os.close(self._open.pop(file_id))

    def lend(self, file_id: int, fd: int, start: int, end: int) -> memoryview | None:
        """Bytes [start, end) of the data file (`fd`, in use) as a view of its mapping, valid
        only until the caller's next checkpoint (see the module's invariants); None when the
        file does not reach `end` (a sparse tail: `pread` it) or cannot be mapped."""
        first = start - start % MAP_WINDOW
        key = (file_id, first)
        mapped = self._maps.get(key)
        if mapped is not None and first + len(mapped) >= end:
            self._maps.move_to_end(key)
        else:
            size = os.fstat(fd).st_size
            if size < end:
                return None
            self._close_map(key)
            length = min(max(MAP_WINDOW, end - first), size - first)
            try:
                mapped = mmap.mmap(
                    fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=first
                )
            except OSError as exc:  # e.g. out of address space: the caller reads instead
                log.debug("mapping data file %d failed: %s", file_id, exc)
                return None
            self._maps[key] = mapped
            self.maps += 1
            while len(self._maps) > MAX_MAPS:
                self._close_map(next(iter(self._maps)))
        return memoryview(mapped)[start - first : end - first]

    def _close_map(self, key: tuple[int, int]) -> bool:
        """Drop one mapping; False while a view of it is still lent (it goes with the view)."""
        mapped = self._maps.pop(key, None)
        if mapped is None:
            return True
        try:
            mapped.close()
        except BufferError:
            return False
        return True

    def unmap(self, file_id: int) -> bool:
        """Drop the file's mappings (before it shrinks, or when it goes); whether they are gone
        now: False while a view of one is still lent (it goes with the view)."""
        gone = True
        for key in [key for key in self._maps if key[0] == file_id]:
            gone = self._close_map(key) and gone
        return gone

    def truncate(self, file_id: int, fd: int, size: int) -> None:
        """ftruncate the data file (`fd`, in use) to `size`, its mapping dropped first (OSError
        as the OS said)."""
        if not self.unmap(file_id):  # a lent view outlived its checkpoint: a bug
            log.error("data file %d shrinks under a lent view of it", file_id)
        os.ftruncate(fd, size)

    def cut_to(self, file_id: int, size: int) -> None:
        """Cut a dirty file's data file to its recorded `size` at start: bytes past it were
        never acknowledged (a kill between a truncate's commit and the cut, or between a write
        and its commit), and a later write past them must find zeros there, not those."""
        try:
            with self.using(file_id) as fd:
                if os.fstat(fd).st_size > size:
                    self.truncate(file_id, fd, size)
        except OSError as exc:
            log.warning("could not cut the data file of cached file %d: %s", file_id, exc)

    def punch(self, file_id: int, punch: Callable[[int], None]) -> None:
        """Run `punch(fd)` on the data file, with the open descriptor if there is one, else a
        transient one (never closing another file's, so safe inside any `using` block)."""
        fd = self._open.get(file_id)
        if fd is not None:
            punch(fd)
            return
        try:
            fd = os.open(self.dir / str(file_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # nothing on disk to free
        try:
            punch(fd)
        finally:
            os.close(fd)

    @property
    def open_count(self) -> int:
        return len(self._open) + sum(map(len, self._orphans.values()))

    def close(self, file_id: int) -> None:
        """Close the file's descriptor (after its last use, if it is in use)."""
        self.unmap(file_id)
        fd = self._open.pop(file_id, None)
        if fd is None:
            return
        if file_id in self._uses:
            self._orphans.setdefault(file_id, []).append(fd)
        else:
            os.close(fd)

    def close_all(self) -> None:
        for key in list(self._maps):
            self._close_map(key)
        for fd in [*self._open.values(), *(fd for fds in self._orphans.values() for fd in fds)]:
            os.close(fd)
        self._open.clear()
        self._orphans.clear()

    def remove(self, file_id: int) -> None:
        self.close(file_id)
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
            os.close(self._open_file(file_id))
            self._ahead = file_id
            self.created_ahead += 1

    def sync(self) -> None:
        """syncfs(2) of the file system that holds the data files: what was written to them
        reaches the disk."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)
