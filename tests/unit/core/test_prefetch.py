"""Prefetch of listed nodes' metadata (core/prefetch.py) on its own."""

from __future__ import annotations

import trio

from bucketfs.core.nodes import Kind, Node
from bucketfs.core.prefetch import Prefetch


def _file(ino: int, name: str) -> Node:
    return Node(
        ino=ino,
        kind=Kind.FILE,
        bucket="b",
        key=name,
        parent=1,
        name=name,
        mode=0o644,
        uid=0,
        gid=0,
        full=False,
    )


def test_deferred_nodes_are_held_by_inode_number_only() -> None:
    """A listed node the table dropped (the kernel forgot it: `max_nodes`) is neither kept
    alive by the prefetch queue nor HEADed; the others, deferred at the listing or added as
    readdir made them, are."""
    table = {n.ino: n for n in (_file(2, "a"), _file(3, "b"), _file(4, "c"))}
    refreshed: list[str] = []

    async def refresh(node: Node) -> None:
        refreshed.append(node.name)

    async def main() -> None:
        prefetch = Prefetch(refresh, table.get)
        prefetch.defer(1, [table[2], table[3]])
        prefetch.add(1, table[4])
        del table[3]
        async with trio.open_nursery() as nursery:
            prefetch.nursery = nursery
            prefetch.kick(table[2])
        assert sorted(refreshed) == ["a", "c"]

    trio.run(main)
