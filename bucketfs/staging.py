"""Local staging copies of files being written.

Owns one temporary file per file that is being written, in the mount's cache directory. The
write path of this version is whole-file: the first write (or truncate) of an existing object
copies it into a staging file, writes land there, and flush/fsync upload the whole staging file.
The write-back block cache (issue 4) replaces this with blocks and a persistent index.

Invariants: `size` is the logical size of the file (the staging file may be longer only while a
truncate is in progress); `loaded` is True once the staging file holds the object's content
(or the file was truncated to zero / newly created); `dirty` is True from the first change until
an upload of the exact content confirmed by the server; `generation` grows on every change so
an upload can tell whether it uploaded the latest content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from bucketfs.errors import CacheError, CacheFull


def _cache_error(exc: OSError, what: str) -> CacheError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"cache disk full while {what}")
    return CacheError(f"cache I/O error while {what}: {exc}")


class Staging:
    """The local copy of one file's content."""

    def __init__(self, directory: Path) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix="stage-")
        except OSError as exc:
            raise _cache_error(exc, "creating a staging file") from exc
        self.fd = fd
        self.path = Path(name)
        self.size = 0
        self.loaded = False
        self.dirty = False
        self.generation = 0

    def write(self, offset: int, data: bytes) -> int:
        try:
            written = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            raise _cache_error(exc, "writing") from exc
        self.size = max(self.size, offset + written)
        self.touch()
        return written

    def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size:
            return b""
        size = min(size, self.size - offset)
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise _cache_error(exc, "reading") from exc

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise _cache_error(exc, "truncating") from exc
        self.size = size
        self.touch()

    def touch(self) -> None:
        self.dirty = True
        self.generation += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.fd = -1
