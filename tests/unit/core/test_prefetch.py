"""Prefetch of listed names' metadata (core/prefetch.py) on its own."""

from __future__ import annotations

import pytest
import trio

from bucketfs.core import prefetch as prefetch_module
from bucketfs.core.listing import Entry, Listed
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
        etag="e",
        full=False,
    )


def _entry(size: int = 1) -> Entry:
    return Entry(Kind.FILE, Listed(size, "e", 1000.0))


class World:
    """The inode table and the server as the prefetch sees them: what it asked, in order."""

    def __init__(self, nodes: list[Node] | None = None) -> None:
        self.nodes = {n.ino: n for n in nodes or []}
        self.asked: list[str] = []
        self.gate: trio.Event | None = None  # HEADs wait for it when set
        self.prefetch = Prefetch(self.refresh, self.head_name, self.child, fresh_for=60)

    async def refresh(self, node: Node) -> None:
        self.asked.append(node.name)
        if self.gate is not None:
            await self.gate.wait()
        node.full = True

    async def head_name(self, directory: int, name: str, entry: Entry) -> Entry | None:
        self.asked.append(name)
        if self.gate is not None:
            await self.gate.wait()
        return Entry(Kind.FILE, entry.info, head=True)

    def child(self, directory: int, name: str) -> Node | None:
        return next((n for n in self.nodes.values() if n.name == name), None)


def test_the_window_follows_the_kernels_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first question opens a window of PREFETCH_ENTRIES names from the start; each later
    one moves its end past the name asked; one far past the workers jumps them there; a name
    not listed starts nothing."""
    monkeypatch.setattr(prefetch_module, "PREFETCH_ENTRIES", 3)
    names = [f"n{i:02d}" for i in range(20)]
    world = World()

    async def main() -> None:
        p = world.prefetch
        p.defer(1, [(name, _entry()) for name in names], len(names))
        async with trio.open_nursery() as nursery:
            p.nursery = nursery
            p.kick(1, "missing", kinds=True)
            await trio.testing.wait_all_tasks_blocked()
            assert world.asked == []
            p.kick(1, "n01", kinds=True)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(world.asked) == names[:4]  # up to 1 + 3
            p.kick(1, "n02", kinds=True)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(world.asked) == names[:5]
            p.kick(1, "n15", kinds=True)  # far past: n05 to n14 are left to their lookups
            assert (1, "n15") in p._naming  # the name asked is in flight at once (`wait_name`)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(world.asked) == names[:5] + names[15:18]

    trio.run(main)


def test_what_a_head_found_serves_one_lookup_unless_changed_meanwhile() -> None:
    names = ["a", "b", "c"]
    world = World()

    async def main() -> None:
        p = world.prefetch
        p.defer(1, [(name, _entry()) for name in names], len(names))
        world.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            p.nursery = nursery
            p.kick(1, "a", kinds=True)
            await trio.testing.wait_all_tasks_blocked()
            p.changed(1, "b")  # this mount changed b while its HEAD was in flight
            world.gate.set()
            await p.wait_name(1, "a")
        found = p.take(1, "a")
        assert found is not None
        assert found[0].head
        assert p.take(1, "a") is None  # once
        assert p.take(1, "b") is None  # stale
        assert p.take(1, "c") is not None
        p.clear()
        assert p.take(1, "c") is None

    trio.run(main)


def test_a_lookup_heads_unsure_kinds_only_and_getattr_the_rest() -> None:
    """Listed files too large to be symlinks are left to getattr; nodes the table dropped
    (the kernel forgot them) are not HEADed."""
    small, big, gone = _file(2, "a"), _file(3, "b"), _file(4, "c")
    big.size = 5000
    world = World([small, big, gone])

    async def main() -> None:
        p = world.prefetch
        entries: list[tuple[str, Node | Entry]] = [
            ("a", small),
            ("b", big),
            ("c", gone),
            ("d", _entry()),
            ("e", _entry(size=5000)),
        ]
        p.defer(1, entries, len(entries))
        del world.nodes[4]
        async with trio.open_nursery() as nursery:
            p.nursery = nursery
            p.kick(1, "a", kinds=True)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(world.asked) == ["a", "d"]
            p.kick(1, "b")
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(world.asked) == ["a", "b", "d", "e"]

    trio.run(main)


def test_queues_are_bounded_by_their_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest directories' queues go once more entries than QUEUED_MAX are held; the
    newest stays whatever its size."""
    monkeypatch.setattr(prefetch_module, "QUEUED_MAX", 10)
    world = World()

    async def main() -> None:
        p = world.prefetch
        for directory in (1, 2, 3):
            p.defer(directory, [(f"d{directory}n{i}", _entry()) for i in range(4)], 4)
        big = [f"n{i:02d}" for i in range(30)]
        p.defer(4, [(name, _entry()) for name in big], 30)
        async with trio.open_nursery() as nursery:
            p.nursery = nursery
            for directory in (1, 2, 3):
                p.kick(directory, f"d{directory}n0", kinds=True)
            p.kick(4, "n29", kinds=True)
        assert sorted(world.asked) == big

    trio.run(main)
