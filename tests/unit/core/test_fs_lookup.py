"""`BucketFS` without a kernel, over memory: names, lookups, negative entries and listings (readdir
pages, offsets, invalid keys).

Every test drives the core the way the FUSE adapter does (lookup takes a reference, readdir
entries are remembered) and checks the result in the bucket itself, through the backend, as
another S3 client would see it.
"""

from __future__ import annotations

import os
import stat

import pytest
import trio

from bucketfs.backends.memory import MemoryBackend
from bucketfs.core import readdir
from bucketfs.core.nodes import ROOT_INO, Kind, Nameless, Node
from bucketfs.errors import (
    FileExists,
    InvalidArgument,
    NameTooLong,
    NoEntry,
    NotADirectory,
)
from tests.support.harness import BUCKET, Harness, RunFs

MiB = 1 << 20
RW = os.O_RDWR
WO = os.O_WRONLY


# --- lookup ------------------------------------------------------------------------------


def test_lookup_file_dir_and_missing(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f.txt", b"hello")
        await h.put("d/inner", b"x")
        f = await h.fs.lookup(ROOT_INO, "f.txt")
        assert (f.kind, f.size, f.key, f.lookups) == (Kind.FILE, 5, "f.txt", 1)
        assert stat.S_ISREG(f.st_mode)
        d = await h.fs.lookup(ROOT_INO, "d")
        assert (d.kind, d.key) == (Kind.DIR, "d/")
        assert stat.S_ISDIR(d.st_mode)
        assert not d.has_marker
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "missing")
        with pytest.raises(NoEntry):
            await h.fs.lookup(d.ino, "missing")
        with pytest.raises(NotADirectory):
            await h.fs.lookup(f.ino, "x")
        again = await h.fs.lookup(ROOT_INO, "f.txt")
        assert again is f
        assert f.lookups == 2

    run_fs(body)


def test_lookup_counts_and_forget(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"1")
        f = await h.fs.lookup(ROOT_INO, "f")
        await h.fs.lookup(ROOT_INO, "f")
        h.fs.forget([(f.ino, 1)])
        assert h.fs.table.get(f.ino) is f
        h.fs.forget([(f.ino, 1)])
        assert h.fs.table.get(f.ino) is None
        with pytest.raises(NoEntry):
            await h.fs.getattr(f.ino)
        # a new lookup gives a new inode, never a reused number
        f2 = await h.fs.lookup(ROOT_INO, "f")
        assert f2.ino > f.ino

    run_fs(body)


def test_prefix_only_directory(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a/b/c/file", b"x")
        c = await h.lookup("a/b/c")
        assert c.kind is Kind.DIR
        assert c.key == "a/b/c/"
        assert not c.has_marker
        f = await h.lookup("a/b/c/file")
        assert f.size == 1
        assert list(await h.ls((await h.lookup("a")).ino)) == ["b"]

    run_fs(body)


def test_empty_marker_directory(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("empty/")
        d = await h.fs.lookup(ROOT_INO, "empty")
        assert d.kind is Kind.DIR
        assert d.has_marker
        assert await h.ls(d.ino) == {}
        assert list(await h.ls()) == ["empty"]

    run_fs(body)


def test_a_known_directory_is_revalidated_by_listing_without_reading_its_marker(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o700))
        await h.put("d/f", b"1")
        d = await h.fs.lookup(ROOT_INO, "d")
        assert d.mode == 0o700
        heads, lists = h.store.calls["head"], h.store.calls["list_page"]
        # the kernel revalidates the entry and asks for attributes once they expired
        assert await h.fs.lookup(ROOT_INO, "d") is d
        assert (await h.fs.getattr(d.ino)).mode == 0o700
        assert h.store.calls["head"] == heads
        assert h.store.calls["list_page"] > lists  # whether it still exists was asked

    run_fs(body, attr_timeout=0, entry_timeout=0, dir_timeout=0, negative_timeout=0)


def test_a_known_directory_removed_by_another_client_is_gone_at_revalidation(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o700))
        await h.put("d/f", b"1")
        await h.fs.lookup(ROOT_INO, "d")
        await h.store.delete_many(BUCKET, ["d/", "d/f"])
        with pytest.raises(NoEntry):
            await h.fs.lookup(ROOT_INO, "d")

    run_fs(body, attr_timeout=0, entry_timeout=0, dir_timeout=0, negative_timeout=0)


