"""The contract of `base.Backend`, one test body for every store (memory, local, SeaweedFS S3,
Swift, and S3 through Swift's s3api).

A behaviour a backend lacks fails here; nothing is skipped per backend except what only one
store can do (wrong credentials, an unreachable endpoint), which lives at the end, s3 only.
"""

from __future__ import annotations

import os
import time

import httpx2 as httpx
import pytest
import trio

from bucketfs.backends.base import MIN_PART_SIZE, Backend, Body
from bucketfs.backends.s3.backend import S3Backend, S3Credentials
from bucketfs.backends.swift.backend import SwiftBackend
from bucketfs.errors import (
    AccessDenied,
    BucketNotEmpty,
    BucketNotFound,
    NotFound,
    NotSupported,
    PreconditionFailed,
    Transient,
    Unreachable,
)
from bucketfs.types import WriteOptions
from tests.support.contract import Runner, make_s3, run_with
from tests.support.servers import SeaweedServer, free_port, unique_bucket

ODD_KEYS = [
    "with space",
    "plus+sign",
    "percent%20sign%",
    "hash#and?question",
    "ünïcödé/日本語 ファイル",
    "tilde~star*quote'(paren)!$&,;=:@",
    "deep/er/and/deeper/file.txt",
    "emoji 🎉.bin",
]


async def list_all(
    backend: Backend,
    bucket: str,
    prefix: str = "",
    delimiter: str | None = None,
    max_keys: int = 1000,
) -> tuple[list[str], list[str]]:
    """Every object key and common prefix under `prefix`, page by page."""
    keys: list[str] = []
    prefixes: list[str] = []
    token: str | None = None
    while True:
        page = await backend.list_page(
            bucket, prefix, delimiter=delimiter, token=token, max_keys=max_keys
        )
        assert len(page.objects) + len(page.prefixes) <= max_keys
        keys.extend(o.key for o in page.objects)
        prefixes.extend(page.prefixes)
        if page.next_token is None:
            return keys, prefixes
        token = page.next_token


async def put_many(backend: Backend, bucket: str, keys: list[str], data: bytes = b"x") -> None:
    limiter = trio.CapacityLimiter(16)

    async def one(key: str) -> None:
        async with limiter:
            await backend.put(bucket, key, data)

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)


def utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=str.encode)


# --- objects -----------------------------------------------------------------------------


def test_put_head_get_roundtrip(run: Runner, backend: Backend) -> None:
    opts = WriteOptions(
        metadata={"Mtime": "1700000000.5", "mode": "33188", "uid": "1000"},
        content_type="text/plain; charset=utf-8",
        system={
            "cache_control": "no-cache",
            "content_disposition": 'attachment; filename="x.txt"',
            "content_language": "de",
            "content_encoding": "gzip",
        },
    )
    data = b"not really gzip \x00\xff" * 100

    async def body(bucket: str) -> None:
        before = time.time()
        result = await backend.put(bucket, "dir/file.txt", data, opts)
        assert result.etag
        assert '"' not in result.etag
        info = await backend.head(bucket, "dir/file.txt")
        assert info.key == "dir/file.txt"
        assert info.size == len(data)
        assert info.etag == result.etag
        assert before - 300 < info.last_modified < time.time() + 300
        assert info.metadata == {"mtime": "1700000000.5", "mode": "33188", "uid": "1000"}
        assert info.content_type == "text/plain; charset=utf-8"
        assert info.system == {
            "cache_control": "no-cache",
            "content_disposition": 'attachment; filename="x.txt"',
            "content_language": "de",
            "content_encoding": "gzip",
        }
        assert not info.is_delete_marker
        # a Content-Encoding of the object is never undone on the way
        assert await backend.get(bucket, "dir/file.txt") == data
        # overwrite replaces data and metadata
        await backend.put(bucket, "dir/file.txt", b"new")
        info = await backend.head(bucket, "dir/file.txt")
        assert info.size == 3
        assert info.metadata == {}
        assert await backend.get(bucket, "dir/file.txt") == b"new"

    run(body)


