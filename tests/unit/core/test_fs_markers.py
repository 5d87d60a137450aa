"""mkdir's markers sent in the background (bucketfs/cache/markers.py) on the memory backend:
what mkdir waits for, what the namespace shows meanwhile, rmdir and setattr of a directory whose
marker is pending, failures, flush, status, and the journal that survives a restart.

`writeback_delay=3600` keeps markers pending until something waits for them (the mock clock
would otherwise send them at the first wait)."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bucketfs.cache.deletes import DeferredDeletes
from bucketfs.cache.index import SCHEMA_VERSION, CacheIndex
from bucketfs.cache.markers import Markers
from bucketfs.core.fs import BucketFS, FsOptions
from bucketfs.core.nodes import ROOT_INO, Kind, Node
from bucketfs.errors import BucketfsError, CacheError, DirectoryNotEmpty, FileExists, NoEntry
from bucketfs.types import ListPage
from tests.support.harness import BUCKET, CountingBackend, Harness, RunFs

HOLD = {"writeback_delay": 3600.0}


def journal(h: Harness) -> list[tuple[str, str]]:
    """The markers the cache index holds (what a new daemon would send)."""
    return [(b, k) for b, k, _meta in h.fs.data.cache.index.pending_markers()]


def test_mkdir_returns_with_the_marker_journaled_and_it_goes_up_later(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o750, 10, 20)
        sub = await h.fs.mkdir(d.ino, "sub", 0o700, 0, 0)
        assert (d.kind, sub.key) == (Kind.DIR, "d/sub/")
        assert sum(h.store.calls.values()) == 0  # not a single request
        assert journal(h) == [(BUCKET, "d/"), (BUCKET, "d/sub/")]
        assert h.fs.status()["markers_queued"] == 2
        with pytest.raises(FileExists):
            await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        await h.fs.markers.flush()
        assert h.store.calls["put"] == 2
        info = await h.store.head(BUCKET, "d/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o750)
        assert (info.metadata["uid"], info.metadata["gid"]) == ("10", "20")
        assert journal(h) == []
        assert h.fs.status()["markers_queued"] == 0

    run_fs(body, **HOLD)


def test_without_a_delay_the_marker_goes_at_once_in_the_background(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        assert h.store.calls["put"] == 0  # mkdir did not wait for it
        await trio.sleep(0.001)
        assert h.store.calls["put"] == 1
        assert sorted(await h.store.keys()) == ["d/"]
        assert journal(h) == []

    run_fs(body, writeback_delay=0.0)


def test_a_pending_directory_is_seen_when_the_servers_listing_lacks_it(run_fs: RunFs) -> None:
    """Listings and attributes expire at once here: every lookup, getattr and readdir asks
    the server, whose answers lack the directory; it is shown all the same, with its own
    attributes, and no HEAD of its marker is sent."""

    async def body(h: Harness) -> None:
        await h.put("other", b"x")
        d = await h.fs.mkdir(ROOT_INO, "d", 0o700, 7, 8)
        await h.fs.mkdir(d.ino, "inner", 0o755, 0, 0)
        h.store.calls.clear()
        listed = await h.ls()
        assert sorted(listed) == ["d", "other"]
        assert listed["d"] is d
        assert h.store.calls["list_page"] == 1
        assert list(await h.ls(d.ino)) == ["inner"]
        again = await h.fs.lookup(ROOT_INO, "d")
        assert again is d
        assert (await h.fs.getattr(d.ino)).mode == 0o700
        assert h.store.calls["head"] == 0
        # the kernel forgot one: a new node, from the journaled attributes
        e = await h.fs.mkdir(ROOT_INO, "e", 0o711, 5, 6)
        h.fs.forget([(e.ino, e.lookups)])
        assert h.fs.table.get(e.ino) is None
        fresh = await h.lookup("e")
        assert fresh.ino != e.ino
        assert (fresh.kind, fresh.mode, fresh.uid, fresh.gid) == (Kind.DIR, 0o711, 5, 6)
        assert h.store.calls["head"] == 0
        assert sorted(await h.keys()) == ["d/", "d/inner/", "e/", "other"]

    run_fs(body, dir_timeout=0, attr_timeout=0, negative_timeout=0, **HOLD)


#: listings are kept, attributes not: a lookup of a known directory asks the namespace's
#: listings whether it is still there (as after the kernel's entry timeout, test_git)
LISTINGS_KEPT = {"dir_timeout": 60.0, "attr_timeout": 0.0, "negative_timeout": 0.0}


async def git_object(h: Harness, objects: Node, name: str, data: bytes) -> Node:
    """What git does for a loose object: `objects/xx/` made, a tmp object written in it and
    renamed to its name (link(2) first: refused here)."""
    xx = await h.fs.mkdir(objects.ino, name[:2], 0o755, 0, 0)
    await h.write_file("tmp_obj_1", data, parent=xx.ino)
    await h.fs.rename(xx.ino, "tmp_obj_1", xx.ino, name[2:], 0)
    return xx


async def read_back(h: Harness, objects: Node, name: str, xx: Node) -> bytes:
    assert await h.fs.lookup(objects.ino, name[:2]) is xx
    assert list(await h.ls(xx.ino)) == [name[2:]]
    return await h.read_file(await h.fs.lookup(xx.ino, name[2:]))


def test_a_listing_made_while_a_marker_was_pending_shows_it_after_it_went(
    run_fs: RunFs,
) -> None:
    """test_tools.py::test_git's failure: a readdir of `objects/` while `objects/e6/` waited
    for its marker kept the server's listing, which lacks it; once the marker went (it was no
    longer shown from the journal) a lookup of `e6` answered from that listing: ENOENT, the
    node detached, and git's next mkdir made an empty directory over its objects."""

    async def body(h: Harness) -> None:
        objects = await h.fs.mkdir(ROOT_INO, "objects", 0o755, 0, 0)
        await h.fs.markers.flush()
        xx = await git_object(h, objects, "e69de2", b"blob")
        assert list(await h.ls(objects.ino)) == ["e6"]  # the server's listing lacks it
        await h.fs.markers.flush()
        assert h.fs.status()["markers_queued"] == 0
        assert await read_back(h, objects, "e69de2", xx) == b"blob"
        assert list(await h.ls(objects.ino)) == ["e6"]
        assert sorted(await h.keys()) == ["objects/", "objects/e6/", "objects/e6/9de2"]

    run_fs(body, **LISTINGS_KEPT, **HOLD)


