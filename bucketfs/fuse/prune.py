"""Asks the kernel to let go of inodes by number: FUSE_NOTIFY_PRUNE (Linux 6.18, protocol 7.45).

Owns the encoding of that notification and the choice between it and the older way, one
FUSE_NOTIFY_INVAL_ENTRY per name (`pyfuse3.invalidate_entry`).

Why it exists (docs/core.md, "max_nodes"): the bound on the inode table (session.py) asks the
kernel to forget the coldest names. Invalidating a name takes its parent directory's lock
exclusively, and a READDIRPLUS request holds that lock (shared) while the daemon answers it:
on Linux 6.18 one request carries up to 1 MiB, about 6,000 entries, each a new node. While
`find` read a directory of 100,000 entries the invalidations got the lock only between two
such requests, and the table grew to 90,000 nodes with `max_nodes=20000` (243,000 and
~400 MiB of RSS for `find` over 1,000,000 keys on a quiet host). Pruning by inode number takes
no directory lock: the kernel drops the unused dentries of each inode (`d_prune_aliases`) and
sends FORGET for the inodes that go. It skips what is in use (an open file, a directory with
cached children, a working directory), where invalidation would unhash the name.

pyfuse3 (3.5.0) does not offer the notification, so it is written to the session's /dev/fuse
descriptor here, as libfuse writes its own notifications: one write(2) of an out-header with
`unique` 0 and the notification code in `error`, then `fuse_notify_prune_out` and the inode
numbers. A kernel that does not know the code answers EINVAL; from then on this mount
invalidates names instead.

Invariants: a notification is one write (the kernel reads it whole, so concurrent replies from
other threads never interleave with it); at most `BATCH` inodes per write; inode 1 (the root)
is never sent; the module never reads /dev/fuse.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: enum fuse_notify_code in include/uapi/linux/fuse.h (7.45)
NOTIFY_PRUNE = 9
#: inode numbers per notification (the kernel copies them in batches of 512 as well)
BATCH = 512

_HEADER = struct.Struct("=IiQ")  # struct fuse_out_header: len, error (the code), unique
_PRUNE = struct.Struct("=IIQ")  # struct fuse_notify_prune_out: count, padding, spare


def encode(inodes: Sequence[int]) -> bytes:
    """One FUSE_NOTIFY_PRUNE message for `inodes` (at most `BATCH`)."""
    assert 0 < len(inodes) <= BATCH
    body = _PRUNE.pack(len(inodes), 0, 0) + struct.pack(f"={len(inodes)}Q", *inodes)
    return _HEADER.pack(_HEADER.size + len(body), NOTIFY_PRUNE, 0) + body


class Pruner:
    """Prunes inodes through one /dev/fuse descriptor while the kernel takes the notification."""

    def __init__(self, fd: int | None) -> None:
        #: None: no descriptor found, or the kernel refused the notification
        self._fd = fd

    @property
    def available(self) -> bool:
        return self._fd is not None

    def prune(self, inodes: Sequence[int]) -> bool:
        """In a worker thread: ask the kernel to forget `inodes` where nothing uses them.
        False (and never again True) if the kernel does not take the notification."""
        if self._fd is None:
            return False
        for i in range(0, len(inodes), BATCH):
            batch = [ino for ino in inodes[i : i + BATCH] if ino != 1]
            if not batch:
                continue
            try:
                os.write(self._fd, encode(batch))
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    log.info(
                        "the kernel does not take FUSE_NOTIFY_PRUNE (%s): names are "
                        "invalidated one by one instead",
                        exc,
                    )
                    self._fd = None
                    return False
                if exc.errno != errno.ENOENT:
                    log.debug("could not prune %d inodes: %s", len(batch), exc)
        return True