def test_empty_object(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        await backend.put(bucket, "empty", b"")
        assert (await backend.head(bucket, "empty")).size == 0
        assert await backend.get(bucket, "empty") == b""
        assert await backend.get(bucket, "empty", 0, 10) == b""
        assert await backend.get(bucket, "empty", 5) == b""

    run(body)


def test_ranged_get(run: Runner, backend: Backend) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes

    async def body(bucket: str) -> None:
        await backend.put(bucket, "r", data)
        assert await backend.get(bucket, "r") == data
        assert await backend.get(bucket, "r", 10, 20) == data[10:20]
        assert await backend.get(bucket, "r", 500) == data[500:]
        assert await backend.get(bucket, "r", 0, 1) == data[:1]
        assert await backend.get(bucket, "r", 1000, 5000) == data[1000:]
        assert await backend.get(bucket, "r", 1023) == data[1023:]
        assert await backend.get(bucket, "r", 1024) == b""
        assert await backend.get(bucket, "r", 5000, 6000) == b""
        assert await backend.get(bucket, "r", 7, 7) == b""

    run(body)


def test_get_stream(run: Runner, backend: Backend) -> None:
    data = os.urandom(300_000)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "s", data)
        async with backend.get_stream(bucket, "s") as chunks:
            assert b"".join([c async for c in chunks]) == data
        async with backend.get_stream(bucket, "s", 1000, 250_000) as chunks:
            assert b"".join([c async for c in chunks]) == data[1000:250_000]
        async with backend.get_stream(bucket, "s", 299_000) as chunks:
            assert b"".join([c async for c in chunks]) == data[299_000:]
        async with backend.get_stream(bucket, "s", 400_000) as chunks:
            assert b"".join([c async for c in chunks]) == b""
        etag = (await backend.head(bucket, "s")).etag
        async with backend.get_stream(bucket, "s", 0, 10, if_match=etag) as chunks:
            assert b"".join([c async for c in chunks]) == data[:10]
        with pytest.raises(PreconditionFailed):
            async with backend.get_stream(bucket, "s", if_match="0" * 32) as chunks:
                pass
        with pytest.raises(NotFound):
            async with backend.get_stream(bucket, "missing") as chunks:
                pass

    run(body)


def test_get_body(run: Runner, backend: Backend) -> None:
    """`get_body` read into buffers of any size gives the bytes of the range (on S3 over plain
    HTTP a worker thread receives them); the connection serves the next request."""
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def read_all(body: Body, size: int) -> bytes:
        buf = memoryview(bytearray(size))
        out = bytearray()
        while n := await body.readinto(buf):
            out += buf[:n]
        return bytes(out)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "b", data)
        etag = (await backend.head(bucket, "b")).etag
        for start, end, size in [(0, None, 1 << 20), (1000, 2_500_000, 7777), (3 << 20, None, 100)]:
            async with backend.get_body(bucket, "b", start, end, if_match=etag) as got:
                assert await read_all(got, size) == data[start:end]
        async with backend.get_body(bucket, "b", len(data) + 5) as got:
            assert await read_all(got, 10) == b""
        with pytest.raises(PreconditionFailed):
            async with backend.get_body(bucket, "b", if_match="0" * 32):
                pass
        assert await backend.get(bucket, "b", 5, 10) == data[5:10]

    run(body)


