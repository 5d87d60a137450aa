"""The inode table's list of kernel-held nodes and the names it offers to forget (nodes.py)."""

from __future__ import annotations

from bucketfs.core.nodes import ROOT_INO, InodeTable, Kind, Node


def table() -> InodeTable:
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
    return InodeTable(root)


def looked_up(t: InodeTable, parent: Node, name: str, kind: Kind = Kind.FILE) -> Node:
    node = t.add(parent, name, kind, mode=0o644, uid=0, gid=0, etag='"e"')
    t.remember(node)
    return node


def test_the_least_recently_looked_up_names_come_first() -> None:
    t = table()
    a, b, c = (looked_up(t, t.root, n) for n in "abc")
    t.remember(a)  # a is used again: b is now the coldest
    assert t.cold_entries(2) == [(b.ino, ROOT_INO, "b"), (c.ino, ROOT_INO, "c")]
    # picked names go to the back: asked again before the kernel's FORGETs, others come first
    assert t.cold_entries(1) == [(a.ino, ROOT_INO, "a")]
    assert list(t.held) == [b.ino, c.ino, a.ino]


def test_open_unsaved_and_parent_nodes_are_never_offered() -> None:
    t = table()
    opened = looked_up(t, t.root, "open")
    opened.opens = 1
    unsaved = looked_up(t, t.root, "new")
    unsaved.etag = None  # not on the server yet
    directory = looked_up(t, t.root, "d", Kind.DIR)
    child = looked_up(t, directory, "f")
    version = t.add_virtual(
        t.root, ".versions", Kind.DIR, mode=0o555, uid=0, gid=0, bucket="b", key=""
    )
    t.remember(version)
    assert t.cold_entries(10) == [(child.ino, directory.ino, "f")]
    t.forget(child.ino, 1)  # the kernel let go: the directory has no known child left
    assert t.cold_entries(10) == [(directory.ino, ROOT_INO, "d")]


def test_held_follows_the_kernels_references() -> None:
    t = table()
    a = looked_up(t, t.root, "a")
    t.remember(a)
    t.forget(a.ino, 1)
    assert a.ino in t.held  # one reference left
    t.forget(a.ino, 1)
    assert a.ino not in t.held
    assert t.get(a.ino) is None
    opened = looked_up(t, t.root, "o")
    opened.opens = 1
    t.forget(opened.ino, 1)
    assert opened.ino not in t.held
    assert t.get(opened.ino) is opened


def test_the_peak_is_the_most_nodes_held_at_once() -> None:
    t = table()
    nodes = [looked_up(t, t.root, f"n{i}") for i in range(5)]
    for node in nodes[:4]:
        t.forget(node.ino, 1)
    looked_up(t, t.root, "late")
    assert (len(t), t.peak) == (3, 6)  # the root, n4 and late; the root and n0-n4 at most


def test_a_directory_whose_children_were_all_forgotten_keeps_no_dict_for_them() -> None:
    # a dict never shrinks: keeping an emptied one cost ~29 KiB per 1,000-entry directory
    t = table()
    directory = looked_up(t, t.root, "d", Kind.DIR)
    kids = [looked_up(t, directory, f"f{i}") for i in range(1000)]
    assert len(t.children[directory.ino]) == 1000
    for kid in kids:
        t.forget(kid.ino, 1)
    assert directory.ino not in t.children
    assert t.child(directory, "f0") is None
    assert t.cold_entries(10) == [(directory.ino, ROOT_INO, "d")]
    again = looked_up(t, directory, "f0")  # a later lookup links it again
    assert t.child(directory, "f0") is again
    assert t.find("b", "d/f0") == again.ino


def test_paths_follow_renames_across_directories() -> None:
    t = table()
    src = looked_up(t, t.root, "src", Kind.DIR)
    dst = looked_up(t, t.root, "dst", Kind.DIR)
    sub = looked_up(t, src, "sub", Kind.DIR)
    leaf = looked_up(t, sub, "leaf")
    t.move(sub, dst, "moved")
    assert t.find("b", "src/sub") is None
    assert t.find("b", "src/sub/leaf") is None
    assert t.find("b", "dst/moved") == sub.ino
    assert t.find("b", "dst/moved/leaf") == leaf.ino
    assert src.ino not in t.children  # its only child moved away
    assert t.child(dst, "moved") is sub


def test_a_reserved_number_goes_to_the_node_made_for_that_name_only() -> None:
    # readdir reserves numbers for names it shows without a node (core/readdir.py)
    t = table()
    reserved = {"a": t.reserve()}
    t.reserved = lambda parent, name: reserved.pop(name, None) if parent == ROOT_INO else None
    other = t.add(t.root, "other", Kind.FILE, mode=0o644, uid=0, gid=0)
    a = t.add(t.root, "a", Kind.FILE, mode=0o644, uid=0, gid=0)
    again = t.add(t.root, "a", Kind.FILE, mode=0o644, uid=0, gid=0)  # replaced: a new number
    assert (a.ino, other.ino, again.ino) == (2, 3, 4)
