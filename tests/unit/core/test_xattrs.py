"""Object metadata as xattrs (`bucketfs/core/xattrs.py`) through `BucketFS`, over the memory store.

Every change is checked in the bucket itself, as another S3 client would see it; every refusal
by its errno (what `getfattr`/`setfattr` report).
"""

from __future__ import annotations

import errno
import logging
import os

import pytest

from bucketfs.core.nodes import ROOT_INO, Node
from bucketfs.errors import BucketfsError
from bucketfs.types import WriteOptions
from tests.support.harness import BUCKET, CountingBackend, Harness, RunFs

NS = "user.bucketfs."


async def get(h: Harness, node: Node, name: str) -> str:
    return (await h.fs.getxattr(node.ino, name)).decode()


async def errno_of(coro: object) -> int:
    try:
        await coro  # type: ignore[misc]
    except BucketfsError as exc:
        return exc.errno
    raise AssertionError("no error")


def test_user_metadata_round_trip_on_a_clean_file(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f.txt", b"data")
        await h.settle()
        copies = h.store.calls["copy"]
        await h.fs.setxattr(node.ino, "user.colour", b"blue")
        assert h.store.calls["copy"] == copies + 1  # applied at once, in place
        info = await h.head("f.txt")
        assert info.metadata["colour"] == "blue"
        assert info.metadata["mode"]  # POSIX keys kept
        assert await h.body("f.txt") == b"data"
        assert await get(h, node, "user.colour") == "blue"
        names = await h.fs.listxattr(node.ino)
        assert "user.colour" in names
        assert not {"user.mode", "user.uid", "user.gid", "user.mtime"} & set(names)
        assert await errno_of(h.fs.getxattr(node.ino, "user.mode")) == errno.ENODATA
        # names are case-insensitive like HTTP header names
        assert await get(h, node, "user.Colour") == "blue"
        await h.fs.removexattr(node.ino, "user.colour")
        assert "colour" not in (await h.head("f.txt")).metadata
        assert await errno_of(h.fs.getxattr(node.ino, "user.colour")) == errno.ENODATA
        assert await errno_of(h.fs.removexattr(node.ino, "user.colour")) == errno.ENODATA

    run_fs(body)


def test_metadata_written_by_another_client_is_shown(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x", owner="alice", mode="33188")
        listed = (await h.ls())["f"]  # from a listing: no metadata yet
        assert await get(h, listed, "user.owner") == "alice"
        assert "user.owner" in await h.fs.listxattr(listed.ino)

    run_fs(body)


def test_a_dirty_file_carries_its_metadata_with_the_upload(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "new.json", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"{}")
        await h.fs.setxattr(node.ino, "user.k", b"v")
        await h.fs.setxattr(node.ino, NS + "cache_control", b"no-cache")
        assert h.store.calls["copy"] == 0
        assert h.store.calls["put"] == 0
        assert await get(h, node, NS + "content_type") == "application/json"
        await h.fs.flush(fh)
        await h.fs.release(fh)
        info = await h.head("new.json")
        assert info.metadata["k"] == "v"
        assert info.system["cache_control"] == "no-cache"
        assert info.content_type == "application/json"
        assert h.store.calls["copy"] == 0

    run_fs(body, writeback_delay=5.0)


def test_object_fields(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        node = await h.write_file("page.html", b"<p>")
        await h.settle()
        node = await h.lookup("page.html")
        info = await h.head("page.html")
        assert await get(h, node, NS + "etag") == info.etag
        assert await get(h, node, NS + "version_id") == info.version_id
        assert await get(h, node, NS + "size") == "3"
        assert await get(h, node, NS + "storage_class") == "STANDARD"
        assert (await get(h, node, NS + "last_modified")).endswith("Z")
        assert await get(h, node, NS + "content_type") == "text/html"
        assert await get(h, node, NS + "upload_state") == "clean"
        heads = h.store.calls["head"]
        # listed: what a copy carries (rsync -X removes listed names its source lacks, cp -a
        # copies them); the read-only fields and the control ones are read by name only
        # (and the type, text/html, is the one guessed from the name, which a copy guesses too)
        assert await h.fs.listxattr(node.ino) == []
        assert h.store.calls["head"] == heads  # no checksums asked for a listing
        for field in ("etag", "version_id", "last_modified", "storage_class", "size"):
            assert await errno_of(h.fs.setxattr(node.ino, NS + field, b"x")) == errno.EPERM
            assert await errno_of(h.fs.removexattr(node.ino, NS + field)) == errno.EPERM
        for field in ("upload_state", "pid", "status"):
            assert await errno_of(h.fs.removexattr(node.ino, NS + field)) == errno.EPERM
        assert await errno_of(h.fs.getxattr(node.ino, NS + "url")) == errno.EOPNOTSUPP

    run_fs(body)


def test_system_headers(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("a.bin", b"x")
        await h.settle()
        values = {
            "content_type": "text/csv; charset=utf-8",
            "cache_control": "max-age=60",
            "content_encoding": "identity",
            "content_disposition": 'attachment; filename="a.csv"',
            "content_language": "en",
            "expires": "2030-01-02T03:04:05Z",
        }
        for field, value in values.items():
            await h.fs.setxattr(node.ino, NS + field, value.encode())
        info = await h.head("a.bin")
        assert info.content_type == values["content_type"]
        assert info.system["cache_control"] == "max-age=60"
        assert info.system["content_disposition"] == 'attachment; filename="a.csv"'
        assert info.system["expires"] == "Wed, 02 Jan 2030 03:04:05 GMT"  # an HTTP date
        assert await get(h, node, NS + "expires") == "Wed, 02 Jan 2030 03:04:05 GMT"
        assert set(await h.fs.listxattr(node.ino)) == {NS + f for f in values}
        # removing the Content-Type goes back to the type guessed from the name
        await h.fs.removexattr(node.ino, NS + "content_type")
        await h.fs.removexattr(node.ino, NS + "cache_control")
        info = await h.head("a.bin")
        assert info.content_type == "application/octet-stream"
        assert "cache_control" not in info.system
        assert await errno_of(h.fs.getxattr(node.ino, NS + "cache_control")) == errno.ENODATA
        assert await errno_of(h.fs.removexattr(node.ino, NS + "cache_control")) == errno.ENODATA
        # the guessed type is not listed (a copy guesses it again from its name), and removing
        # it again succeeds without a request
        left = {NS + f for f in values if f not in ("content_type", "cache_control")}
        assert set(await h.fs.listxattr(node.ino)) == left
        copies = h.store.calls["copy"]
        await h.fs.removexattr(node.ino, NS + "content_type")
        assert h.store.calls["copy"] == copies
        assert await get(h, node, NS + "content_type") == "application/octet-stream"

    run_fs(body)


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("user.a b", b"v", errno.EINVAL),  # not a header token
        ("user.a:b", b"v", errno.EINVAL),
        ("user.é", b"v", errno.EINVAL),
        ("user.k", b"line\nbreak", errno.EINVAL),
        ("user.k", b"\xff\xfe", errno.EINVAL),  # not UTF-8
        ("user.k", b"trailing ", errno.EINVAL),  # HTTP would drop the blank
        ("user.k", b"x" * 3000, errno.E2BIG),
        ("user.mode", b"33188", errno.EPERM),  # what chmod sets
        (NS + "etag", b"x", errno.EPERM),
        (NS + "nonsense", b"x", errno.EINVAL),
        (NS + "content_type", b"not a type", errno.EINVAL),
        (NS + "content_type", b"", errno.EINVAL),
        (NS + "expires", b"tomorrow", errno.EINVAL),
        (NS + "content_language", "fr-ç".encode(), errno.EINVAL),  # headers are ASCII
        ("security.selinux", b"x", errno.EOPNOTSUPP),
        ("trusted.x", b"x", errno.EOPNOTSUPP),
    ],
)
def test_refusals(run_fs: RunFs, name: str, value: bytes, code: int) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x")
        await h.settle()
        await h.fs.setxattr(node.ino, "user.keep", b"1")
        before = dict((await h.head("f")).metadata)
        copies = h.store.calls["copy"]
        assert await errno_of(h.fs.setxattr(node.ino, name, value)) == code
        assert h.store.calls["copy"] == copies  # nothing sent
        assert dict((await h.head("f")).metadata) == before
        assert dict(node.metadata) == before  # the node is as it was

    run_fs(body)


@pytest.mark.parametrize(
    "name", ["security.selinux", "security.capability", "trusted.x", "system.posix_acl_access"]
)
def test_names_outside_user_are_unsupported_to_read_and_cost_no_request(
    run_fs: RunFs, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """EOPNOTSUPP, not ENODATA: `ls -l` then stops asking for the whole file system. Setting
    one is expected too (`cp -a` sets an ACL on every file it copies): no INFO line."""

    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x")
        await h.settle()
        heads = h.store.calls["head"]
        assert await errno_of(h.fs.getxattr(node.ino, name)) == errno.EOPNOTSUPP
        assert await errno_of(h.fs.removexattr(node.ino, name)) == errno.EOPNOTSUPP
        assert await errno_of(h.fs.setxattr(node.ino, name, b"v")) == errno.EOPNOTSUPP
        assert await errno_of(h.fs.setxattr(ROOT_INO, name, b"v")) == errno.EOPNOTSUPP
        assert h.store.calls["head"] == heads

    caplog.set_level(logging.INFO, logger="bucketfs")
    run_fs(body)
    assert not [r for r in caplog.records if name in r.getMessage()]


def test_metadata_limit_counts_every_key(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x")
        await h.settle()
        await h.fs.setxattr(node.ino, "user.a", b"x" * 1500)
        assert await errno_of(h.fs.setxattr(node.ino, "user.b", b"y" * 600)) == errno.E2BIG
        await h.fs.setxattr(node.ino, "user.b", b"y" * 100)
        assert (await h.head("f")).metadata["b"] == "y" * 100

    run_fs(body)


def test_a_failed_change_leaves_the_node_as_it_was(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"x")
        await h.settle()
        await h.fs.getattr(node.ino)
        await h.put("f", b"changed by another client")
        code = await errno_of(h.fs.setxattr(node.ino, "user.k", b"v"))
        assert code == errno.ESTALE  # the copy is conditional on the ETag we knew
        assert "k" not in node.metadata
        assert await h.body("f") == b"changed by another client"

    run_fs(body, attr_timeout=60.0)


def test_directories(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("d/inner", b"x")  # a directory without a marker
        d = await h.lookup("d")
        assert await h.fs.listxattr(d.ino) == []
        code = await errno_of(h.fs.removexattr(d.ino, NS + "content_type"))
        assert code == errno.ENODATA  # no object to have a type
        await h.fs.setxattr(d.ino, "user.project", b"apollo")
        marker = await h.head("d/")
        assert marker.metadata["project"] == "apollo"
        assert h.store.calls["copy"] == 0  # a marker is written again, never copied
        assert await get(h, d, "user.project") == "apollo"
        assert await h.fs.listxattr(d.ino) == ["user.project"]  # the type is the default
        await h.fs.removexattr(d.ino, "user.project")
        assert "project" not in (await h.head("d/")).metadata
        puts = h.store.calls["put"]
        await h.fs.removexattr(d.ino, NS + "content_type")  # the default already: no request
        assert h.store.calls["put"] == puts

    run_fs(body)


def test_bucket_root(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        root = h.fs.table.root
        # the control attributes and the bucket's settings are read by name, never listed
        assert await h.fs.listxattr(ROOT_INO) == []
        assert await errno_of(h.fs.getxattr(ROOT_INO, NS + "region")) == errno.ENODATA  # none
        assert await get(h, root, NS + "versioning") == "Off"
        await h.fs.setxattr(ROOT_INO, NS + "versioning", b"enabled")
        assert await h.store.get_versioning(BUCKET) == "Enabled"
        assert await get(h, root, NS + "versioning") == "Enabled"
        assert await errno_of(h.fs.setxattr(ROOT_INO, NS + "versioning", b"Off")) == errno.EINVAL
        assert await errno_of(h.fs.setxattr(ROOT_INO, NS + "pid", b"1")) == errno.EPERM
        assert await errno_of(h.fs.removexattr(ROOT_INO, NS + "versioning")) == errno.EPERM

    run_fs(body)


def test_buckets_of_an_all_buckets_mount(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.store.create_bucket("other")
        bucket = await h.fs.lookup(ROOT_INO, "other")
        assert NS + "versioning" not in await h.fs.listxattr(ROOT_INO)
        assert await get(h, bucket, NS + "versioning") == "Off"

    run_fs(body, bucket=None)


def test_read_only_mount(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x")
        node = await h.lookup("f")
        assert await errno_of(h.fs.setxattr(node.ino, "user.k", b"v")) == errno.EROFS

    run_fs(body, read_only=True)


def test_presigned_url(run_fs: RunFs, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str, int, str | None]] = []

    def presign(
        self: CountingBackend, bucket: str, key: str, expires: int, *, version_id: str | None = None
    ) -> str:
        asked.append((bucket, key, expires, version_id))
        return f"http://127.0.0.1/{bucket}/{key}?sig"

    monkeypatch.setattr(CountingBackend, "presign", presign)

    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"pending")
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert NS + "url" not in await h.fs.listxattr(node.ino)  # only when asked for
        # a pending upload is sent first: the URL serves what was written
        assert await get(h, node, NS + "url") == f"http://127.0.0.1/{BUCKET}/f?sig"
        assert await h.store.get(BUCKET, "f") == b"pending"
        assert asked[-1] == (BUCKET, "f", 120, None)
        d = await h.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
        assert await errno_of(h.fs.getxattr(d.ino, NS + "url")) == errno.ENODATA

    run_fs(body, url_ttl=120, writeback_delay=60.0)


def test_new_files_get_a_guessed_content_type(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for name, expected in [
            ("a.txt", "text/plain"),
            ("b.png", "image/png"),
            ("c", "application/octet-stream"),
        ]:
            await h.write_file(name, b"x")
            assert (await h.head(name)).content_type == expected
        opts = WriteOptions(content_type="text/x-mine")
        await h.store.put(BUCKET, "mine.txt", b"x", opts)
        node = await h.lookup("mine.txt")
        assert await get(h, node, NS + "content_type") == "text/x-mine"

    run_fs(body)
