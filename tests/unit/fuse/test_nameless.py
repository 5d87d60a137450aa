"""Readdir entries without a node (fuse/nameless.py); the numbers reserved for them: test_nodes."""

from __future__ import annotations

import pyfuse3

from bucketfs.core.nodes import Nameless
from bucketfs.fuse import nameless


def test_the_entry_carries_the_number_but_no_node() -> None:
    # pyfuse3 3.5.0's layout holds on this platform: the adapter shows nameless entries
    assert nameless.AVAILABLE
    entry = nameless.nameless_entry(Nameless(4242, 0o100000))
    assert entry.st_ino == 0  # fuse_entry_param.ino: the kernel makes no inode
    assert nameless.reserved_ino(entry) == 4242  # attr.st_ino: getdents' d_ino
    assert entry.st_mode == 0o100000
    assert entry.entry_timeout == 0
    plain = pyfuse3.EntryAttributes()
    plain.st_ino = 7
    assert plain.st_ino == 7  # other entries are untouched
