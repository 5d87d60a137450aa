"""The `.versions/` tree (`bucketfs/core/versions.py`) through `BucketFS`, over the memory store.

The memory store stamps versions with `time.time()`; these tests replace that clock with one
they move by hand (`Clock`), so versions get distinct, known times and point-in-time views can
be checked exactly.
"""

from __future__ import annotations

import errno
import os

import pytest

import bucketfs.core.versions as versions_mod
from bucketfs.backends import memory
from bucketfs.core.nodes import ROOT_INO, Kind, Node
from bucketfs.core.versions import parse_instant, stamp, version_names
from bucketfs.errors import BucketfsError
from bucketfs.types import ObjectInfo
from tests.support.harness import BUCKET, Harness, RunFs

NS = "user.bucketfs."
T0 = 1_795_000_000.0  # 2026-11-18T...Z


class Clock:
    """Stands in for the `time` module in the memory store: `time()` is `now`."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(memory, "time", fake)
    return fake


async def errno_of(coro: object) -> int:
    try:
        await coro  # type: ignore[misc]
    except BucketfsError as exc:
        return exc.errno
    raise AssertionError("no error")


async def write(h: Harness, clock: Clock, name: str, data: bytes, parent: int = ROOT_INO) -> None:
    clock.tick()
    await h.write_file(name, data, parent=parent)
    await h.settle()


async def walk(h: Harness, path: str, start: int = ROOT_INO) -> Node:
    node = h.fs.node(start)
    for name in path.split("/"):
        node = await h.fs.lookup(node.ino, name)
    return node


async def cat(h: Harness, node: Node) -> bytes:
    return await h.read_file(node, chunk=3)


def test_versions_dir_is_hidden_but_reachable(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await write(h, clock, "f", b"1")
        assert ".versions" not in await h.ls()
        versions = await h.fs.lookup(ROOT_INO, ".versions")
        assert versions.kind is Kind.DIR
        assert list(await h.ls(versions.ino)) == ["f"]
        assert versions.mode & 0o222 == 0
        # the same inode on a second lookup
        assert await h.fs.lookup(ROOT_INO, ".versions") is versions

    run_fs(body)


def test_noversions_hides_the_tree(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put(".versions/real", b"a real key")
        assert ".versions" in await h.ls()
        d = await h.fs.lookup(ROOT_INO, ".versions")
        assert d.virtual is None

    run_fs(body, noversions=True)


def test_a_real_versions_prefix_is_shadowed(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put(".versions/real", b"x")
        assert ".versions" not in await h.ls()
        assert (await h.fs.lookup(ROOT_INO, ".versions")).virtual is not None

    run_fs(body)


def test_versions_listed_read_and_restored(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        for data in (b"one", b"two", b"three"):
            await write(h, clock, "f.txt", data, parent=d.ino)
        key_dir = await walk(h, "d/.versions/f.txt")
        listing = await h.ls(key_dir.ino)
        names = list(listing)
        assert names == sorted(names)
        assert [await cat(h, listing[n]) for n in names] == [b"one", b"two", b"three"]
        assert names[0].startswith(stamp(round((T0 + 1) * 1000)))
        oldest = listing[names[0]]
        assert oldest.size == 3
        assert oldest.mtime == T0 + 1
        assert oldest.mode & 0o222 == 0
        # listed: what a copy out (cp -a) carries, the version's metadata; its own fields
        # (version_id, is_latest, ...) are read by name
        assert await h.fs.listxattr(oldest.ino) == [NS + "content_type"]
        assert (await h.fs.getxattr(oldest.ino, NS + "is_latest")) == b"false"
        assert (await h.fs.getxattr(listing[names[-1]].ino, NS + "is_latest")) == b"true"
        vid = (await h.fs.getxattr(oldest.ino, NS + "version_id")).decode()
        assert names[0].endswith(vid)
        assert (await h.fs.getxattr(oldest.ino, NS + "content_type")) == b"text/plain"
        assert (await h.fs.getxattr(oldest.ino, "user.bucketfs.size")) == b"3"
        # restore: cp d/.versions/f.txt/V d/f.txt
        await write(h, clock, "f.txt", await cat(h, oldest), parent=d.ino)
        assert await h.body("d/f.txt") == b"one"
        assert len(await h.ls(key_dir.ino)) in (3, 4)  # the listing is cached for dir_timeout

    run_fs(body)


def test_deleted_files_are_found(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        await write(h, clock, "gone", b"was here")
        clock.tick()
        await h.fs.unlink(ROOT_INO, "gone")
        assert "gone" not in await h.ls()
        versions = await h.fs.lookup(ROOT_INO, ".versions")
        assert "gone" in await h.ls(versions.ino)
        listing = await h.ls((await h.fs.lookup(versions.ino, "gone")).ino)
        first, marker = list(listing)
        assert marker.endswith(".deleted")
        assert listing[marker].size == 0
        assert await cat(h, listing[marker]) == b""
        assert await h.fs.getxattr(listing[marker].ino, NS + "delete_marker") == b"true"
        assert await h.fs.getxattr(listing[marker].ino, NS + "is_latest") == b"true"
        assert await h.fs.getxattr(listing[first].ino, NS + "delete_marker") == b"false"
        assert await cat(h, listing[first]) == b"was here"

    run_fs(body)


def test_without_versioning_the_current_object_only(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await write(h, clock, "f", b"old")
        await write(h, clock, "f", b"new")
        listing = await h.ls((await walk(h, ".versions/f")).ino)
        assert len(listing) == 1
        (name, node), *_ = listing.items()
        assert name.endswith("-null")
        assert await cat(h, node) == b"new"

    run_fs(body)


def test_listings_paginate(run_fs: RunFs, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions_mod, "PAGE_SIZE", 2)

    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        for i in range(7):
            await write(h, clock, "a", b"%d" % i)
            await write(h, clock, f"b{i}", b"x")
        await write(h, clock, "z", b"z")
        index = await h.fs.lookup(ROOT_INO, ".versions")
        assert list(await h.ls(index.ino)) == ["a", *[f"b{i}" for i in range(7)], "z"]
        a = await h.ls((await h.fs.lookup(index.ino, "a")).ino)
        assert [await cat(h, n) for n in a.values()] == [b"%d" % i for i in range(7)]

    run_fs(body)


def test_everything_below_versions_is_read_only(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        await write(h, clock, "f", b"x")
        index = await h.fs.lookup(ROOT_INO, ".versions")
        key_dir = await h.fs.lookup(index.ino, "f")
        (name, version), *_ = (await h.ls(key_dir.ino)).items()
        fs = h.fs
        refused = [
            fs.create(key_dir.ino, "new", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0),
            fs.create(index.ino, "new", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0),
            fs.mkdir(index.ino, "d", 0o755, 0, 0),
            fs.mkdir(ROOT_INO, ".versions", 0o755, 0, 0),
            fs.unlink(key_dir.ino, name),
            fs.rmdir(index.ino, "f"),
            fs.rmdir(ROOT_INO, ".versions"),
            fs.rename(key_dir.ino, name, ROOT_INO, "restored", 0),
            fs.rename(ROOT_INO, "f", ROOT_INO, ".versions", 0),
            fs.symlink(index.ino, "l", "f", 0, 0),
            fs.setattr(version.ino, mode=0o600),
            fs.setattr(version.ino, size=0),
            fs.open(version.ino, os.O_RDWR),
            fs.setxattr(version.ino, "user.k", b"v"),
            fs.removexattr(version.ino, NS + "content_type"),
        ]
        for call in refused:
            assert await errno_of(call) == errno.EROFS
        assert await h.keys() == ["f"]

    run_fs(body)


def test_point_in_time(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        sub = await h.fs.mkdir(d.ino, "sub", 0o755, 0, 0)
        await write(h, clock, "a", b"a1", parent=d.ino)
        await write(h, clock, "b", b"b1", parent=d.ino)
        await write(h, clock, "deep", b"deep1", parent=sub.ino)
        before = clock.tick()
        await write(h, clock, "a", b"a2", parent=d.ino)
        clock.tick()
        await h.fs.unlink(d.ino, "b")
        await write(h, clock, "c", b"c1", parent=d.ino)
        later = await h.fs.mkdir(d.ino, "later", 0o755, 0, 0)
        await write(h, clock, "x", b"x", parent=later.ino)
        clock.tick()
        await h.fs.unlink(sub.ino, "deep")
        clock.tick()

        def at(seconds: float) -> str:
            ms = round(seconds * 1000)
            return "@" + stamp(ms)

        index = await walk(h, "d/.versions")
        then = await h.fs.lookup(index.ino, at(before))
        assert then.mode & 0o222 == 0
        listing = await h.ls(then.ino)
        assert list(listing) == ["a", "b", "sub"]  # not c, not later/
        assert await cat(h, listing["a"]) == b"a1"
        assert await cat(h, listing["b"]) == b"b1"
        deep = await h.ls(listing["sub"].ino)
        assert await cat(h, deep["deep"]) == b"deep1"
        now = await h.fs.lookup(index.ino, "@2099-01-01T00:00:00Z")
        listing = await h.ls(now.ino)
        assert list(listing) == ["a", "c", "later", "sub"]  # sub/ has its marker
        assert await cat(h, listing["a"]) == b"a2"
        assert list(await h.ls(listing["sub"].ino)) == []
        # a lookup walks the view without listing it first
        assert await cat(h, await walk(h, f"d/.versions/{at(before)}/sub/deep")) == b"deep1"
        assert await errno_of(h.fs.lookup(index.ino, "@yesterday")) == errno.ENOENT
        assert await errno_of(h.fs.lookup(then.ino, "c")) == errno.ENOENT
        version = listing["a"]
        assert await h.fs.getxattr(version.ino, NS + "is_latest") == b"true"
        assert await errno_of(h.fs.unlink(then.ino, "a")) == errno.EROFS

    run_fs(body)


def test_names_sort_in_time_order_even_when_times_tie() -> None:
    def v(vid: str, ms: int, *, latest: bool = False, deleted: bool = False) -> ObjectInfo:
        return ObjectInfo(
            key="k",
            size=1,
            last_modified=ms / 1000,
            version_id=vid,
            is_latest=latest,
            is_delete_marker=deleted,
        )

    # listed newest first, as S3 does; ids sort the other way round (SeaweedFS's do)
    listed = [v("a", 5000, latest=True), v("b", 5000), v("c", 5000), v("z", 4000)]
    ordered = versions_mod.ordered(list(enumerate(listed)))
    assert [i.version_id for i in ordered] == ["z", "c", "b", "a"]
    names = version_names(ordered)
    assert names == sorted(names)
    assert names[0] == "19700101T000004.000Z-z"
    assert names[1:] == [
        "19700101T000005.000Z-1-c",
        "19700101T000005.000Z-2-b",
        "19700101T000005.000Z-3-a",
    ]
    assert version_names([v("x/y%", 0, deleted=True)]) == ["19700101T000000.000Z-x%2Fy%25.deleted"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21T10:00:00Z", 1795255200000),
        ("2026-11-21T10:00:00.250Z", 1795255200250),
        ("2026-11-21T11:00:00+01:00", 1795255200000),
        ("2026-11-21T10:00:00", 1795255200000),  # no zone: UTC
        ("20261121T100000.000Z", 1795255200000),  # the form of version names
        ("2026-11-21", 1795219200000),
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_instant(text: str, expected: int | None) -> None:
    assert parse_instant(text) == expected


def test_a_version_shows_its_own_metadata(run_fs: RunFs, clock: Clock) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        clock.tick()
        await h.put("f", b"1", colour="red")
        clock.tick()
        await h.put("f", b"2", colour="blue")
        await h.put("@home", b"not an instant")
        listing = await h.ls((await walk(h, ".versions/f")).ino)
        old, new = listing.values()
        assert "user.colour" in await h.fs.listxattr(old.ino)
        assert not [n for n in await h.fs.listxattr(old.ino) if n.startswith(NS + "version")]
        clock.tick()
        await h.put("g", b"1", colour="green")
        clock.tick()
        await h.store.delete(BUCKET, "g")  # a delete marker
        gone, marker = (await h.ls((await walk(h, ".versions/g")).ino)).values()
        assert "user.colour" in await h.fs.listxattr(gone.ino)
        assert await h.fs.listxattr(marker.ino) == []  # a delete marker carries nothing
        assert await h.fs.getxattr(marker.ino, NS + "delete_marker") == b"true"
        assert await h.fs.getxattr(old.ino, "user.colour") == b"red"
        assert await h.fs.getxattr(new.ino, "user.colour") == b"blue"
        home = await h.ls((await walk(h, ".versions/@home")).ino)
        assert [await cat(h, n) for n in home.values()] == [b"not an instant"]

    run_fs(body)
