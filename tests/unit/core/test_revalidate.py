"""Expired attributes of files confirmed by one listing of their directory instead of a HEAD
per file (core/revalidate.py), over the memory backend with requests counted.

The memory backend dates objects and its HEADs' `Date` with `time.time`; `wall` replaces it
with a clock the test moves, so that a HEAD is answered 2 s or more after LastModified (the
rule that lets a listing confirm it) and another client's copy lands in a later second, as on
a real server, without sleeping. Attributes are expired by hand (`expire`): the core measures
timeouts with `time.monotonic`, which trio's mock clock does not move.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace

import pytest
import trio

from bucketfs.core import revalidate
from bucketfs.core.nodes import Node
from bucketfs.errors import NoEntry
from bucketfs.types import WriteOptions
from tests.support.harness import BUCKET, Harness, RunFs

NAMES = [f"f{i:02d}" for i in range(20)]
#: nothing expires by itself during a test: `expire` does it
STEADY = {"attr_timeout": 60.0, "dir_timeout": 60.0, "entry_timeout": 60.0}


class Wall:
    """The memory server's clock."""

    def __init__(self) -> None:
        self.now = float(int(time.time())) + 0.5

    def time(self) -> float:
        return self.now


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Wall:
    clock = Wall()
    monkeypatch.setattr("bucketfs.backends.memory.time", SimpleNamespace(time=clock.time))
    return clock


def expire(nodes: Iterable[Node]) -> None:
    for node in nodes:
        node.attr_expiry = 0.0


async def fill(h: Harness, wall: Wall, names: list[str] = NAMES) -> None:
    """Another client wrote `d/NAME` for each name, 3 s ago on the server's clock."""
    for name in names:
        await h.put(f"d/{name}", b"x" * 10, mode="33152")  # 0o600
    wall.now += 3.0


async def looked_up(h: Harness, names: list[str] = NAMES) -> dict[str, Node]:
    """Every name looked up (a HEAD each: none was listed) and counted requests cleared."""
    nodes = {name: await h.lookup(f"d/{name}") for name in names}
    assert all(n.mode == 0o600 for n in nodes.values())
    # the second lookup listed the directory (stat of many names, `Listings.worth_listing`):
    # the tests start from no listing, as after `dir_timeout`
    h.fs.namespace.listings.drop((await h.lookup("d")).ino)
    h.store.calls.clear()
    return nodes


def test_expired_attributes_are_confirmed_by_one_listing(run_fs: RunFs, wall: Wall) -> None:
    async def body(h: Harness) -> None:
        await fill(h, wall)
        nodes = await looked_up(h)
        d = await h.lookup("d")
        for _ in range(2):  # twice: the second time a listing confirms them again
            expire(nodes.values())
            for name in NAMES:
                assert (await h.fs.lookup(d.ino, name)) is nodes[name]
                assert (await h.fs.getattr(nodes[name].ino)).mode == 0o600
            assert h.store.calls == {"list_page": 1}
            h.store.calls.clear()
            h.fs.namespace.listings.drop(d.ino)
        assert h.fs.namespace.revalidation.confirmed == 2 * len(NAMES)  # at each lookup

    run_fs(body, **STEADY)


def test_concurrent_getattrs_share_one_listing(run_fs: RunFs, wall: Wall) -> None:
    async def body(h: Harness) -> None:
        await fill(h, wall)
        nodes = await looked_up(h)
        expire(nodes.values())
        async with trio.open_nursery() as nursery:
            for node in nodes.values():
                nursery.start_soon(h.fs.getattr, node.ino)
        assert h.store.calls == {"list_page": 1}
        assert all(n.attr_expiry > time.monotonic() for n in nodes.values())

    run_fs(body, latency=0.01, **STEADY)


def test_another_clients_changes_are_seen_through_the_listing(run_fs: RunFs, wall: Wall) -> None:
    """A copy onto itself with new metadata (same ETag and size, a later LastModified), new
    content, a delete: each is asked with a HEAD (or found gone); the rest stay confirmed."""

    async def body(h: Harness) -> None:
        await fill(h, wall)
        nodes = await looked_up(h)
        d = await h.lookup("d")
        wall.now += 1.0
        chmod = WriteOptions(metadata={"mode": "33261"})  # 0o755
        await h.store.copy(BUCKET, "d/f01", "d/f01", chmod)
        await h.put("d/f02", b"longer content", mode="33152")
        await h.store.delete(BUCKET, "d/f03")
        h.store.calls.clear()
        expire(nodes.values())
        assert (await h.fs.getattr(nodes["f01"].ino)).mode == 0o755
        assert (await h.fs.getattr(nodes["f02"].ino)).size == 14
        with pytest.raises(NoEntry):
            await h.fs.lookup(d.ino, "f03")
        for name in NAMES[4:]:
            assert (await h.fs.getattr(nodes[name].ino)).mode == 0o600
        # f03 is absent from a listing made for lookups only (`Listings.implicit`): it is
        # asked by name too (a HEAD and a LIST), so a name just made elsewhere is seen at once
        assert h.store.calls == {"list_page": 2, "head": 4}

    run_fs(body, **STEADY)