def test_a_relisting_made_while_a_marker_was_pending_shows_it_after_it_went(
    run_fs: RunFs,
) -> None:
    """The same with the listing a lookup of a missing name makes (`_relist`)."""

    async def body(h: Harness) -> None:
        objects = await h.fs.mkdir(ROOT_INO, "objects", 0o755, 0, 0)
        await h.fs.markers.flush()
        xx = await git_object(h, objects, "e69de2", b"blob")
        h.fs.namespace.drop_listing(objects)
        h.store.calls.clear()
        with pytest.raises(NoEntry):
            await h.fs.lookup(objects.ino, "17")
        assert h.store.calls["list_page"] == 1  # the directory listed again, lacking e6
        await h.fs.markers.flush()
        assert await read_back(h, objects, "e69de2", xx) == b"blob"

    run_fs(body, **LISTINGS_KEPT, **HOLD)


def test_a_subtree_listing_made_while_a_marker_was_pending_shows_it_after_it_went(
    run_fs: RunFs,
) -> None:
    """The same with a subtree listing (listing.py: directories near each other relisted)."""

    async def body(h: Harness) -> None:
        await h.put("top/a/f", b"1")
        await h.put("top/b/f", b"2")
        a, b = await h.lookup("top/a"), await h.lookup("top/b")
        await h.ls(a.ino)
        await h.ls(b.ino)
        d = await h.fs.mkdir(a.ino, "d", 0o755, 0, 0)
        ns = h.fs.namespace
        ns.drop_listing(a)
        ns.drop_listing(b)
        subtrees = ns.subtrees.listed  # (the lookup of top/b listed top/, as a second one)
        with pytest.raises(NoEntry):
            await h.fs.lookup(b.ino, "x")
        with pytest.raises(NoEntry):
            await h.fs.lookup(a.ino, "x")
        assert ns.subtrees.listed == subtrees + 1  # top/a/ listed with its neighbours, lacking d
        await h.fs.markers.flush()
        assert await h.fs.lookup(a.ino, "d") is d
        assert sorted(await h.ls(a.ino)) == ["d", "f"]

    run_fs(body, **LISTINGS_KEPT, **HOLD)