def test_directory_attributes_are_read_again_after_dir_attr_timeout(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/", mode=str(stat.S_IFDIR | 0o700))
        await h.put("d/f", b"1")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.put("d/", mode=str(stat.S_IFDIR | 0o750))  # another client's chmod
        assert (await h.fs.lookup(ROOT_INO, "d")).mode == 0o750
        await h.put("d/", mode=str(stat.S_IFDIR | 0o705))
        assert (await h.fs.getattr(d.ino)).mode == 0o705

    run_fs(body, attr_timeout=0, dir_timeout=0, negative_timeout=0, dir_attr_timeout=0)


def test_key_both_file_and_prefix_directory_wins(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("both", b"file content")
        await h.put("both/child", b"c")
        listed = await h.ls()
        assert list(listed) == ["both"]
        assert listed["both"].kind is Kind.DIR
        node = await h.fs.lookup(ROOT_INO, "both")
        assert node.kind is Kind.DIR
        assert list(await h.ls(node.ino)) == ["child"]
        # the object stays untouched in the bucket
        assert await h.body("both") == b"file content"

    run_fs(body)


def test_readdir_skips_invalid_segments_and_keeps_siblings(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        long = "L" * 300
        for key in ("a//b", "a/ok", "x/./y", "x/../y", "x/fine", f"x/{long}", f"{long}/z", "/abs"):
            await h.put(key, b"1")
        await h.put("top", b"t")
        root = await h.ls()
        assert sorted(root) == ["a", "top", "x"]
        a = await h.fs.lookup(ROOT_INO, "a")
        assert list(await h.ls(a.ino)) == ["ok"]
        x = await h.fs.lookup(ROOT_INO, "x")
        assert list(await h.ls(x.ino)) == ["fine"]

    run_fs(body)


def test_readdir_many_pages(run_fs: RunFs) -> None:
    names = [f"f{i:05d}" for i in range(2500)]

    async def body(h: Harness) -> None:
        for name in names:
            await h.put(f"big/{name}", b"x")
        await h.put("big/sub/deeper", b"y")
        big = await h.fs.lookup(ROOT_INO, "big")
        listed = await h.ls(big.ino)
        assert list(listed) == sorted([*names, "sub"])
        assert listed["sub"].kind is Kind.DIR
        assert all(listed[n].kind is Kind.FILE and listed[n].size == 1 for n in names)
        assert h.store.calls["head"] <= 2  # the listing itself needs no HEAD per entry

    run_fs(body)


def test_readdir_offsets_resume_in_the_middle(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(1500):
            await h.put(f"f{i:04d}", b"x")
        fh = h.fs.opendir(ROOT_INO)
        full = list(await h.fs.readdir(fh, 0))
        assert [name for name, _, _ in full[:2]] == [".", ".."]  # offsets 0 and 1
        assert full[0][1] is full[1][1] is h.fs.table.root  # the root is its own parent
        assert [nxt for _, _, nxt in full] == list(range(1, 1503))
        # the kernel's buffer filled up after 1,100 entries: it resumes at that offset
        rest = list(await h.fs.readdir(fh, full[1099][2]))
        assert [name for name, _, _ in rest] == [f"f{i:04d}" for i in range(1098, 1500)]
        assert [nxt for _, _, nxt in rest] == list(range(1101, 1503))
        assert list(await h.fs.readdir(fh, 1502)) == []
        h.fs.releasedir(fh)
        # a fresh handle asked for a middle offset first (telldir/seekdir) also works
        fh2 = h.fs.opendir(ROOT_INO)
        middle = list(await h.fs.readdir(fh2, 702))
        assert middle[0][0] == "f0700"
        assert len(middle) == 800
        h.fs.releasedir(fh2)

    run_fs(body)


def test_readdir_makes_a_node_only_when_it_hands_the_name_out(run_fs: RunFs) -> None:
    """A directory of many names never has them all in the inode table because it is read:
    each node is made as the kernel takes its name (`max_nodes` holds; docs/core.md), and a
    node the kernel forgot meanwhile goes for good, however large the directory."""

    async def body(h: Harness) -> None:
        for i in range(500):
            await h.put(f"f{i:04d}", b"x")
        before = len(h.fs.table)
        fh = h.fs.opendir(ROOT_INO)
        taken = []
        for name, node, _next in await h.fs.readdir(fh, 0):
            taken.append((name, node))
            if len(taken) == 12:  # the kernel's buffer is full: it stops taking
                break
        assert len(h.fs.table) - before == 10  # f0000..f0009, not 500
        for _name, node in taken[2:]:
            h.fs.remember(node)
        h.fs.forget([(node.ino, 1) for _name, node in taken[2:]])
        assert len(h.fs.table) == before
        rest = list(await h.fs.readdir(fh, 12))
        assert [name for name, _, _ in rest] == [f"f{i:04d}" for i in range(10, 500)]
        assert rest[0][1].kind is Kind.FILE
        assert rest[0][1].size == 1
        assert h.fs.table.child(h.fs.table.root, "f0001") is None  # forgotten stays so
        h.fs.releasedir(fh)

    run_fs(body)


def test_readdir_does_not_show_a_name_removed_after_its_listing(run_fs: RunFs) -> None:
    """`rm` of a name after opendir, before readdir reached it: the name is not shown, and
    no node is made for a name that is not there (one would answer lookups with it)."""

    async def body(h: Harness) -> None:
        for name in ("a", "b", "c"):
            await h.put(name, b"x")
        fh = h.fs.opendir(ROOT_INO)
        first = list(await h.fs.readdir(fh, 0))[:3]  # ".", "..", "a"
        assert [name for name, _, _ in first] == [".", "..", "a"]
        b = await h.fs.lookup(ROOT_INO, "b")
        await h.fs.unlink(ROOT_INO, "b")
        h.fs.forget([(b.ino, 1)])
        assert [name for name, _, _ in await h.fs.readdir(fh, 3)] == ["c"]
        assert h.fs.table.child(h.fs.table.root, "b") is None
        h.fs.releasedir(fh)
        assert sorted(await h.ls()) == ["a", "c"]

    run_fs(body)


def test_readdir_shows_files_not_yet_uploaded(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("old", b"1")
        fh, _node = await h.fs.create(ROOT_INO, "new", 0o644, WO | os.O_CREAT, 0, 0)
        assert sorted(await h.ls()) == ["new", "old"]
        await h.fs.release(fh)
        assert sorted(await h.ls()) == ["new", "old"]
        assert sorted(await h.keys()) == ["new", "old"]

    run_fs(body)


def test_names_over_255_bytes_are_refused(run_fs: RunFs) -> None:
    long = "é" * 128  # 256 bytes in UTF-8
    ok = "é" * 127 + "x"  # 255 bytes

    async def body(h: Harness) -> None:
        with pytest.raises(NameTooLong):
            await h.fs.create(ROOT_INO, long, 0o644, WO | os.O_CREAT, 0, 0)
        with pytest.raises(NameTooLong):
            await h.fs.mkdir(ROOT_INO, long, 0o755, 0, 0)
        with pytest.raises(NameTooLong):
            await h.fs.symlink(ROOT_INO, long, "target", 0, 0)
        await h.write_file(ok, b"fits")
        with pytest.raises(NameTooLong):
            await h.fs.rename(ROOT_INO, ok, ROOT_INO, long, 0)
        assert await h.keys() == [ok]

    run_fs(body)


def test_lookup_of_a_name_over_255_bytes(run_fs: RunFs) -> None:
    """A key with a 300-byte segment is hidden from readdir; lookup must not reveal it.

    FUSE passes names up to 1,024 bytes to lookup, so the core has to refuse them itself.
    """
    long = "L" * 300

    async def body(h: Harness) -> None:
        await h.put(long, b"hidden")
        await h.put(f"{long}/child", b"hidden")
        with pytest.raises(NameTooLong):
            await h.fs.lookup(ROOT_INO, long)
        assert await h.ls() == {}

    run_fs(body)


def test_invalid_new_names(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for name in ("", ".", "..", "a/b", "nul\0"):
            with pytest.raises(InvalidArgument):
                await h.fs.create(ROOT_INO, name, 0o644, WO | os.O_CREAT, 0, 0)
            with pytest.raises(InvalidArgument):
                await h.fs.mkdir(ROOT_INO, name, 0o755, 0, 0)
        assert await h.keys() == []

    run_fs(body)


# --- lookups after a listing expired ----------------------------------------------------


def test_lookups_after_a_listing_expired_list_a_small_directory_again(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(3):
            await h.put(f"d/f{i}", b"x")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.ls(d.ino)
        h.store.calls.clear()
        for name in ("new1", "new2", "new3"):  # a loop creating files: each name is new
            with pytest.raises(NoEntry):
                await h.fs.lookup(d.ino, name)
        assert h.store.calls["list_page"] == 3  # dir_timeout 0: one LIST per lookup, no HEAD
        assert h.store.calls["head"] == 0
        await h.put("d/other", b"yy")  # another client's file is seen at the next listing
        assert (await h.fs.lookup(d.ino, "other")).size == 2

    run_fs(body, negative_timeout=0, dir_timeout=0)


def test_a_file_found_by_listing_its_directory_again_costs_one_round_trip(run_fs: RunFs) -> None:
    """`stat` of files whose directory's listing expired: once a relisting found the name
    as a file, the next relisting and the file's HEAD go out together (time here is the mock
    clock's: each request takes `latency`). Misses (a writer's new names) stop the guess."""

    async def body(h: Harness) -> None:
        for i in range(3):
            await h.put(f"d/f{i}", b"x")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.ls(d.ino)
        await h.put("d/late1", b"four", mode=str(0o100600))  # no node yet: the lookup asks
        h.store.calls.clear()
        started = trio.current_time()
        await h.fs.lookup(d.ino, "late1")  # nothing learnt yet: LIST, then HEAD
        assert trio.current_time() - started == pytest.approx(2.0)
        await h.put("d/late2", b"four", mode=str(0o100600))  # not in that listing either
        del h.store.calls["put"]
        started = trio.current_time()
        node = await h.fs.lookup(d.ino, "late2")
        assert trio.current_time() - started == pytest.approx(1.0)
        assert (node.size, node.mode & 0o777) == (4, 0o600)  # the HEAD's metadata
        assert dict(h.store.calls) == {"list_page": 2, "head": 2}
        with pytest.raises(NoEntry):  # a new name: the HEAD beside the LIST was wasted
            await h.fs.lookup(d.ino, "new1")
        assert dict(h.store.calls) == {"list_page": 3, "head": 3}
        for name in ("new2", "new3"):  # misses: no more guessing
            with pytest.raises(NoEntry):
                await h.fs.lookup(d.ino, name)
        assert dict(h.store.calls) == {"list_page": 5, "head": 3}

    run_fs(body, negative_timeout=0, dir_timeout=0, latency=1.0)


def test_a_name_an_expired_listing_showed_as_a_file_is_asked_with_its_head_alone(
    run_fs: RunFs,
) -> None:
    """`stat` of files spread over many directories comes back to each directory after its
    listing expired (the bench's stat_1000: a LIST of the directory beside each file's HEAD):
    a name the last listing showed as a file needs its HEAD only. One that is gone or became
    a directory since is asked as if never listed."""

    async def body(h: Harness) -> None:
        for i in range(4):
            await h.put(f"d/f{i}", b"x" * i)
        d = await h.fs.lookup(ROOT_INO, "d")
        listed = await h.ls(d.ino)
        h.fs.forget([(node.ino, node.lookups) for node in listed.values()])  # the kernel's
        h.store.calls.clear()
        for i in (2, 0, 3):
            node = await h.fs.lookup(d.ino, f"f{i}")
            assert (node.kind, node.size) == (Kind.FILE, i)
            h.fs.forget([(node.ino, 1)])
        assert dict(h.store.calls) == {"head": 3}  # dir_timeout 0: no listing was fresh
        # another client: f1 gone, f2 a directory now, f3 a file and a prefix (the directory
        # wins, which a HEAD alone cannot tell: it shows once the directory is listed again)
        await h.store.delete(BUCKET, "d/f1")
        await h.store.delete(BUCKET, "d/f2")
        await h.put("d/f2/inner", b"i")
        await h.put("d/f3/inner", b"i")
        h.store.calls.clear()
        f3 = await h.fs.lookup(d.ino, "f3")
        assert f3.kind is Kind.FILE
        h.fs.forget([(f3.ino, 1)])
        assert dict(h.store.calls) == {"head": 1}
        with pytest.raises(NoEntry):  # its HEAD, then the directory listed again
            await h.fs.lookup(d.ino, "f1")
        assert dict(h.store.calls) == {"head": 2, "list_page": 1}
        for name in ("f2", "f3"):  # that listing showed them as directories
            assert (await h.fs.lookup(d.ino, name)).kind is Kind.DIR
        assert dict(h.store.calls) == {"head": 4, "list_page": 3}  # LIST, marker HEAD each

    run_fs(body, negative_timeout=0, dir_timeout=0, attr_timeout=0)


def test_a_large_directory_is_not_listed_again_for_one_lookup(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bucketfs.core.resolve.RELIST_ENTRIES", 2)

    async def body(h: Harness) -> None:
        for i in range(3):
            await h.put(f"d/f{i}", b"x")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.ls(d.ino)
        h.store.calls.clear()
        with pytest.raises(NoEntry):
            await h.fs.lookup(d.ino, "new")
        assert h.store.calls["head"] == 1  # the name itself, and a LIST of `new/` only
        assert h.store.calls["list_page"] == 1

    run_fs(body, negative_timeout=0, dir_timeout=0)


def test_o_excl_is_answered_from_a_fresh_listing_and_a_race_keeps_both(run_fs: RunFs) -> None:
    """On a store that refuses an upload over an existing key, O_EXCL trusts a fresh listing
    (no request); another client that made the name meanwhile keeps it, and ours is kept
    under a conflict name (the upload's If-None-Match: *), never lost."""

    async def body(h: Harness) -> None:
        await h.ls(ROOT_INO)  # the root's listing is cached (dir_timeout)
        await h.put("lock", b"theirs")  # another client takes the name meanwhile
        h.store.calls.clear()
        fh, _ = await h.fs.create(ROOT_INO, "lock", 0o644, WO | os.O_CREAT | os.O_EXCL, 0, 0)
        assert dict(h.store.calls) == {}, h.store.calls
        await h.fs.write(fh, 0, b"ours")
        await h.fs.release(fh)
        assert await h.body("lock") == b"theirs"
        conflicts = [key for key in await h.keys() if key.startswith("lock.conflict-")]
        assert len(conflicts) == 1
        assert await h.body(conflicts[0]) == b"ours"

    run_fs(body, dir_timeout=3600)


def test_o_excl_asks_the_server_on_a_store_without_exclusive_puts(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store without `If-None-Match: *` (one that answers 501 to it): a cached listing is
    never trusted for an exclusive create there."""
    monkeypatch.setattr(MemoryBackend, "exclusive_put", False)

    async def body(h: Harness) -> None:
        await h.ls(ROOT_INO)  # the root's listing is cached (dir_timeout)
        await h.put("lock", b"theirs")  # another client takes the lock meanwhile
        with pytest.raises(FileExists):
            await h.fs.create(ROOT_INO, "lock", 0o644, WO | os.O_CREAT | os.O_EXCL, 0, 0)
        assert await h.body("lock") == b"theirs"

    run_fs(body, dir_timeout=3600)


def test_a_listing_made_while_an_upload_was_pending_shows_the_file_after_it_went(
    run_fs: RunFs,
) -> None:
    """A file closed and not uploaded yet is shown from the cache; a listing of its directory
    made meanwhile (the server had nothing of it) must not hide it once the upload landed and
    the file is no longer shown from the cache (the kernel forgot its inode meanwhile)."""

    async def body(h: Harness) -> None:
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        await h.fs.sync_path(ROOT_INO)
        node = await h.write_file("f", b"data", parent=d.ino)
        h.fs.namespace.drop_listing(d)  # so that the next readdir lists the server
        assert list(await h.ls(d.ino)) == ["f"]  # from the cache; the listing kept lacks it
        h.fs.forget([(node.ino, node.lookups)])
        await h.fs.sync_path(d.ino)  # uploaded: shown from listings from now on
        again = await h.fs.lookup(d.ino, "f")
        assert await h.read_file(again) == b"data"

    run_fs(body, dir_timeout=60.0, attr_timeout=0.0, negative_timeout=0.0, writeback_delay=3600.0)


def test_names_shown_without_a_node_are_looked_up_from_the_prefetch(run_fs: RunFs) -> None:
    """readdir shows small listed files without a node; the lookups that follow (ls -l, in
    listing order) are answered by the prefetch's HEADs, one per name, and make the nodes
    then; a name this mount removed meanwhile is not answered from what was found before."""

    async def body(h: Harness) -> None:
        names = [f"f{i:03d}" for i in range(40)]
        for name in names:
            await h.put(f"d/{name}", b"s")
        await h.put("d/big", b"b" * 5000)
        d = await h.lookup("d")
        h.fs.namespace.readdir.nameless = True
        fh = h.fs.opendir(d.ino)
        try:
            entries = list(await h.fs.readdir(fh, 0))
        finally:
            h.fs.releasedir(fh)
        shown = {name: item for name, item, _ in entries if name not in (".", "..")}
        assert sorted(n for n, item in shown.items() if isinstance(item, Nameless)) == names
        assert isinstance(shown["big"], Node)
        h.store.calls.clear()
        first = await h.fs.lookup(d.ino, names[0])  # starts the prefetch of the others
        assert first.full
        assert first.ino == shown[names[0]].ino  # the number readdir showed
        await h.fs.unlink(d.ino, names[5])
        for name in names[1:]:
            if name == names[5]:
                with pytest.raises(NoEntry):
                    await h.fs.lookup(d.ino, name)
                continue
            node = await h.fs.lookup(d.ino, name)
            assert node.full
            assert node.ino == shown[name].ino
        assert h.store.calls["head"] == len(names)  # none twice; none for the large file
        assert h.fs.namespace.prefetch.taken == len(names)  # f005 by the unlink

    run_fs(body, attr_timeout=60, dir_timeout=60)


def test_numbers_shown_without_a_node_survive_reading_other_directories(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name shown without a node keeps its number while other directories are read (the
    reservations of the directories read last are kept, a directory's whole set at once,
    never the one being read), so `d_ino` and a later lookup's `st_ino` agree."""
    monkeypatch.setattr(readdir, "RESERVED_MAX", 25)

    async def body(h: Harness) -> None:
        for d in ("a", "b", "c"):
            for i in range(10):
                await h.put(f"{d}/f{i}", b"s")
        h.fs.namespace.readdir.nameless = True

        async def shown(d: str) -> dict[str, int]:
            node = await h.lookup(d)
            fh = h.fs.opendir(node.ino)
            try:
                items = list(await h.fs.readdir(fh, 0))
            finally:
                h.fs.releasedir(fh)
            return {n: item.ino for n, item, _ in items if isinstance(item, Nameless)}

        a = await shown("a")
        b = await shown("b")
        assert await shown("a") == a  # read again: the same numbers (a back as the newest)
        c = await shown("c")  # 30 > 25: the oldest directory's set (b) goes, not a's
        assert await shown("a") == a
        assert await shown("c") == c
        assert set((await shown("b")).values()).isdisjoint(b.values())  # b's were dropped
        node = await h.fs.lookup((await h.lookup("c")).ino, "f3")
        assert node.ino == c["f3"]

    run_fs(body, attr_timeout=60, dir_timeout=60)


def test_a_lookup_prefetches_only_the_kinds_it_needs(run_fs: RunFs) -> None:
    """After a readdir, a lookup of a large listed file (surely a file) sends nothing; one of
    a small file (maybe a symlink) HEADs the small siblings only; getattr HEADs the rest."""

    async def body(h: Harness) -> None:
        for i in range(3):
            await h.put(f"d/small{i}", b"s")
            await h.put(f"d/big{i}", b"b" * 5000)
        d = await h.lookup("d")
        listed = await h.ls(d.ino)
        h.store.calls.clear()
        big = await h.fs.lookup(d.ino, "big0")
        assert not big.full
        assert dict(h.store.calls) == {}
        small = await h.fs.lookup(d.ino, "small0")
        assert small.full
        for name in ("small1", "small2"):
            await h.fs.namespace.prefetch.wait(listed[name])
        assert h.store.calls["head"] == 3
        assert not listed["big1"].full
        await h.fs.getattr(big.ino)
        for name in ("big1", "big2"):
            await h.fs.namespace.prefetch.wait(listed[name])
        assert h.store.calls["head"] == 6
        assert listed["big2"].full

    run_fs(body, attr_timeout=60, dir_timeout=60)
