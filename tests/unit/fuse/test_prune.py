"""FUSE_NOTIFY_PRUNE as bucketfs writes it (fuse/prune.py), and the fall-back when refused."""

from __future__ import annotations

import os
import struct

from bucketfs.fuse import prune
from bucketfs.fuse.prune import Pruner


def test_the_message_is_an_out_header_then_the_count_then_the_inode_numbers() -> None:
    message = prune.encode([7, 2**40])
    # struct fuse_out_header {u32 len; s32 error (the notify code); u64 unique (0)}
    assert struct.unpack_from("=IiQ", message) == (len(message), 9, 0)
    # struct fuse_notify_prune_out {u32 count; u32 padding; u64 spare}, then u64 nodeids
    assert struct.unpack_from("=IIQ", message, 16) == (2, 0, 0)
    assert struct.unpack_from("=2Q", message, 32) == (7, 2**40)
    assert len(message) == 16 + 16 + 2 * 8


def test_one_write_per_batch_and_never_the_root() -> None:
    read, write = os.pipe()
    try:
        pruner = Pruner(write)
        assert pruner.prune([1, *range(2, 2 + prune.BATCH + 3)])
        first = os.read(read, 65536)
        (size,) = struct.unpack_from("=I", first)
        count = struct.unpack_from("=I", first, 16)[0]
        # the root is left out of the first batch: 511 inodes, then the last 4 in a second
        assert (size, count) == (16 + 16 + 8 * (prune.BATCH - 1), prune.BATCH - 1)
        assert struct.unpack_from("=I", first, 16 + 16 + 8 * (prune.BATCH - 1) + 16) == (4,)
        assert 1 not in struct.unpack_from(f"={count}Q", first, 32)
    finally:
        os.close(read)
        os.close(write)


def test_a_kernel_that_refuses_the_notification_turns_it_off_for_good() -> None:
    # an eventfd takes only 8-byte writes and answers EINVAL to anything else, as a kernel
    # before 6.18 answers an unknown notification code
    fd = os.eventfd(0)
    try:
        pruner = Pruner(fd)
        assert pruner.available
        assert not pruner.prune([5, 6])
        assert not pruner.available
        assert not pruner.prune([5, 6])
    finally:
        os.close(fd)


def test_no_descriptor_means_no_pruning() -> None:
    assert not Pruner(None).available
    assert not Pruner(None).prune([2])
