"""The optional object capabilities of `base.Backend` against every store of the contract suite:
checksums (`head_checksums`, and the checksum every S3 upload carries), upload URLs
(`presign_upload`) and per-object expiry (`expiry`, `system["delete_at"]`).

What each store does differs on purpose (a store lacking a capability answers as `base.py`
says), so each test states per store what it must see.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime

import httpx2 as httpx
import pytest
import trio

from bucketfs.backends.base import MIN_PART_SIZE, Backend
from bucketfs.backends.s3 import client as s3_client
from bucketfs.backends.s3.backend import S3Backend
from bucketfs.backends.swift.backend import SwiftBackend
from bucketfs.errors import NotFound, NotSupported, Transient
from bucketfs.types import WriteOptions
from tests.support.contract import Runner, make_s3, make_s3api, run_with
from tests.support.servers import SeaweedServer


def kind(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["backend"])


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_checksums_kept(run: Runner, backend: Backend, request: pytest.FixtureRequest) -> None:
    """SeaweedFS keeps the SHA-256 every upload sends (also the composite of a multipart upload
    with a copied part); Swift's ETag is the MD5 of a plain object; the others keep none."""
    data = os.urandom(1000)
    part1 = os.urandom(MIN_PART_SIZE)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "small", data)
        info = await backend.head_checksums(bucket, "small")
        plain = await backend.head(bucket, "small")
        assert plain.checksums == {} or kind(request) == "swift"
        upload = await backend.create_multipart(bucket, "big")
        etag1 = await backend.upload_part(bucket, "big", upload, 1, part1)
        etag2 = await backend.upload_part_copy(bucket, "big", upload, 2, "small", 0, len(data))
        await backend.complete_multipart(bucket, "big", upload, [(1, etag1), (2, etag2)])
        big = await backend.head_checksums(bucket, "big")
        assert await backend.get(bucket, "big") == part1 + data
        if kind(request) == "s3":
            assert info.checksums == {"sha256": hashlib.sha256(data).hexdigest()}
            digests = hashlib.sha256(part1).digest() + hashlib.sha256(data).digest()
            assert big.checksums == {"sha256": hashlib.sha256(digests).hexdigest() + "-2"}
        elif kind(request) == "swift":
            assert info.checksums == {"md5": hashlib.md5(data).hexdigest()}
            assert big.checksums == {}  # an SLO's ETag is not the MD5 of its content
        else:  # memory, local, Swift's s3api (it checks what it is sent, keeps nothing)
            assert info.checksums == {}
            assert big.checksums == {}

    run(body)


@pytest.mark.parametrize("store", ["s3", "swift-s3api"])
def test_s3_checksum_is_verified(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server checks the checksum an upload carries: a wrong one is refused (and retried,
    as a body corrupted on the way would be, until the deadline) and nothing is stored."""
    if store == "s3":
        backend = make_s3(request.getfixturevalue("seaweed"), retry_deadline=1.0)
    else:
        backend = make_s3api(request.getfixturevalue("swift"), retry_deadline=1.0)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "good", b"checked")
        monkeypatch.setattr(s3_client, "checksum_value", lambda _d: "A" * 43 + "=")
        with pytest.raises(Transient, match="BadDigest"):
            await backend.put(bucket, "bad", b"checked")
        upload = await backend.create_multipart(bucket, "parts")
        with pytest.raises(Transient, match="BadDigest"):
            await backend.upload_part(bucket, "parts", upload, 1, b"part")
        await backend.abort_multipart(bucket, "parts", upload)
        monkeypatch.undo()
        with pytest.raises(NotFound):
            await backend.head(bucket, "bad")
        assert await backend.get(bucket, "good") == b"checked"

    run_with(backend, body)


def test_s3_without_checksums(seaweed: SeaweedServer) -> None:
    """`checksums=False` (a store that refuses the headers) sends none: nothing is kept."""
    backend = make_s3(seaweed, checksums=False)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "k", b"plain")
        assert (await backend.head_checksums(bucket, "k")).checksums == {}
        upload = await backend.create_multipart(bucket, "m")
        etag = await backend.upload_part(bucket, "m", upload, 1, b"one part")
        await backend.complete_multipart(bucket, "m", upload, [(1, etag)])
        assert await backend.get(bucket, "m") == b"one part"

    run_with(backend, body)


def test_presign_upload(run: Runner, backend: Backend) -> None:
    """A plain HTTP PUT through the URL stores the object (new or replaced)."""

    async def body(bucket: str) -> None:
        key = "up loaded/ü+%.txt"
        if not isinstance(backend, (S3Backend, SwiftBackend)):
            with pytest.raises(NotSupported):
                backend.presign_upload(bucket, key, 60)
            return
        await backend.head_bucket(bucket)  # Swift: authenticated, Temp-URL key known
        for content in (b"first upload", b"second, longer upload"):
            url = backend.presign_upload(bucket, key, 60)
            response = await trio.to_thread.run_sync(
                lambda u=url, c=content: httpx.put(u, content=c)
            )
            assert response.status_code in (200, 201), response.text
            assert await backend.get(bucket, key) == content
        # the URL is for PUT only: it does not download
        url = backend.presign_upload(bucket, key, 60)
        response = await trio.to_thread.run_sync(httpx.get, url)
        assert response.status_code in (401, 403)

    run(body)


def test_expiry(run: Runner, backend: Backend, request: pytest.FixtureRequest) -> None:
    """Swift keeps `delete_at` through PUT, a metadata change (POST) and a copy; a POST
    without it cancels the deletion; at that time the object is gone. The others have none."""
    if not isinstance(backend, SwiftBackend):
        assert not backend.expiry
        return
    assert backend.expiry

    async def body(bucket: str) -> None:
        later = iso(time.time() + 3600)
        opts = WriteOptions(metadata={"k": "v"}, system={"delete_at": later})
        await backend.put(bucket, "x", b"expiring", opts)
        assert (await backend.head(bucket, "x")).system["delete_at"] == later
        sooner = iso(time.time() + 1800)
        await backend.copy(bucket, "x", "x", WriteOptions(system={"delete_at": sooner}))
        assert (await backend.head(bucket, "x")).system["delete_at"] == sooner
        await backend.copy(bucket, "x", "y")  # a plain copy keeps it
        assert (await backend.head(bucket, "y")).system["delete_at"] == sooner
        await backend.copy(bucket, "x", "x", WriteOptions(metadata={"k": "w"}))
        assert "delete_at" not in (await backend.head(bucket, "x")).system
        # a time already past is not sent (Swift would refuse the write)
        await backend.put(bucket, "z", b"z", WriteOptions(system={"delete_at": iso(1000)}))
        assert "delete_at" not in (await backend.head(bucket, "z")).system
        soon = time.time() + 2
        await backend.put(bucket, "soon", b"s", WriteOptions(system={"delete_at": iso(soon)}))
        assert (await backend.head(bucket, "soon")).system["delete_at"] == iso(soon)
        await trio.sleep(max(0.0, soon - time.time()) + 1.5)
        with pytest.raises(NotFound):  # the object server hides it, expirer or not
            await backend.head(bucket, "soon")

    run(body)
