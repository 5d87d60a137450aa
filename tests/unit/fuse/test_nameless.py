"""Readdir entries without a node (fuse/nameless.py) and the inode numbers reserved for them."""

from __future__ import annotations

import pyfuse3

from bucketfs.core.nodes import ROOT_INO, InodeTable, Kind, Nameless, Node
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


def test_a_reserved_number_goes_to_the_node_made_for_that_name_only() -> None:
    root = Node(
        ino=ROOT_INO,
        kind=Kind.DIR,
        bucket="b",
        key="",
        parent=ROOT_INO,
        name="",
        mode=0o755,
        uid=0,
        gid=0,
    )
    table = InodeTable(root)
    reserved = {"a": table.reserve()}
    table.reserved = lambda parent, name: reserved.pop(name, None) if parent == ROOT_INO else None
    other = table.add(root, "other", Kind.FILE, mode=0o644, uid=0, gid=0)
    a = table.add(root, "a", Kind.FILE, mode=0o644, uid=0, gid=0)
    again = table.add(root, "a", Kind.FILE, mode=0o644, uid=0, gid=0)  # replaced: a new number
    assert (a.ino, other.ino, again.ino) == (2, 3, 4)
