"""Readdir entries without a node (fuse/nameless.py); the numbers reserved for them: test_nodes."""

from __future__ import annotations

import pyfuse3

from bucketfs.core.nodes import Nameless
from bucketfs.fuse import nameless


def test_the_entry_carries_the_number_but_no_node() -> None:
    # pyfuse3 3.5.0's layout holds on this platform: the adapter shows nameless entries
    assert nameless.AVAILABLE
    entry = nameless.Entries()(Nameless(4242, 0o100000))
    assert entry.st_ino == 0  # fuse_entry_param.ino: the kernel makes no inode
    assert nameless.reserved_ino(entry) == 4242  # attr.st_ino: getdents' d_ino
    assert entry.st_mode == 0o100000
    assert entry.entry_timeout == 0
    plain = pyfuse3.EntryAttributes()
    plain.st_ino = 7
    assert plain.st_ino == 7  # other entries are untouched


def test_a_reply_reuses_one_entry_per_type_with_each_names_number() -> None:
    """readdir's `Entries` writes each name's number into one reused entry per file type
    (`readdir_reply` copies it at once); the kernel still gets no node for any of them."""
    entries = nameless.Entries()
    first = entries(Nameless(10, 0o100000))
    assert (first.st_ino, nameless.reserved_ino(first)) == (0, 10)
    second = entries(Nameless(11, 0o100000))
    assert second is first
    assert (second.st_ino, nameless.reserved_ino(second)) == (0, 11)
    other = entries(Nameless(12, 0o010000))
    assert other is not first
    assert (other.st_mode, other.st_ino, nameless.reserved_ino(other)) == (0o010000, 0, 12)
    assert nameless.reserved_ino(first) == 11  # the file entry keeps its last number