def test_conditional_requests(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        first = await backend.put(bucket, "c", b"one")
        assert await backend.get(bucket, "c", if_match=first.etag) == b"one"
        with pytest.raises(PreconditionFailed):
            await backend.get(bucket, "c", if_match="0" * 32)
        with pytest.raises(PreconditionFailed):
            await backend.put(bucket, "c", b"two", if_none_match=True)
        assert await backend.get(bucket, "c") == b"one"
        with pytest.raises(PreconditionFailed):
            await backend.put(bucket, "c", b"two", if_match="0" * 32)
        second = await backend.put(bucket, "c", b"two", if_match=first.etag)
        assert second.etag != first.etag
        await backend.put(bucket, "new", b"fresh", if_none_match=True)
        assert await backend.get(bucket, "new") == b"fresh"

    run(body)


def test_head_and_get(run: Runner, backend: Backend) -> None:
    """Where a store has it, one request says what a HEAD says and brings the first bytes."""

    async def body(bucket: str) -> None:
        await backend.put(bucket, "small", b"abcdef", WriteOptions({"colour": "blue"}))
        head = await backend.head(bucket, "small")
        for up_to, want in ((4, b"abcd"), (100, b"abcdef")):
            got = await backend.head_and_get(bucket, "small", up_to=up_to)
            if got is None:
                return  # the store has no such request: callers send a HEAD
            info, data = got
            assert data == want
            assert (info.etag, info.size, info.metadata) == (head.etag, 6, head.metadata)
        await backend.put(bucket, "empty", b"")
        got = await backend.head_and_get(bucket, "empty", up_to=4)
        assert got is None or got[0].size == 0
        with pytest.raises(NotFound):
            await backend.head_and_get(bucket, "missing", up_to=4)

    run(body)


def test_missing_key(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        with pytest.raises(NotFound):
            await backend.head(bucket, "missing")
        with pytest.raises(NotFound):
            await backend.get(bucket, "missing")
        with pytest.raises(NotFound):
            await backend.get(bucket, "missing", 10, 20)

    run(body)


def test_missing_bucket(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        with pytest.raises(BucketNotFound):
            await backend.head_bucket(bucket)
        with pytest.raises(BucketNotFound):
            await backend.list_page(bucket)
        with pytest.raises(NotFound):
            await backend.get(bucket, "key")

    run(body, create_bucket=False)


def test_odd_keys_round_trip(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        for key in ODD_KEYS:
            await backend.put(bucket, key, key.encode())
        for key in ODD_KEYS:
            assert (await backend.head(bucket, key)).size == len(key.encode())
            assert await backend.get(bucket, key) == key.encode()
        keys, _ = await list_all(backend, bucket)
        assert keys == utf8_sorted(ODD_KEYS)
        keys, prefixes = await list_all(backend, bucket, "ünïcödé/", "/")
        assert keys == ["ünïcödé/日本語 ファイル"]
        assert prefixes == []
        _, prefixes = await list_all(backend, bucket, "", "/")
        assert prefixes == ["deep/", "ünïcödé/"]
        await backend.copy(bucket, ODD_KEYS[3], ODD_KEYS[2] + "copy")
        assert await backend.get(bucket, ODD_KEYS[2] + "copy") == ODD_KEYS[3].encode()
        for key in ODD_KEYS:
            await backend.delete(bucket, key)
        keys, _ = await list_all(backend, bucket)
        assert keys == [ODD_KEYS[2] + "copy"]

    run(body)


# --- listing -----------------------------------------------------------------------------


def test_list_with_delimiter(run: Runner, backend: Backend) -> None:
    keys = ["a", "b/1", "b/2", "c/d/e", "d", "b/sub/x", "b/", "e-", "e/f"]

    async def body(bucket: str) -> None:
        await put_many(backend, bucket, keys)
        page = await backend.list_page(bucket)
        assert [o.key for o in page.objects] == ["a", "d", "e-"]
        assert list(page.prefixes) == ["b/", "c/", "e/"]
        assert page.next_token is None
        for obj in page.objects:
            assert obj.size == 1
            assert obj.etag
            assert '"' not in obj.etag
            assert obj.last_modified > 0
        page = await backend.list_page(bucket, "b/")
        assert [o.key for o in page.objects] == ["b/", "b/1", "b/2"]
        assert list(page.prefixes) == ["b/sub/"]
        page = await backend.list_page(bucket, "b/", delimiter=None)
        assert [o.key for o in page.objects] == ["b/", "b/1", "b/2", "b/sub/x"]
        assert page.prefixes == ()
        page = await backend.list_page(bucket, "nothing/")
        assert page.objects == ()
        assert page.prefixes == ()
        assert page.next_token is None

    run(body)


def test_list_pagination(run: Runner, backend: Backend) -> None:
    flat = [f"k{i:03d}" for i in range(45)]
    nested = [f"dir{i:02d}/x" for i in range(15)]

    async def body(bucket: str) -> None:
        await put_many(backend, bucket, flat + nested)
        keys, prefixes = await list_all(backend, bucket, max_keys=7)
        assert keys == utf8_sorted(flat + nested)
        assert prefixes == []
        keys, prefixes = await list_all(backend, bucket, delimiter="/", max_keys=7)
        assert keys == flat
        assert prefixes == [f"dir{i:02d}/" for i in range(15)]
        keys, prefixes = await list_all(backend, bucket, "k02", max_keys=3)
        assert keys == [f"k{i:03d}" for i in range(20, 30)]

    run(body)


# --- copy, multipart, delete -------------------------------------------------------------


def test_copy(run: Runner, backend: Backend) -> None:
    opts = WriteOptions(
        metadata={"mtime": "1"}, content_type="text/x-a", system={"cache_control": "max-age=1"}
    )
    new_opts = WriteOptions(metadata={"mtime": "2", "extra": "yes"}, content_type="text/x-b")

    async def body(bucket: str) -> None:
        src = await backend.put(bucket, "src", b"payload", opts)
        kept = await backend.copy(bucket, "src", "kept")
        assert kept.etag == src.etag
        info = await backend.head(bucket, "kept")
        assert info.metadata == {"mtime": "1"}
        assert info.content_type == "text/x-a"
        assert info.system == {"cache_control": "max-age=1"}
        assert await backend.get(bucket, "kept") == b"payload"

        await backend.copy(bucket, "src", "replaced", new_opts)
        info = await backend.head(bucket, "replaced")
        assert info.metadata == {"mtime": "2", "extra": "yes"}
        assert info.content_type == "text/x-b"
        assert info.system == {}
        assert await backend.get(bucket, "replaced") == b"payload"

        # onto itself without options: a no-op that keeps everything
        await backend.copy(bucket, "kept", "kept")
        info = await backend.head(bucket, "kept")
        assert info.metadata == {"mtime": "1"}
        assert info.content_type == "text/x-a"
        assert await backend.get(bucket, "kept") == b"payload"

        # onto itself: replace the metadata in place
        await backend.copy(bucket, "src", "src", new_opts)
        info = await backend.head(bucket, "src")
        assert info.metadata == {"mtime": "2", "extra": "yes"}
        assert info.content_type == "text/x-b"
        assert await backend.get(bucket, "src") == b"payload"

        with pytest.raises(PreconditionFailed):
            await backend.copy(bucket, "src", "other", if_match="0" * 32)
        with pytest.raises(NotFound):
            await backend.copy(bucket, "missing", "other")
        keys, _ = await list_all(backend, bucket)
        assert keys == ["kept", "replaced", "src"]

    run(body)


def test_multipart(run: Runner, backend: Backend) -> None:
    part1 = os.urandom(MIN_PART_SIZE)
    src = os.urandom(MIN_PART_SIZE + 1000)
    opts = WriteOptions(metadata={"mode": "33188"}, content_type="application/x-test")

    async def body(bucket: str) -> None:
        await backend.put(bucket, "src", src)
        upload = await backend.create_multipart(bucket, "big", opts)
        etag1 = await backend.upload_part(bucket, "big", upload, 1, part1)
        etag2 = await backend.upload_part_copy(bucket, "big", upload, 2, "src", 0, MIN_PART_SIZE)
        etag3 = await backend.upload_part_copy(
            bucket, "big", upload, 3, "src", MIN_PART_SIZE, len(src)
        )
        result = await backend.complete_multipart(
            bucket, "big", upload, [(1, etag1), (2, etag2), (3, etag3)]
        )
        assert result.etag
        info = await backend.head(bucket, "big")
        assert info.size == len(part1) + len(src)
        assert info.etag == result.etag
        assert info.metadata == {"mode": "33188"}
        assert info.content_type == "application/x-test"
        assert await backend.get(bucket, "big", MIN_PART_SIZE - 10, MIN_PART_SIZE + 10) == (
            part1[-10:] + src[:10]
        )
        assert await backend.get(bucket, "big") == part1 + src

        aborted = await backend.create_multipart(bucket, "gone")
        await backend.upload_part(bucket, "gone", aborted, 1, b"tiny")
        await backend.abort_multipart(bucket, "gone", aborted)
        with pytest.raises(NotFound):
            await backend.head(bucket, "gone")
        keys, _ = await list_all(backend, bucket)
        assert keys == ["big", "src"]

    run(body)


def test_delete(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        await backend.put(bucket, "x", b"1")
        await backend.delete(bucket, "x")
        with pytest.raises(NotFound):
            await backend.head(bucket, "x")
        await backend.delete(bucket, "x")
        await backend.delete(bucket, "never-existed")

    run(body)


def test_delete_many(run: Runner, backend: Backend) -> None:
    keys = [f"d/{i:02d}" for i in range(30)] + ["keep"]

    async def body(bucket: str) -> None:
        await put_many(backend, bucket, keys)
        await backend.delete_many(bucket, [*keys[:30], "d/missing"])
        remaining, _ = await list_all(backend, bucket)
        assert remaining == ["keep"]
        await backend.delete_many(bucket, [])

    run(body)


# --- versions ----------------------------------------------------------------------------


def test_versioning(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        assert backend.supports_versions
        assert await backend.get_versioning(bucket) == "Off"
        await backend.set_versioning(bucket, True)
        assert await backend.get_versioning(bucket) == "Enabled"
        first = await backend.put(bucket, "v/file", b"old")
        await trio.sleep(0.01)
        second = await backend.put(bucket, "v/file", b"new")
        assert first.version_id
        assert second.version_id
        assert first.version_id != second.version_id

        page = await backend.list_versions_page(bucket, "v/", delimiter="/")
        assert [(v.key, v.version_id, v.is_latest) for v in page.versions] == [
            ("v/file", second.version_id, True),
            ("v/file", first.version_id, False),
        ]
        assert not any(v.is_delete_marker for v in page.versions)
        assert [v.size for v in page.versions] == [3, 3]
        assert page.next_key_marker is None

        assert await backend.get(bucket, "v/file", version_id=first.version_id) == b"old"
        old = await backend.head(bucket, "v/file", version_id=first.version_id)
        assert old.version_id == first.version_id
        assert old.size == 3

        await backend.delete(bucket, "v/file")
        with pytest.raises(NotFound):
            await backend.head(bucket, "v/file")
        page = await backend.list_versions_page(bucket, "v/")
        assert len(page.versions) == 3
        marker = page.versions[0]
        assert marker.is_delete_marker
        assert marker.is_latest
        assert marker.key == "v/file"
        assert [v.version_id for v in page.versions[1:]] == [second.version_id, first.version_id]
        assert not any(v.is_latest for v in page.versions[1:])
        assert await backend.get(bucket, "v/file", version_id=second.version_id) == b"new"
        keys, _ = await list_all(backend, bucket)
        assert keys == []

        await backend.set_versioning(bucket, False)
        assert await backend.get_versioning(bucket) == "Suspended"

    run(body)


def test_versions_pagination(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        await backend.set_versioning(bucket, True)
        for i in range(3):
            for key in ("a", "b"):
                await backend.put(bucket, key, f"{key}{i}".encode())
        seen: list[tuple[str, bool]] = []
        key_marker: str | None = None
        version_marker: str | None = None
        while True:
            page = await backend.list_versions_page(
                bucket,
                delimiter=None,
                key_marker=key_marker,
                version_marker=version_marker,
                max_keys=4,
            )
            assert len(page.versions) <= 4
            seen.extend((v.key, v.is_latest) for v in page.versions)
            if page.next_key_marker is None:
                break
            key_marker, version_marker = page.next_key_marker, page.next_version_marker
        assert seen == [
            ("a", True),
            ("a", False),
            ("a", False),
            ("b", True),
            ("b", False),
            ("b", False),
        ]

    run(body)


# --- buckets -----------------------------------------------------------------------------


def test_buckets(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        await backend.head_bucket(bucket)
        names = [b.name for b in await backend.list_buckets()]
        assert bucket in names
        other = unique_bucket()
        await backend.create_bucket(other)
        await backend.put(other, "obj", b"1")
        with pytest.raises(BucketNotEmpty):
            await backend.delete_bucket(other)
        await backend.delete(other, "obj")
        await backend.delete_bucket(other)
        with pytest.raises(BucketNotFound):
            await backend.head_bucket(other)
        assert other not in [b.name for b in await backend.list_buckets()]

    run(body)


def test_space_and_bucket_metadata(run: Runner, backend: Backend) -> None:
    """The optional capabilities of a bucket as a whole: the stores that state usage (all but
    S3) count the current objects; those that keep bucket metadata (Swift, memory) set and
    remove keys one at a time, keeping the others; the rest refuse with NotSupported."""

    async def body(bucket: str) -> None:
        await backend.put(bucket, "a", b"12345")
        await backend.put(bucket, "d/b", b"x")
        space = await backend.space(bucket)
        if isinstance(backend, S3Backend):
            assert space is None
        else:
            assert space is not None
            assert (space.bytes_used, space.object_count) == (6, 2)
            assert space.quota_bytes is None
        metadata = await backend.bucket_metadata(bucket)
        if metadata is None:
            with pytest.raises(NotSupported):
                await backend.set_bucket_metadata(bucket, {"team": "ops"})
            return
        assert metadata == {}
        await backend.set_bucket_metadata(bucket, {"Team": "ops", "quota-bytes": "100"})
        await backend.set_bucket_metadata(bucket, {"owner": "ünï"})
        assert await backend.bucket_metadata(bucket) == {
            "team": "ops",
            "quota-bytes": "100",
            "owner": "ünï",
        }
        space = await backend.space(bucket)
        assert space is not None
        assert space.quota_bytes == 100
        await backend.set_bucket_metadata(bucket, {"team": None})
        assert await backend.bucket_metadata(bucket) == {"quota-bytes": "100", "owner": "ünï"}

    run(body)


# --- presign -----------------------------------------------------------------------------


def test_presign(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        key = "pre signed/ü+%.txt"
        await backend.put(bucket, key, b"presigned body")
        if not isinstance(backend, (S3Backend, SwiftBackend)):
            with pytest.raises(NotSupported):
                backend.presign(bucket, key, 60)
            return
        url = backend.presign(bucket, key, 60)
        response = await trio.to_thread.run_sync(httpx.get, url)
        assert response.status_code == 200
        assert response.content == b"presigned body"

    run(body)


# --- s3 only -----------------------------------------------------------------------------


def test_s3_wrong_credentials(seaweed: SeaweedServer) -> None:
    backend = make_s3(seaweed, credentials=S3Credentials(seaweed.access_key, "wrong-secret"))

    async def body(bucket: str) -> None:
        with pytest.raises(AccessDenied):
            await backend.list_buckets()
        with pytest.raises(AccessDenied):
            await backend.put(bucket, "x", b"1")

    run_with(backend, body, create_bucket=False)


def test_s3_unreachable(seaweed: SeaweedServer) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    backend = S3Backend(
        endpoint, "us-east-1", credentials=S3Credentials("a", "b"), retry_deadline=1.5
    )

    async def body(bucket: str) -> None:
        started = time.monotonic()
        with pytest.raises(Transient) as info:
            await backend.head_bucket(bucket)
        assert isinstance(info.value, Unreachable)
        assert endpoint in str(info.value)
        assert time.monotonic() - started < 5

    run_with(backend, body, create_bucket=False)
