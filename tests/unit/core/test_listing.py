"""Listings (bucketfs/core/listing.py): a recursive LIST split into every directory's entries, and
subtree listings that answer lookups in many directories after one request."""

from __future__ import annotations

import os
import time

import pytest

from bucketfs.core import listing
from bucketfs.core.listing import split_subtree
from bucketfs.core.nodes import ROOT_INO, Kind
from bucketfs.errors import NoEntry
from bucketfs.types import ObjectInfo
from tests.support.harness import BUCKET, Harness, RunFs

#: the listings' time to live in the tests below, and a wait that outlives it
DIR_TIMEOUT = 0.3
EXPIRE = 0.35


def outlive_listings() -> None:
    """Wait until every listing expired: their time to live runs on the real monotonic clock
    (cachetools), which the tests' mock trio clock does not move, so this blocks."""
    time.sleep(EXPIRE)


def kinds(listings: dict[str, dict[str, listing.Entry]]) -> dict[str, dict[str, str]]:
    return {d: {n: e.kind.name for n, e in entries.items()} for d, entries in listings.items()}


def test_a_recursive_listing_gives_every_directory_below_the_prefix() -> None:
    keys = ["p/", "p/a", "p/d/", "p/d/e/f", "p/x/y", "p/x", "p/bad\0name/z", "p/e/"]
    got = split_subtree("p/", [ObjectInfo(key=k, size=1) for k in keys])
    assert kinds(got) == {
        "p/": {"a": "FILE", "d": "DIR", "e": "DIR", "x": "DIR"},  # x: the directory wins
        "p/d/": {"e": "DIR"},
        "p/d/e/": {"f": "FILE"},
        "p/e/": {},  # only its marker: an empty directory
        "p/x/": {"y": "FILE"},
    }
    assert got["p/"]["a"].info == listing.Listed(1, "", 0.0)  # size, ETag, LastModified


async def mkdirs(h: Harness, count: int) -> list[int]:
    """`w/d0`... made, their markers on the server (they go in the background: the listings
    counted below are those of directories the server knows)."""
    top = await h.fs.mkdir(ROOT_INO, "w", 0o755, 0, 0)
    made = [(await h.fs.mkdir(top.ino, f"d{i}", 0o755, 0, 0)).ino for i in range(count)]
    await h.fs.markers.flush()
    return made


