"""df figures and the attributes of bucket directories (`bucketfs/core/storeinfo.py`) through
`BucketFS`, over the memory store (usage from its objects, a quota from the bucket's
`quota-bytes`/`quota-count` metadata, as Swift keeps it). The same behaviour through a real
mount on Swift, SeaweedFS and the local store: tests/fuse/test_store_info.py.
"""

from __future__ import annotations

import errno

import pytest
import trio

from bucketfs.backends.base import Space
from bucketfs.core.nodes import ROOT_INO
from bucketfs.core.storeinfo import DF_TTL, DF_WAIT, StatFs, statfs_of
from bucketfs.errors import BucketfsError
from tests.support.harness import BUCKET, CountingBackend, Harness, RunFs

NS = "user.bucketfs."


async def errno_of(coro: object) -> int:
    try:
        await coro  # type: ignore[misc]
    except BucketfsError as exc:
        return exc.errno
    raise AssertionError("no error")


def test_figures_of_each_kind_of_answer() -> None:
    plenty = StatFs()
    assert statfs_of(None) == plenty
    # usage only: used on top of the fixed "plenty" free
    fig = statfs_of(Space(5001, 2))
    assert (fig.blocks - fig.bfree, fig.files - fig.ffree) == (2, 2)
    assert fig.bfree == plenty.bfree
    # a quota: the total is the quota, free what is left of it
    fig = statfs_of(Space(4096 * 3, 3, quota_bytes=4096 * 10, quota_count=5))
    assert (fig.blocks, fig.bfree, fig.files, fig.ffree) == (10, 7, 5, 2)
    # over quota: nothing free, the total grows to what is used (df never shows used > total)
    fig = statfs_of(Space(4096 * 12, 9, quota_bytes=4096 * 10, quota_count=5))
    assert (fig.blocks, fig.bfree, fig.files, fig.ffree) == (12, 0, 9, 0)
    # a real size (the local store's disk): used + its free room
    fig = statfs_of(Space(4096, 1, free_bytes=4096 * 100, free_files=50))
    assert (fig.blocks, fig.bfree, fig.files, fig.ffree) == (101, 100, 51, 50)