def test_a_listing_answered_after_the_marker_went_shows_it(run_fs: RunFs) -> None:
    """A readdir whose LIST the server answered before the marker landed and which came back
    after it went (so after the directory stopped being shown from the journal)."""

    async def body(h: Harness) -> None:
        objects = await h.fs.mkdir(ROOT_INO, "objects", 0o755, 0, 0)
        await h.fs.markers.flush()
        xx = await git_object(h, objects, "e69de2", b"blob")
        listed, release = trio.Event(), trio.Event()
        list_page = h.store.list_page

        async def held(bucket: str, prefix: str, *args: Any, **kw: Any) -> ListPage:
            page = await list_page(bucket, prefix, *args, **kw)
            if prefix == "objects/" and not release.is_set():
                listed.set()
                await release.wait()
            return page

        h.store.list_page = held  # type: ignore[method-assign]
        seen: list[str] = []

        async def readdir() -> None:
            seen.extend(await h.ls(objects.ino))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(readdir)
            await listed.wait()
            await h.fs.markers.flush()
            release.set()
        assert seen == ["e6"]
        assert await read_back(h, objects, "e69de2", xx) == b"blob"

    run_fs(body, **LISTINGS_KEPT, **HOLD)


def test_rmdir_before_the_marker_went_sends_nothing(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        await h.fs.mkdir(d.ino, "sub", 0o755, 0, 0)
        with pytest.raises(DirectoryNotEmpty):  # its child waits for its marker too
            await h.fs.rmdir(ROOT_INO, "d")
        await h.fs.rmdir(d.ino, "sub")
        await h.fs.rmdir(ROOT_INO, "d")
        assert sum(h.store.calls.values()) == 0
        assert h.fs.backend.queued == 0  # no delete queued either
        assert journal(h) == []
        assert h.fs.status()["markers_queued"] == 0
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "d")
        await h.settle()
        assert h.store.calls["put"] == h.store.calls["delete"] == 0
        assert h.fs.backend.sent_batches == 0
        assert await h.store.keys() == []

    run_fs(body, **HOLD)


def test_rmdir_of_a_pending_directory_whose_listing_expired_asks_the_server(
    run_fs: RunFs,
) -> None:
    """Without a fresh listing of its own, another client's object in it is found (and the
    rmdir refused); once that is gone, rmdir still sends no PUT and no DELETE."""

    async def body(h: Harness) -> None:
        await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        await h.put("d/theirs", b"t")
        with pytest.raises(DirectoryNotEmpty):
            await h.fs.rmdir(ROOT_INO, "d")
        await h.store.delete(BUCKET, "d/theirs")
        h.store.calls.clear()
        await h.fs.rmdir(ROOT_INO, "d")
        assert h.store.calls["put"] == h.store.calls["delete"] == 0
        assert await h.store.keys() == []

    run_fs(body, dir_timeout=0, **HOLD)