def test_a_head_answered_within_two_seconds_of_lastmodified_is_asked_again(
    run_fs: RunFs, wall: Wall
) -> None:
    """The same second could hold a copy onto itself that a listing cannot tell apart."""

    async def body(h: Harness) -> None:
        for name in NAMES[:3]:
            await h.put(f"d/{name}", b"x", mode="33152")
        wall.now += 1.0  # a HEAD now is not 2 s past LastModified
        nodes = await looked_up(h, NAMES[:3])
        expire(nodes.values())
        for node in nodes.values():
            await h.fs.getattr(node.ino)
        assert h.store.calls == {"head": 3}

    run_fs(body, **STEADY)


def test_a_change_made_here_is_not_confirmed_by_a_listing(run_fs: RunFs, wall: Wall) -> None:
    """The node no longer shows what its HEAD said (here a chmod whose copy did not reach the
    server): the listing, which still shows that object, cannot vouch for it."""

    async def body(h: Harness) -> None:
        await fill(h, wall, NAMES[:2])
        nodes = await looked_up(h, NAMES[:2])
        nodes["f00"].mode = 0o644
        expire(nodes.values())
        assert (await h.fs.getattr(nodes["f00"].ino)).mode == 0o600  # the server's, again
        assert (await h.fs.getattr(nodes["f01"].ino)).mode == 0o600
        assert h.store.calls == {"head": 1, "list_page": 1}

    run_fs(body, **STEADY)


def test_a_listing_confirms_attributes_for_attr_timeout_after_it_came(
    run_fs: RunFs, wall: Wall
) -> None:
    """A listing still good for names (`dir_timeout`) but older than `attr_timeout` is not
    used: the directory is listed again."""

    async def body(h: Harness) -> None:
        await fill(h, wall, NAMES[:3])
        nodes = await looked_up(h, NAMES[:3])
        d = await h.lookup("d")
        await h.ls(d.ino)  # a listing that confirms them, and is kept
        assert h.store.calls == {"list_page": 1}
        await trio.to_thread.run_sync(time.sleep, 0.3)  # real time: monotonic
        expire(nodes.values())
        for node in nodes.values():
            await h.fs.getattr(node.ino)
        assert h.store.calls == {"list_page": 2}

    run_fs(body, attr_timeout=0.2, dir_timeout=60.0, entry_timeout=60.0)


def test_large_directories_are_asked_with_a_head_per_file(
    run_fs: RunFs, wall: Wall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory whose last listing took more than a page is not listed for a stat; one
    never listed is tried once (one page), then remembered as too large."""
    monkeypatch.setattr(revalidate, "LIST_ENTRIES", 5)

    async def body(h: Harness) -> None:
        await fill(h, wall)
        nodes = await looked_up(h)
        d = await h.lookup("d")
        await h.ls(d.ino)  # 20 entries: more than LIST_ENTRIES
        h.fs.namespace.listings.drop(d.ino)
        h.store.calls.clear()
        expire(nodes.values())
        for node in list(nodes.values())[:3]:
            await h.fs.getattr(node.ino)
        assert h.store.calls == {"head": 3}

    run_fs(body, **STEADY)

    async def never_listed(h: Harness) -> None:
        await fill(h, wall, [f"f{i:04d}" for i in range(1001)])  # more than a LIST page
        # one name: a second lookup would list the directory already (`worth_listing`)
        nodes = await looked_up(h, ["f0000"])
        expire(nodes.values())
        for node in nodes.values():
            await h.fs.getattr(node.ino)
        assert h.store.calls == {"list_page": 1, "head": 1}

    run_fs(never_listed, **STEADY)


def test_a_readdir_confirms_unchanged_entries_and_drops_changed_metadata(
    run_fs: RunFs, wall: Wall
) -> None:
    """A readdir's listing is a revalidation too: unchanged files stay fresh without a HEAD,
    and one whose metadata another client changed (same ETag) no longer shows the old mode."""

    async def body(h: Harness) -> None:
        await fill(h, wall, NAMES[:3])
        nodes = await looked_up(h, NAMES[:3])
        d = await h.lookup("d")
        wall.now += 1.0
        await h.store.copy(BUCKET, "d/f00", "d/f00", WriteOptions(metadata={"mode": "33261"}))
        h.store.calls.clear()
        expire(nodes.values())
        listed = await h.ls(d.ino)
        assert [listed[n].full for n in NAMES[:3]] == [False, True, True]
        for name in NAMES[:3]:
            await h.fs.getattr(listed[name].ino)
        assert listed["f00"].mode == 0o755
        assert h.store.calls == {"list_page": 1, "head": 1}

    run_fs(body, **STEADY)


def test_files_asked_for_too_far_apart_are_asked_with_a_head(run_fs: RunFs, wall: Wall) -> None:
    """A listing made to revalidate that confirmed fewer than MIN_CONFIRMED files before it
    was too old (a few files of each of many directories, stat'ed in no order): the directory
    is not listed so again for a while, its files get a HEAD each."""

    async def body(h: Harness) -> None:
        await fill(h, wall, NAMES[:3])
        nodes = await looked_up(h, NAMES[:3])
        expire(nodes.values())
        await h.fs.getattr(nodes["f00"].ino)  # a listing, which confirms one file
        assert h.store.calls == {"list_page": 1}
        await trio.to_thread.run_sync(time.sleep, 0.3)  # real time: monotonic
        expire(nodes.values())
        for node in nodes.values():
            await h.fs.getattr(node.ino)
        assert h.store.calls == {"list_page": 1, "head": 3}

    run_fs(body, attr_timeout=0.2, dir_timeout=60.0, entry_timeout=60.0)