def test_statfs_reports_usage_and_quota(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a", b"x" * 5000)
        await h.put("d/b", b"y")
        figures = await h.fs.statfs()
        assert figures.blocks - figures.bfree == 2  # 5001 bytes in 4 KiB blocks, rounded up
        assert figures.files - figures.ffree == 2
        assert figures.bfree > 0
        await h.store.set_bucket_metadata(BUCKET, {"quota-bytes": str(4096 * 10)})
        assert await h.fs.statfs() == figures  # cached
        await trio.sleep(DF_TTL)
        await h.fs.statfs()  # stale: answered at once, refreshed behind
        await trio.sleep(0.1)
        figures = await h.fs.statfs()
        assert (figures.blocks, figures.bfree) == (10, 8)

    run_fs(body)


def test_statfs_never_waits_on_a_slow_store(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("a", b"x" * 5000)
        h.store.latency = 600.0  # the server stops answering
        started = trio.current_time()
        assert await h.fs.statfs() == StatFs()  # no figures yet: the defaults after DF_WAIT
        assert trio.current_time() - started == pytest.approx(DF_WAIT)
        await trio.sleep(700)  # the one refresh comes back
        known = await h.fs.statfs()
        assert known.blocks - known.bfree == 2
        await trio.sleep(DF_TTL)
        started = trio.current_time()
        for _ in range(5):  # stale: the old figures at once, one refresh for all of them
            assert await h.fs.statfs() == known
        assert trio.current_time() == started

    run_fs(body)


def test_statfs_without_figures_keeps_the_defaults(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def space(self: CountingBackend, bucket: str | None) -> None:
        return None  # what S3 answers

    monkeypatch.setattr(CountingBackend, "space", space)

    async def body(h: Harness) -> None:
        await h.put("a", b"x")
        assert await h.fs.statfs() == StatFs()

    run_fs(body)


def test_bucket_metadata_on_the_root_of_a_bucket_mount(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str | None] = []
    space_of = CountingBackend.space

    async def space(self: CountingBackend, bucket: str | None) -> Space | None:
        asked.append(bucket)
        return await space_of(self, bucket)

    monkeypatch.setattr(CountingBackend, "space", space)

    async def body(h: Harness) -> None:
        await h.put("a", b"x" * 10)
        await h.fs.setxattr(ROOT_INO, "user.Team", b"ops")
        assert await h.store.bucket_metadata(BUCKET) == {"team": "ops"}
        assert await h.fs.getxattr(ROOT_INO, "user.team") == b"ops"
        # nothing listed (a copy of the directory carries none of the bucket's metadata,
        # settings or figures: all are read by name), and listing asks nothing about usage
        assert await h.fs.listxattr(ROOT_INO) == []
        assert asked == []
        assert await h.fs.getxattr(ROOT_INO, NS + "bytes_used") == b"10"
        assert await h.fs.getxattr(ROOT_INO, NS + "object_count") == b"1"
        assert await errno_of(h.fs.getxattr(ROOT_INO, NS + "quota_bytes")) == errno.ENODATA
        assert asked
        await h.store.set_bucket_metadata(BUCKET, {"quota-bytes": "1000"})
        assert await h.fs.getxattr(ROOT_INO, NS + "quota_bytes") == b"1000"
        assert await errno_of(h.fs.setxattr(ROOT_INO, NS + "quota_bytes", b"1")) == errno.EPERM
        assert await errno_of(h.fs.setxattr(ROOT_INO, "user.a b", b"v")) == errno.EINVAL
        assert await errno_of(h.fs.setxattr(ROOT_INO, "user.k", b"a\nb")) == errno.EINVAL
        await h.fs.removexattr(ROOT_INO, "user.team")
        assert await h.store.bucket_metadata(BUCKET) == {"quota-bytes": "1000"}
        assert await errno_of(h.fs.getxattr(ROOT_INO, "user.team")) == errno.ENODATA
        assert await errno_of(h.fs.removexattr(ROOT_INO, "user.team")) == errno.ENODATA

    run_fs(body)


def test_bucket_directories_of_an_account_mount(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.store.create_bucket("bkt1")
        await h.store.set_bucket_metadata("bkt1", {"owner": "ann"})
        bkt1 = await h.fs.lookup(ROOT_INO, "bkt1")
        assert await h.fs.getxattr(bkt1.ino, "user.owner") == b"ann"
        await h.fs.setxattr(bkt1.ino, "user.owner", b"bob")
        assert await h.store.bucket_metadata("bkt1") == {"owner": "bob"}
        # the root of an account mount is no bucket
        assert await errno_of(h.fs.setxattr(ROOT_INO, "user.k", b"v")) == errno.EOPNOTSUPP
        assert await h.fs.listxattr(bkt1.ino) == []  # the bucket's, read by name
        assert await h.fs.listxattr(ROOT_INO) == []

    run_fs(body, bucket=None)


def test_a_store_without_bucket_metadata_refuses(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def nothing(self: CountingBackend, bucket: str) -> None:
        return None  # what S3 and the local store answer

    monkeypatch.setattr(CountingBackend, "bucket_metadata", nothing)

    async def body(h: Harness) -> None:
        assert await errno_of(h.fs.setxattr(ROOT_INO, "user.k", b"v")) == errno.EOPNOTSUPP
        assert await errno_of(h.fs.getxattr(ROOT_INO, "user.k")) == errno.ENODATA

    run_fs(body)


def test_the_root_of_a_prefix_mount_is_a_directory_with_the_buckets_settings(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        await h.fs.setxattr(ROOT_INO, "user.team", b"ops")  # the marker's metadata, as before
        assert (await h.head("sub/")).metadata["team"] == "ops"
        assert await h.store.bucket_metadata(BUCKET) == {}
        assert await h.fs.getxattr(ROOT_INO, "user.team") == b"ops"
        await h.fs.setxattr(ROOT_INO, NS + "versioning", b"Enabled")
        assert await h.store.get_versioning(BUCKET) == "Enabled"
        assert await h.fs.getxattr(ROOT_INO, NS + "versioning") == b"Enabled"
        # listed like any directory's: versioning is the bucket's setting, read by name
        assert await h.fs.listxattr(ROOT_INO) == ["user.team"]
        assert await errno_of(h.fs.getxattr(ROOT_INO, NS + "bytes_used")) == errno.ENODATA

    run_fs(body, prefix="sub")
