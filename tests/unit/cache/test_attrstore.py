"""HEADs kept across mounts (cache/attrstore.py): a listed file whose listing ETag, size and
LastModified equal what an earlier HEAD said gets its metadata without a HEAD, in the same
mount and in later mounts of the cache directory; a row is kept only from a HEAD the server
answered 2 s or more after LastModified; a row a newer listing contradicts is never used."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import trio
import trio.testing

from bucketfs.cache.attrstore import AttrStore
from bucketfs.core.fs import BucketFS, FsOptions
from bucketfs.core.nodes import ROOT_INO, Node
from bucketfs.types import ObjectInfo, WriteOptions
from tests.support.harness import CountingBackend

BUCKET = "bucket"
NAMES = [f"f{i:02d}" for i in range(20)]


def info(key: str, etag: str = "e1", size: int = 3, lm: float = 1000.0, **kw: object) -> ObjectInfo:
    return ObjectInfo(key=key, size=size, etag=etag, last_modified=lm, **kw)  # type: ignore[arg-type]


def test_rows_are_kept_only_from_heads_answered_well_after_last_modified(tmp_path: Path) -> None:
    store = AttrStore(tmp_path / "attrs.sqlite")
    store.remember("b", info("early", server_date=1001.9))  # same or next second: a copy
    store.remember("b", info("no-date"))  # the server did not say when it answered
    store.remember("b", info("settled", server_date=1002.0, metadata={"mode": "33188"}))
    store.flush()
    assert store.match("b", "early", "e1", 3, 1000.0) is None
    assert store.match("b", "no-date", "e1", 3, 1000.0) is None
    got = store.match("b", "settled", "e1", 3, 1000.4)  # listings and HEADs agree to the second
    assert got is not None
    assert got.metadata == {"mode": "33188"}
    # a listing that says anything else is a newer version: never answered from the row
    assert store.match("b", "settled", "e2", 3, 1000.0) is None
    assert store.match("b", "settled", "e1", 4, 1000.0) is None
    assert store.match("b", "settled", "e1", 3, 1001.0) is None
    store.close()
    again = AttrStore(tmp_path / "attrs.sqlite")
    assert again.match("b", "settled", "e1", 3, 1000.0) is not None
    again.close()


def test_load_reads_many_rows_at_once_and_matches_as_before(tmp_path: Path) -> None:
    store = AttrStore(tmp_path / "attrs.sqlite")
    keys = [f"d/f{i:04d}" for i in range(1200)]  # more than one query's worth (LOAD_CHUNK)
    for key in keys[::2]:
        store.remember("b", info(key, server_date=2000.0, metadata={"mode": "33188"}))
    store.flush()
    rows = store.load("b", keys)
    assert set(rows) == set(keys)
    assert store.load("other", keys[:3]) == dict.fromkeys(keys[:3])
    hits = [k for k in keys if store.match("b", k, "e1", 3, 1000.0, rows) is not None]
    assert hits == keys[::2]
    assert store.match("b", keys[0], "e2", 3, 1000.0, rows) is None  # a newer version
    got = store.match("b", keys[2], "e1", 3, 1000.0, rows)
    assert got is not None
    assert got.metadata == {"mode": "33188"}
    # what is remembered after a load answers from memory; a row written after it is not
    # in the rows read: a miss (a HEAD), never a wrong answer
    store.remember("b", info(keys[1], etag="e9", server_date=2000.0))
    assert store.match("b", keys[1], "e9", 3, 1000.0, rows) is not None
    store.flush()
    assert store.match("b", keys[1], "e9", 3, 1000.0, rows) is None
    assert store.match("b", keys[1], "e9", 3, 1000.0) is not None  # from the file
    assert keys[1] in rows  # the caller's rows are its own
    store.close()


def test_match_without_rows_uses_the_last_load_and_sends_no_query(tmp_path: Path) -> None:
    """readdir reads a directory's rows in bulk; the prefetch's HEAD of each name then asks
    `match` without rows: the last load answers (a cold walk sent a query per name that the
    load had just found absent); a row written since comes from the file."""
    store = AttrStore(tmp_path / "attrs.sqlite")
    keys = [f"d/f{i:02d}" for i in range(10)]
    store.remember("b", info(keys[0], server_date=2000.0))
    store.flush()
    store.load("b", keys)
    queries: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(queries.append)
    assert store.match("b", keys[0], "e1", 3, 1000.0) is not None
    assert all(store.match("b", k, "e1", 3, 1000.0) is None for k in keys[1:])
    assert queries == []
    store.remember("b", info(keys[5], server_date=2000.0))
    store.flush()
    queries.clear()
    assert store.match("b", keys[5], "e1", 3, 1000.0) is not None  # written after the load
    assert len(queries) == 1
    assert store.match("other", keys[1], "e1", 3, 1000.0) is None  # another bucket: asked
    assert len(queries) == 2
    store.close()


def test_the_least_recently_used_rows_go_first(tmp_path: Path) -> None:
    store = AttrStore(tmp_path / "attrs.sqlite", max_rows=2)
    for key in ("a", "b"):
        store.remember("b", info(key, server_date=2000.0))
    store.flush()
    assert store.match("b", "a", "e1", 3, 1000.0) is not None  # a used, b not
    store.flush()
    store.remember("b", info("c", server_date=2000.0))
    store.flush()
    assert store.rows == 2
    assert store.match("b", "b", "e1", 3, 1000.0) is None
    assert store.match("b", "a", "e1", 3, 1000.0) is not None
    assert store.match("b", "c", "e1", 3, 1000.0) is not None
    store.close()


def test_off_keeps_nothing(tmp_path: Path) -> None:
    store = AttrStore(tmp_path / "attrs.sqlite", max_rows=0)
    store.remember("b", info("a", server_date=2000.0))
    store.flush()
    assert store.match("b", "a", "e1", 3, 1000.0) is None
    assert not (tmp_path / "attrs.sqlite").exists()


def life(
    store: CountingBackend, cache_dir: Path, body: Callable[[BucketFS], Awaitable[None]]
) -> None:
    async def main() -> None:
        fs = BucketFS(
            store,
            bucket=BUCKET,
            prefix="",
            options=FsOptions(uid=0, gid=0),
            cache_dir=cache_dir,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            await body(fs)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def ls_l(fs: BucketFS) -> dict[str, Node]:
    """What `ls -l` does: readdir, then getattr of every entry."""
    fh = fs.opendir(ROOT_INO)
    try:
        entries = list(await fs.readdir(fh, 0))
    finally:
        fs.releasedir(fh)
    out: dict[str, Node] = {}
    for name, node, _next in entries:
        if name in (".", ".."):
            continue
        fs.remember(node)
        out[name] = await fs.getattr(node.ino)
    return out


def test_a_remount_lists_with_the_heads_of_the_last_mount(tmp_path: Path) -> None:
    store = CountingBackend()
    cache_dir = tmp_path / "cache"

    async def seed() -> None:
        await store.create_bucket(BUCKET)
        for name in NAMES:
            await store.put(BUCKET, name, b"x", WriteOptions(metadata={"mode": "33152"}))

    trio.run(seed)
    time.sleep(2.1)  # the server's Date must be 2 s past LastModified for a row to be kept

    async def first(fs: BucketFS) -> None:
        nodes = await ls_l(fs)
        assert {n.mode for n in nodes.values()} == {0o600}

    life(store, cache_dir, first)
    assert store.calls["head"] == len(NAMES)
    store.calls.clear()

    async def second(fs: BucketFS) -> None:
        nodes = await ls_l(fs)
        assert {n.mode for n in nodes.values()} == {0o600}  # the metadata, without a HEAD
        assert all(n.full for n in nodes.values())

    life(store, cache_dir, second)
    assert store.calls["head"] == 0

    # another client changes one file's metadata only (same ETag and size, a later second)
    async def chmod_elsewhere() -> None:
        await store.copy(BUCKET, "f03", "f03", WriteOptions(metadata={"mode": "33261"}))

    trio.run(chmod_elsewhere)
    store.calls.clear()

    async def third(fs: BucketFS) -> None:
        nodes = await ls_l(fs)
        assert nodes["f03"].mode == 0o755
        assert {n.mode for k, n in nodes.items() if k != "f03"} == {0o600}

    life(store, cache_dir, third)
    assert store.calls["head"] == 1


def test_heads_answered_right_after_a_change_are_not_kept(tmp_path: Path) -> None:
    """A server whose Date is within 2 s of LastModified: every mount asks again."""

    class Hasty(CountingBackend):
        async def head(self, bucket: str, key: str, **kw: object) -> ObjectInfo:
            got = await super().head(bucket, key, **kw)
            return replace(got, server_date=got.last_modified + 1.0)

    store = Hasty()
    cache_dir = tmp_path / "cache"

    async def seed() -> None:
        await store.create_bucket(BUCKET)
        for name in NAMES[:5]:
            await store.put(BUCKET, name, b"x")

    trio.run(seed)

    async def body(fs: BucketFS) -> None:
        await ls_l(fs)

    life(store, cache_dir, body)
    life(store, cache_dir, body)
    assert store.calls["head"] == 10