def test_new_files_across_many_directories_cost_one_listing_of_their_ancestor(
    run_fs: RunFs,
) -> None:
    """A writer putting one new file in each of ten directories whose listings expired: the
    first is relisted alone, the second lists the subtree above both, the other eight
    lookups answer from it. Another client's file is still seen once that listing is
    `dir_timeout` old."""

    async def body(h: Harness) -> None:
        dirs = await mkdirs(h, 10)
        outlive_listings()
        h.store.calls.clear()
        for ino in dirs:
            with pytest.raises(NoEntry):  # the kernel's lookup before the create
                await h.fs.lookup(ino, "f")
            await h.write_file("f", b"x", parent=ino)
        assert h.store.calls["list_page"] == 2
        assert h.fs.namespace.subtrees.listed == 1
        assert h.store.calls["head"] == 0
        await h.put("w/d5/theirs", b"t")
        with pytest.raises(NoEntry):  # within dir_timeout: the subtree listing answers
            await h.fs.lookup(dirs[5], "theirs")
        outlive_listings()
        assert (await h.fs.lookup(dirs[5], "theirs")).size == 1
        assert sorted(await h.keys("w/")) == sorted(
            [
                "w/",
                *(f"w/d{i}/" for i in range(10)),
                *(f"w/d{i}/f" for i in range(10)),
                "w/d5/theirs",
            ]
        )

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_one_busy_directory_is_relisted_alone(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        (ino,) = await mkdirs(h, 1)
        for i in range(3):
            outlive_listings()
            with pytest.raises(NoEntry):
                await h.fs.lookup(ino, f"f{i}")
            await h.write_file(f"f{i}", b"x", parent=ino)
        assert h.fs.namespace.subtrees.listed == 0

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_a_subtree_too_large_for_its_pages_is_not_listed_again(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above `PAGES` pages an ancestor is given up (for TOO_BIG_FOR) and the nearer one or
    the directory alone is listed: never more than PAGES pages for a lookup."""
    monkeypatch.setattr(listing, "PAGE_KEYS", 2)
    monkeypatch.setattr(listing, "PAGES", 2)

    async def body(h: Harness) -> None:
        for i in range(6):
            await h.put(f"other/o{i}", b"x")  # the root's subtree: more than 2 pages of 2
        dirs = await mkdirs(h, 3)
        outlive_listings()
        for ino in dirs:
            with pytest.raises(NoEntry):
                await h.fs.lookup(ino, "f")
        # w/ (3 markers + ... fits) once the root gave up
        assert h.fs.namespace.subtrees.listed >= 1
        h.store.calls.clear()
        outlive_listings()
        with pytest.raises(NoEntry):
            await h.fs.lookup(dirs[0], "g")
        assert h.store.calls["list_page"] <= 2  # not the root's pages again

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_a_change_through_the_mount_is_kept_in_the_subtree_listing(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        dirs = await mkdirs(h, 3)
        outlive_listings()
        for ino in dirs:
            with pytest.raises(NoEntry):
                await h.fs.lookup(ino, "f")
        assert h.fs.namespace.subtrees.listed == 1
        await h.write_file("mine", b"m", parent=dirs[2])  # in a subtree-listed directory
        assert (await h.fs.lookup(dirs[2], "mine")).kind is Kind.FILE
        await h.fs.unlink(dirs[2], "mine")
        with pytest.raises(NoEntry):
            await h.fs.lookup(dirs[2], "mine")
        fh, _ = await h.fs.create(dirs[1], "x", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
        await h.fs.release(fh)
        assert "x" in await h.ls(dirs[1])

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_exclusive_creates_never_list_a_subtree(run_fs: RunFs) -> None:
    """O_EXCL asks the server about the directory when its listing expired (or on a store
    without exclusive puts): spreading such creates over many directories must not turn each
    into a recursive listing."""

    async def body(h: Harness) -> None:
        dirs = await mkdirs(h, 6)
        outlive_listings()
        for ino in dirs:
            fh, _ = await h.fs.create(ino, "x", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0, 0)
            await h.fs.release(fh)
        assert h.fs.namespace.subtrees.listed == 0

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_a_fresh_tree_with_nothing_on_the_server_is_answered_by_its_ancestors_listing(
    run_fs: RunFs,
) -> None:
    """A writer filling a tree made here whose markers and files are all still waiting for
    their upload: the recursive listing of `w/` shows none of its directories, which means
    they have nothing on the server; lookups answer from it, no LIST per new name (before:
    the subtree again plus the directory's own LIST, for every name)."""

    async def body(h: Harness) -> None:
        top = await h.fs.mkdir(ROOT_INO, "w", 0o755, 0, 0)
        dirs = [(await h.fs.mkdir(top.ino, f"d{i}", 0o755, 0, 0)).ino for i in range(10)]
        outlive_listings()
        h.store.calls.clear()
        for ino in dirs:
            with pytest.raises(NoEntry):  # the kernel's lookup before the create
                await h.fs.lookup(ino, "f")
            await h.write_file("f", b"x", parent=ino)
        assert h.store.calls["list_page"] == 2  # d0 alone, then w/'s subtree for the rest
        assert h.fs.namespace.subtrees.listed == 1
        assert h.store.calls["put"] == 0  # nothing went up meanwhile

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0, writeback_delay=3600)


def test_changes_made_while_a_subtree_listing_is_under_way_are_applied_to_it() -> None:
    """An upload that lands (or a file made) while the recursive LIST is on its way: the
    listing keeps it rather than being thrown away (a writer's subtree listings were all
    thrown away while its earlier files' uploads kept landing)."""
    import trio

    from bucketfs.types import ListPage

    class SlowList:
        def __init__(self) -> None:
            self.asked = trio.Event()
            self.answer = trio.Event()

        async def list_page(self, bucket: str, prefix: str, **kw: object) -> ListPage:
            self.asked.set()
            await self.answer.wait()
            return ListPage((ObjectInfo(key="w/d0/old", size=1),), (), None)

    async def main() -> None:
        subtrees = listing.Subtrees(dir_timeout=60)
        backend = SlowList()
        got: list[object] = []
        async with trio.open_nursery() as nursery:

            async def refresh() -> None:
                got.append(await subtrees.refresh(backend, "b", "w/"))  # type: ignore[arg-type]

            nursery.start_soon(refresh)
            await backend.asked.wait()
            subtrees.changed("b", "w/d0/", "new", Kind.FILE)
            subtrees.changed("b", "w/d1/", "made", Kind.FILE)
            subtrees.changed("b", "other/", "x", Kind.FILE)
            backend.answer.set()
        assert got[0] is not None
        assert sorted(subtrees.get("b", "w/d0/") or {}) == ["new", "old"]
        assert sorted(subtrees.get("b", "w/d1/") or {}) == ["made"]
        assert subtrees.get("b", "w/d2/") == {}  # nothing under it on the server
        assert subtrees.get("b", "other/") is None
        subtrees.forget("b", "w/d2/")  # not to be trusted: nor is w/'s emptiness below it
        assert subtrees.get("b", "w/d3/") is None

    trio.run(main)


def test_a_change_to_a_held_empty_listing_is_applied_with_no_ancestor_listed() -> None:
    """An empty directory's listing from a subtree listing, still fresh after its ancestor's
    completeness went (a sibling's listing was dropped): a file made in it is in it. (A
    `listing or ...` took the empty listing for none and lost the change: the kernel's lookup
    of a directory made here then got ENOENT, `open(O_CREAT)` under it failed.)"""
    import trio

    from bucketfs.types import ListPage

    class Lister:
        async def list_page(self, bucket: str, prefix: str, **kw: object) -> ListPage:
            return ListPage((ObjectInfo(key="w/d0/", size=0),), (), None)

    async def main() -> None:
        subtrees = listing.Subtrees(dir_timeout=60)
        assert await subtrees.refresh(Lister(), "b", "w/") is not None  # type: ignore[arg-type]
        assert subtrees.get("b", "w/d0/") == {}
        subtrees.forget("b", "w/d1/")  # w/'s listing no longer vouches for what it lacks
        subtrees.changed("b", "w/d0/", "s1", Kind.DIR)
        assert sorted(subtrees.get("b", "w/d0/") or {}) == ["s1"]

    trio.run(main)


def test_a_directory_the_subtree_listing_showed_is_never_taken_for_empty_once_it_expired() -> None:
    """Each cache times its entries from when they went in: the ancestor's completeness,
    stored after the listings it made, outlived them by as long as storing them took. A
    lookup in that gap found a directory (made here, its marker up) "empty" and answered
    ENOENT: the bench's small files failed on a directory made a second earlier (session 13,
    host disk slow). A clock that ticks at every reading makes the gap wide and exact."""
    import trio

    from bucketfs.types import ListPage

    class Clock:
        def __init__(self) -> None:
            self.now, self.tick = 100.0, 0.001

        def __call__(self) -> float:
            self.now += self.tick
            return self.now

    keys = [f"w/d{i}/s{j}/" for i in range(10) for j in range(5)]

    class Lister:
        async def list_page(self, bucket: str, prefix: str, **kw: object) -> ListPage:
            return ListPage(tuple(ObjectInfo(key=k, size=0) for k in keys), (), None)

    clock = Clock()
    subtrees = listing.Subtrees(dir_timeout=1.0, clock=clock)
    started = clock.now
    assert trio.run(subtrees.refresh, Lister(), "b", "w/") is not None  # type: ignore[arg-type]
    stored = clock.now - started  # the listings went in over this long, completeness last
    assert stored > 0.05
    clock.tick = 0.0
    assert sorted(subtrees.get("b", "w/d7/") or {}) == ["s0", "s1", "s2", "s3", "s4"]
    assert subtrees.get("b", "w/d7/s3/new/") == {}  # not shown: nothing on the server
    clock.now = started + 1.0 + stored * 0.9  # d7's listing expired, w/'s completeness not
    assert subtrees.get("b", "w/d7/") is None  # unknown, never "empty"
    assert subtrees.get("b", "w/d7/s3/") is None
    subtrees.changed("b", "w/d7/", "f", Kind.FILE)  # a change applies to no made-up listing
    assert subtrees.get("b", "w/d7/") is None


def test_a_directory_whose_subtree_listing_was_evicted_is_not_taken_for_empty() -> None:
    """More directory listings than the cache holds within `dir_timeout` (wide trees listed
    one subtree after another): an evicted one is unknown, not empty while its ancestor's
    completeness holds."""
    import trio

    from bucketfs.types import ListPage

    class Lister:
        async def list_page(self, bucket: str, prefix: str, **kw: object) -> ListPage:
            keys = [f"{prefix}d{i}/" for i in range(listing.PAGE_KEYS - 1)]
            return ListPage(tuple(ObjectInfo(key=k, size=0) for k in keys), (), None)

    subtrees = listing.Subtrees(dir_timeout=60, clock=lambda: 100.0)
    for top in range(20):  # 20,000 listings: the cache holds 16,384
        assert trio.run(subtrees.refresh, Lister(), "b", f"t{top}/") is not None  # type: ignore[arg-type]
    assert subtrees.get("b", "t0/d5/") is None  # evicted: unknown
    assert subtrees.get("b", "t19/d5/") == {}  # held
    assert subtrees.get("b", "t0/new/") == {}  # not shown by t0/'s listing: nothing there


def test_file_names_of_expired_listings_are_kept_within_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`FileNames` keeps what listings showed as files (not directories) for lookups after
    they expired, at most `FILE_NAMES` names in all: the oldest directories go first."""
    monkeypatch.setattr(listing, "FILE_NAMES", 5)
    names = listing.FileNames()
    files = {f"f{i}": listing.Entry(Kind.FILE, None) for i in range(3)}
    names.listed("b", "a/", {**files, "sub": listing.Entry(Kind.DIR, None)})
    assert names.was_file("b", "a/", "f1")
    assert not names.was_file("b", "a/", "sub")
    assert not names.was_file("b", "other/", "f1")
    names.listed("b", "c/", files)
    assert not names.was_file("b", "a/", "f1")  # 3 + 3 > 5: the older directory went
    assert names.was_file("b", "c/", "f1")
    too_many = {f"g{i}": listing.Entry(Kind.FILE, None) for i in range(6)}
    names.listed("b", "c/", too_many)  # larger than the budget: kept for none
    assert not names.was_file("b", "c/", "f1")
    assert not names.was_file("b", "c/", "g1")


def test_an_ancestor_that_listings_show_too_large_is_not_listed_recursively(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stat` of names spread over the directories of a large tree: the directories are
    relisted one by one, and an ancestor whose listings already show more keys than a
    subtree listing may take (`PAGES` of `PAGE_KEYS`: 3 of its directories of 5 files, 15
    keys, over 2 pages of 2) is not listed recursively (was: the root's pages, given up)."""
    monkeypatch.setattr(listing, "PAGE_KEYS", 2)
    monkeypatch.setattr(listing, "PAGES", 2)

    async def body(h: Harness) -> None:
        for d in "abc":
            for i in range(5):
                await h.put(f"t/{d}/f{i}", b"x")
        t = await h.fs.lookup(ROOT_INO, "t")
        dirs = await h.ls(t.ino)
        h.store.calls.clear()
        for d in "ab":  # the second name lists the directory (worth_listing)
            for i in range(2):
                assert (await h.fs.lookup(dirs[d].ino, f"f{i}")).kind is Kind.FILE
        assert h.store.calls["list_page"] == 4  # a LIST of `f0/` and the directory, each
        assert h.fs.namespace.resolver.file_names.estimate(BUCKET, "t/") == 15
        assert h.fs.namespace.subtrees.listed == 0

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_an_ancestor_estimated_too_large_is_not_estimated_at_every_relisting(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once listings show an ancestor too large for a subtree listing, relistings below it
    do not estimate it again (an estimate walks every listed directory under it: 0.4 ms for
    the bench's tree of 100 directories, at each of its 100 relistings)."""
    monkeypatch.setattr(listing, "PAGE_KEYS", 2)
    monkeypatch.setattr(listing, "PAGES", 2)
    estimated: list[str] = []
    estimate = listing.FileNames.estimate

    def counting(self: listing.FileNames, bucket: str, key: str, levels: int = 3) -> int:
        if levels == listing.LEVELS:  # a call from outside, not its own recursion
            estimated.append(key)
        return estimate(self, bucket, key, levels)

    monkeypatch.setattr(listing.FileNames, "estimate", counting)

    async def body(h: Harness) -> None:
        for d in "abcd":
            for i in range(5):
                await h.put(f"t/{d}/f{i}", b"x")
        t = await h.fs.lookup(ROOT_INO, "t")
        dirs = await h.ls(t.ino)
        for d in "ab":  # the second name lists the directory (worth_listing)
            for i in range(2):
                await h.fs.lookup(dirs[d].ino, f"f{i}")
        assert "t/" in estimated  # found too large here
        estimated.clear()
        for d in "cd":
            for i in range(2):
                assert (await h.fs.lookup(dirs[d].ino, f"f{i}")).kind is Kind.FILE
        assert h.store.calls["list_page"] >= 2  # c and d were relisted
        assert "t/" not in estimated
        assert h.fs.namespace.subtrees.listed == 0

    run_fs(body, dir_timeout=DIR_TIMEOUT, negative_timeout=0)


def test_an_ancestor_is_listed_recursively_only_while_it_saves_cpu() -> None:
    """A subtree listing replaces the relistings of its directories for `dir_timeout`; it is
    worth its CPU only while its keys stay below `PER_RELIST` per relisting it saves, at the
    pace of the last `WINDOW` (a `tar c` walking a tree of 3,000 keys at 12 directories a
    second listed the whole tree once a second: a fifth of its CPU)."""
    now = [100.0]
    subtrees = listing.Subtrees(1.0, clock=lambda: now[0])
    assert subtrees.ancestor_to_list("b", "t/d0/", [("t/", 0)]) is None  # no other yet
    # one other directory relisted lately: a tree never listed (a writer's fresh one), or a
    # small one, is listed; a large one is not
    assert subtrees.ancestor_to_list("b", "t/d1/", [("t/", 0)]) == "t/"
    assert subtrees.ancestor_to_list("b", "t/d2/", [("t/", 3 * listing.PER_RELIST // 5)]) == "t/"
    assert subtrees.ancestor_to_list("b", "t/d3/", [("t/", 3000)]) is None
    # 100 directories relisted within the window: 20 relistings a `dir_timeout` saved
    for i in range(4, 100):
        now[0] += 0.01
        subtrees.ancestor_to_list("b", f"t/d{i}/", [])
    assert subtrees.ancestor_to_list("b", "t/dx/", [("t/", 1000)]) == "t/"
    assert subtrees.ancestor_to_list("b", "t/dy/", [("t/", 3000)]) is None
    # the nearest ancestor that pays is taken when a higher one does not
    assert subtrees.ancestor_to_list("b", "t/dz/", [("t/", 1000), ("", 50_000)]) == "t/"
    # once the window passed, the pace is one directory again
    now[0] += 10 * listing.WINDOW
    subtrees.ancestor_to_list("b", "t/e0/", [])
    assert subtrees.ancestor_to_list("b", "t/e1/", [("t/", 1000)]) is None


def test_estimates_are_kept_until_a_listing_below_changes_them() -> None:
    """A relisting asks for the estimate of every ancestor; the answer is kept until a
    listing at or below that directory (within `LEVELS`) comes, then computed again."""
    names = listing.FileNames()
    file, folder = listing.Entry(Kind.FILE, None), listing.Entry(Kind.DIR, None)

    def listed(key: str, files: int, dirs: str = "") -> None:
        entries = {f"f{i}": file for i in range(files)} | {d: folder for d in dirs}
        names.listed(BUCKET, key, entries)

    listed("t/", 1, "ab")
    listed("t/a/", 4, "x")
    assert names.estimate(BUCKET, "t/") == 1 + 2 * 5  # b unknown: as a's mean
    assert names.estimate(BUCKET, "t/") == 11  # (kept)
    listed("t/b/", 10)
    assert names.estimate(BUCKET, "t/") == 1 + round(2 * (5 + 10) / 2)
    listed("t/a/x/", 7)  # two levels below
    assert names.estimate(BUCKET, "t/a/") == 4 + 7
    assert names.estimate(BUCKET, "t/") == 1 + round(2 * (11 + 10) / 2)
    listed("", 0, "t")
    assert names.estimate(BUCKET, "") == 22
    listed("t/a/x/", 1)  # three levels below the root
    assert names.estimate(BUCKET, "") == 1 + round(2 * (5 + 10) / 2)