def test_a_directory_made_again_after_rmdir_gets_its_new_marker(run_fs: RunFs) -> None:
    """mkdir d (sent), rmdir d (delete queued), mkdir d (pending): the marker waits for the
    delete and is there in the end; `rm x; mkdir x` likewise."""

    async def body(h: Harness) -> None:
        await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        await h.fs.markers.flush()
        await h.fs.rmdir(ROOT_INO, "d")
        assert h.fs.backend.queued == 1
        await h.fs.mkdir(ROOT_INO, "d", 0o711, 0, 0)
        await h.write_file("x", b"file")
        await h.settle()
        await h.fs.unlink(ROOT_INO, "x")
        await h.fs.mkdir(ROOT_INO, "x", 0o755, 0, 0)
        await h.settle()
        assert sorted(await h.store.keys()) == ["d/", "x/"]
        info = await h.store.head(BUCKET, "d/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o711)

    run_fs(body, **HOLD)


def test_attributes_set_before_the_marker_went_go_with_it(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o700, 0, 0)
        await h.fs.setattr(d.ino, mode=0o755, uid=5, mtime=1_000_000.0)
        assert sum(h.store.calls.values()) == 0
        (_b, _k, meta) = h.fs.data.cache.index.pending_markers()[0]
        assert meta["metadata"]["uid"] == "5"  # journaled: a restart sends them too
        # an xattr of a directory is checked on the server (SeaweedFS keeps none): the
        # marker goes now, with everything set so far
        await h.fs.setxattr(d.ino, "user.color", b"blue")
        assert h.store.calls["put"] == 1
        info = await h.store.head(BUCKET, "d/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o755)
        assert info.metadata["uid"] == "5"
        assert info.metadata["color"] == "blue"
        # once it went, a change writes the marker again, as before
        await h.fs.setattr(d.ino, mode=0o750)
        assert h.store.calls["put"] == 2

    run_fs(body, **HOLD)


def test_the_quiet_period_counts_from_the_last_change(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o700, 0, 0)
        await trio.sleep(8)
        await h.fs.setattr(d.ino, mode=0o755)
        await trio.sleep(8)  # 16 s after mkdir, 8 s after the chmod
        assert h.store.calls["put"] == 0
        await trio.sleep(4)
        assert h.store.calls["put"] == 1
        info = await h.store.head(BUCKET, "d/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o755)

    run_fs(body, writeback_delay=10.0)


def test_a_marker_that_fails_stays_pending_and_is_retried(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.store.delete_bucket(BUCKET)  # behind the filesystem's back
        await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        with pytest.raises(BucketfsError):
            await h.fs.markers.flush()
        status = h.fs.status()
        assert status["markers_queued"] == 1
        assert f"{BUCKET}/d/" in status["failed"]  # type: ignore[operator]
        assert journal(h) == [(BUCKET, "d/")]
        fh = h.fs.opendir(ROOT_INO)
        with pytest.raises(BucketfsError):  # fsync of a directory sends markers too
            await h.fs.fsyncdir()
        h.fs.releasedir(fh)
        await h.store.create_bucket(BUCKET)
        await trio.sleep(120)  # retried on its own, after a growing delay
        assert h.fs.status()["markers_queued"] == 0
        assert h.fs.status()["failed"] == {}
        assert await h.store.keys() == ["d/"]

    run_fs(body)


def test_flush_of_a_directory_and_drain_send_pending_markers(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        a = await h.fs.mkdir(ROOT_INO, "a", 0o755, 0, 0)
        await h.fs.mkdir(a.ino, "in", 0o755, 0, 0)
        await h.fs.mkdir(ROOT_INO, "b", 0o755, 0, 0)
        await h.fs.setxattr(a.ino, "user.bucketfs.flush", b"")  # `bucketfs flush a`
        assert sorted(await h.store.keys()) == ["a/", "a/in/"]
        assert await h.fs.drain() == []
        assert sorted(await h.store.keys()) == ["a/", "a/in/", "b/"]

    run_fs(body, **HOLD)


def test_rename_of_a_pending_directory_sends_its_marker_first(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o701, 0, 0)
        await h.write_file("f", b"1", parent=d.ino)
        await h.fs.rename(ROOT_INO, "d", ROOT_INO, "e", 0)
        assert sorted(await h.keys()) == ["e/", "e/f"]
        info = await h.store.head(BUCKET, "e/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o701)

    run_fs(body, **HOLD)


def test_a_directory_renamed_over_a_pending_one_keeps_its_own_attributes(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.fs.mkdir(ROOT_INO, "target", 0o700, 0, 0)
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        await h.write_file("f", b"1", parent=d.ino)
        await h.fs.rename(ROOT_INO, "d", ROOT_INO, "target", 0)
        assert h.fs.status()["markers_queued"] == 0
        assert sorted(await h.keys()) == ["target/", "target/f"]
        info = await h.store.head(BUCKET, "target/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o755)

    run_fs(body, **HOLD)


def test_a_bucket_is_still_created_at_once(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.fs.mkdir(ROOT_INO, "newbucket", 0o755, 0, 0)
        assert "newbucket" in {b.name for b in await h.store.list_buckets()}
        assert h.fs.status()["markers_queued"] == 0

    run_fs(body, bucket=None, **HOLD)


# --- the journal across a restart -------------------------------------------------------------


def run_twice(
    tmp_path: Path,
    first: Callable[[BucketFS], Awaitable[None]],
    second: Callable[[BucketFS, CountingBackend], Awaitable[None]],
) -> None:
    """Two daemons on one cache directory and one store; the first stops without draining
    (as a killed daemon: nothing more is sent), the second starts on what it left."""

    async def main() -> None:
        store = CountingBackend()
        await store.create_bucket(BUCKET)
        for step in range(2):
            opts = FsOptions(uid=0, gid=0, writeback_delay=3600.0)
            fs = BucketFS(store, bucket=BUCKET, prefix="", options=opts, cache_dir=tmp_path)
            async with trio.open_nursery() as nursery:
                await nursery.start(fs.run)
                if step == 0:
                    await first(fs)
                else:
                    await second(fs, store)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_markers_left_by_a_stopped_daemon_go_up_with_the_next(tmp_path: Path) -> None:
    async def first(fs: BucketFS) -> None:
        d = await fs.mkdir(ROOT_INO, "kept", 0o705, 3, 4)
        await fs.mkdir(d.ino, "sub", 0o755, 0, 0)
        await fs.mkdir(ROOT_INO, "gone", 0o755, 0, 0)
        await fs.rmdir(ROOT_INO, "gone")

    async def second(fs: BucketFS, store: CountingBackend) -> None:
        # shown before it is sent (the recovered marker may have reached the server or not)
        node = await fs.lookup(ROOT_INO, "kept")
        assert (node.kind, node.mode, node.uid, node.gid) == (Kind.DIR, 0o705, 3, 4)
        await fs.markers.flush()
        assert sorted(await store.keys(BUCKET)) == ["kept/", "kept/sub/"]
        info = await store.head(BUCKET, "kept/")
        assert info.metadata["mode"] == str(stat.S_IFDIR | 0o705)
        assert fs.data.cache.index.pending_markers() == []

    run_twice(tmp_path, first, second)


def test_rmdir_of_a_recovered_marker_deletes_what_may_have_reached_the_server(
    tmp_path: Path,
) -> None:
    """A marker from an earlier run may be on the server (sent, then killed before it was
    recorded): removing its directory before it is sent again queues a delete."""

    async def main() -> None:
        store = CountingBackend()
        await store.create_bucket(BUCKET)
        await store.put(BUCKET, "d/", b"")  # the earlier run's PUT, its answer lost
        index = CacheIndex(tmp_path / "index.sqlite")
        index.add_marker(BUCKET, "d/", {"metadata": {}})
        markers = Markers(DeferredDeletes(store))
        markers.attach(index)
        assert markers.pending(BUCKET, "d/") is not None
        assert await markers.remove(BUCKET, "d/")  # not running: the delete is sent at once
        assert await store.keys(BUCKET) == []
        assert index.pending_markers() == []
        index.close()

    trio.run(main)


# --- the index's layout -----------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE files (id INTEGER PRIMARY KEY AUTOINCREMENT, bucket TEXT NOT NULL, key TEXT,
    size INTEGER NOT NULL, base_etag TEXT, base_size INTEGER NOT NULL DEFAULT 0,
    dirty INTEGER NOT NULL DEFAULT 0, generation INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL DEFAULT 'clean', error TEXT,
    UNIQUE (bucket, key));
CREATE TABLE blocks (file_id INTEGER NOT NULL, idx INTEGER NOT NULL, dirty INTEGER NOT NULL,
    PRIMARY KEY (file_id, idx)) WITHOUT ROWID;
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE deletes (bucket TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
INSERT INTO files(bucket, key, size, dirty, state) VALUES ('b', 'dirty.txt', 5, 1, 'dirty');
INSERT INTO deletes VALUES ('b', 'gone.txt');
"""


def test_an_index_of_the_layout_before_markers_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    index = CacheIndex(path)
    try:
        assert [row.key for row in index.dirty_files()] == ["dirty.txt"]
        assert index.pending_deletes() == [("b", "gone.txt")]
        assert index.pending_markers() == []
        index.add_marker("b", "d/", {"metadata": {"mode": "16877"}})
        assert index.pending_markers() == [("b", "d/", {"metadata": {"mode": "16877"}})]
        assert index.setting("schema") == str(SCHEMA_VERSION)
    finally:
        index.close()


def test_an_index_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    CacheIndex(path).close()
    newer = sqlite3.connect(path)
    newer.execute("UPDATE settings SET value=? WHERE name='schema'", (str(SCHEMA_VERSION + 1),))
    newer.commit()
    newer.close()
    with pytest.raises(CacheError, match="newer bucketfs"):
        CacheIndex(path)


def test_mkdir_is_one_index_commit(run_fs: RunFs) -> None:
    """What mkdir costs the FUSE thread: one INSERT (SQLite's change counter moves by one)."""

    async def body(h: Harness) -> None:
        index = h.fs.data.cache.index
        before = index.db.execute("SELECT total_changes()").fetchone()[0]
        await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        after = index.db.execute("SELECT total_changes()").fetchone()[0]
        assert after - before == 1

    run_fs(body, **HOLD)


def test_a_marker_goes_only_after_its_ancestors_markers(run_fs: RunFs) -> None:
    """SeaweedFS loses a `d/` marker PUT at the same time as one under it (cache/markers.py):
    parents first, each confirmed before its children go; a flush of a subdirectory alone
    sends its ancestors' markers too, at once."""

    async def body(h: Harness) -> None:
        events: list[tuple[str, str]] = []
        put = h.store.put

        async def recording_put(bucket: str, key: str, *args: Any, **kw: Any) -> Any:
            events.append(("start", key))
            result = await put(bucket, key, *args, **kw)
            events.append(("end", key))
            return result

        h.store.put = recording_put  # type: ignore[method-assign]
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        sub = await h.fs.mkdir(d.ino, "sub", 0o755, 0, 0)
        await h.fs.mkdir(sub.ino, "x", 0o755, 0, 0)
        await h.fs.mkdir(d.ino, "y", 0o755, 0, 0)
        with trio.fail_after(5):  # the ancestors are not due for an hour: kicked, not awaited
            await h.fs.markers.flush(BUCKET, "d/sub/x/")
        assert journal(h) == [(BUCKET, "d/y/")]
        await h.fs.markers.flush()
        for key in ("d/sub/", "d/sub/x/", "d/y/"):
            parent = key[: key[:-1].rfind("/") + 1]
            assert events.index(("end", parent)) < events.index(("start", key)), events

    run_fs(body, latency=0.05, **HOLD)
