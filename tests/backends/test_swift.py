"""What only the Swift backend does, against the session's real Swift (and a few pure checks).

Token refresh on 401, Static Large Objects and the cleanup of their segments, TempURL, bulk
delete, credentials from the environment, the status mapping, `swift://` options. Keystone v3
has no server here: its request and catalog handling is checked against a mock transport only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2 as httpx
import pytest
import trio

from bucketfs.app.options import build_config, parse_source
from bucketfs.backends.swift import client as swift_client
from bucketfs.backends.swift.auth import (
    AuthResult,
    KeystoneV3Auth,
    TokenAuth,
    V1Auth,
    auth_from_env,
)
from bucketfs.backends.swift.backend import SwiftBackend
from bucketfs.backends.swift.client import HANDLED_STATUSES, error_class
from bucketfs.errors import (
    AccessDenied,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    ConfigError,
    InvalidRequest,
    NotFound,
    NotSupported,
    PreconditionFailed,
    Transient,
)
from bucketfs.types import WriteOptions
from tests.support.contract import run_with
from tests.support.swift_fixtures import make_swift
from tests.support.swift_server import KEY, KEY2, USER, USER2, SwiftServer

Body = Callable[[str], Awaitable[None]]


def run(backend: SwiftBackend, body: Body) -> None:
    run_with(backend, body)


async def segment_names(backend: SwiftBackend, bucket: str) -> list[str]:
    try:
        page = await backend.list_page(f"{bucket}_segments", delimiter=None)
    except BucketNotFound:
        return []
    return [o.key for o in page.objects]


async def upload_slo(
    backend: SwiftBackend, bucket: str, key: str, parts: list[bytes], opts: WriteOptions | None
) -> str:
    upload = await backend.create_multipart(bucket, key, opts)
    etags = [
        (n, await backend.upload_part(bucket, key, upload, n, data))
        for n, data in enumerate(parts, start=1)
    ]
    return (await backend.complete_multipart(bucket, key, upload, etags)).etag


class CountingAuth:
    """V1Auth that counts how often it was asked for a token."""

    def __init__(self, inner: V1Auth) -> None:
        self.inner = inner
        self.calls = 0
        self.auth_url = inner.auth_url
        self.renewable = True

    async def authenticate(self, client: httpx.AsyncClient) -> AuthResult:
        self.calls += 1
        return await self.inner.authenticate(client)


# --- pure ---------------------------------------------------------------------------------------


def test_every_handled_status_has_a_class_with_errno() -> None:
    for status in sorted(HANDLED_STATUSES | {300, 418, 599}):
        for container_level in (False, True):
            cls = error_class(status, container_level=container_level)
            assert issubclass(cls, BackendError)
            assert isinstance(cls.errno, int)
    assert error_class(404) is NotFound
    assert error_class(404, container_level=True) is BucketNotFound
    assert error_class(409, container_level=True) is BucketNotEmpty
    assert error_class(412) is PreconditionFailed
    assert error_class(401) is AccessDenied
    for status in (408, 422, 429, 498, 500, 503, 507):
        assert error_class(status) is Transient
    assert error_class(501) is InvalidRequest
    assert error_class(413) is InvalidRequest


def test_credentials_from_env() -> None:
    v1 = auth_from_env({"ST_AUTH": "http://a/auth/v1.0/", "ST_USER": "u:s", "ST_KEY": "k"})
    assert v1 == V1Auth("http://a/auth/v1.0", "u:s", "k")
    assert "k" not in repr(v1.auth_url)
    v3 = auth_from_env(
        {
            "OS_AUTH_URL": "https://ks/v3",
            "OS_USERNAME": "alice",
            "OS_PASSWORD": "pw",
            "OS_PROJECT_NAME": "demo",
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_REGION_NAME": "RegionTwo",
            "OS_INTERFACE": "internal",
        }
    )
    assert isinstance(v3, KeystoneV3Auth)
    assert (v3.username, v3.project_name, v3.region, v3.interface) == (
        "alice",
        "demo",
        "RegionTwo",
        "internal",
    )
    appcred = auth_from_env(
        {
            "OS_AUTH_URL": "https://ks",
            "OS_APPLICATION_CREDENTIAL_ID": "id1",
            "OS_APPLICATION_CREDENTIAL_SECRET": "s",
            "OS_ENDPOINT_TYPE": "publicURL",
        }
    )
    assert isinstance(appcred, KeystoneV3Auth)
    assert appcred.request_body() == {
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {"secret": "s", "id": "id1"},
            }
        }
    }
    assert appcred.interface == "public"
    token = auth_from_env({"OS_STORAGE_URL": "http://s/v1/AUTH_x", "OS_AUTH_TOKEN": "t"})
    assert token == TokenAuth("http://s/v1/AUTH_x", "t")
    assert not token.renewable
    # -o auth_url replaces the environment's URL; ST_AUTH_VERSION=3 means Keystone
    assert auth_from_env(
        {"ST_AUTH": "http://a", "ST_USER": "u", "ST_KEY": "k"}, auth_url="http://b"
    ) == V1Auth("http://b", "u", "k")
    with pytest.raises(ConfigError, match="no Swift credentials"):
        auth_from_env({"ST_AUTH": "http://a", "ST_USER": "u", "ST_AUTH_VERSION": "1.0"})
    with pytest.raises(ConfigError, match="Keystone v2"):
        auth_from_env(
            {
                "OS_AUTH_URL": "http://k",
                "OS_USERNAME": "u",
                "OS_PASSWORD": "p",
                "OS_IDENTITY_API_VERSION": "2",
            }
        )


def test_keystone_v3_with_a_mock_transport() -> None:
    """No Keystone here: the request and the catalog handling against a mock transport."""
    seen: list[dict[str, object]] = []
    catalog = [
        {"type": "identity", "endpoints": [{"interface": "public", "url": "http://ks"}]},
        {
            "type": "object-store",
            "endpoints": [
                {"interface": "public", "region_id": "One", "url": "http://one/v1/AUTH_p/"},
                {"interface": "internal", "region_id": "Two", "url": "http://int/v1/AUTH_p"},
                {"interface": "public", "region_id": "Two", "url": "http://two/v1/AUTH_p"},
            ],
        },
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = keystone(request)  # re-streamed: the backend reads bodies raw, in chunks
        return httpx.Response(
            answer.status_code, headers=answer.headers, stream=httpx.ByteStream(answer.content)
        )

    def keystone(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/auth/tokens":
            body = json.loads(request.content)
            seen.append(body)
            if body["auth"]["identity"]["password"]["user"]["password"] != "pw":
                return httpx.Response(401)
            return httpx.Response(
                201,
                headers={"X-Subject-Token": "tok"},
                json={"token": {"catalog": catalog, "expires_at": "2099-01-01T00:00:00Z"}},
            )
        assert request.headers["x-auth-token"] == "tok"
        return httpx.Response(204, headers={"X-Account-Object-Count": "0"})

    auth = KeystoneV3Auth(
        "http://ks:5000",
        username="alice",
        password="pw",
        project_name="demo",
        project_domain_name="Default",
        region="Two",
    )

    async def main() -> None:
        backend = SwiftBackend(auth, transport=httpx.MockTransport(handler))
        try:
            assert await backend.usage() == (0, 0)
            assert backend._session is not None
            assert backend._session.storage_url == "http://two/v1/AUTH_p"
        finally:
            await backend.aclose()
        wrong = SwiftBackend(
            KeystoneV3Auth("http://ks:5000/v3", username="alice", password="no"),
            transport=httpx.MockTransport(handler),
        )
        try:
            with pytest.raises(AccessDenied):
                await wrong.usage()
        finally:
            await wrong.aclose()

    trio.run(main)
    assert seen[0] == {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "alice", "domain": {"id": "default"}, "password": "pw"}
                },
            },
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}},
        }
    }
    assert auth.storage_url(catalog) == "http://two/v1/AUTH_p"
    with pytest.raises(ConfigError, match="no public object-store endpoint in region 'Three'"):
        KeystoneV3Auth("http://ks", region="Three").storage_url(catalog)


def test_swift_sources_and_options(tmp_path: Path) -> None:
    assert parse_source("swift://").bucket is None
    source = parse_source("swift://my container/a/b")
    assert (source.scheme, source.bucket, source.prefix) == ("swift", "my container", "a/b/")
    env = {"ST_AUTH": "http://a/auth/v1.0", "ST_USER": "u", "ST_KEY": "secret"}
    cfg = build_config("swift://c", str(tmp_path), ["create_tempurl_key"], False, env=env)
    assert cfg.auth_url == "http://a/auth/v1.0"
    assert cfg.create_tempurl_key
    other = build_config("swift://c", str(tmp_path), ["auth_url=http://b/auth"], False, env=env)
    assert other.auth_url == "http://b/auth"
    assert other.cache_dir != cfg.cache_dir
    assert build_config("swift://c", str(tmp_path), ["region=R"], False, env={}).region == "R"
    with pytest.raises(ConfigError, match="applies to swift:// sources only"):
        build_config("s3://bucket", str(tmp_path), ["auth_url=http://x"], False, env={})
    with pytest.raises(ConfigError, match="not accepted"):
        build_config("swift://c", str(tmp_path), ["password=x"], False, env={})
    with pytest.raises(ConfigError, match="not a valid container name"):
        parse_source("swift://" + "x" * 257)


# --- against the real Swift ---------------------------------------------------------------------


def test_env_credentials(swift: SwiftServer) -> None:
    backend = SwiftBackend.from_env(swift.env(), retry_deadline=10.0)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "k", b"v")
        assert await backend.get(bucket, "k") == b"v"

    run(backend, body)


def test_token_refresh_on_401(swift: SwiftServer) -> None:
    auth = CountingAuth(V1Auth(swift.auth_url, USER, KEY))
    backend = SwiftBackend(auth, retry_deadline=10.0)

    async def body(bucket: str) -> None:
        await backend.put(bucket, "k", b"v")
        assert auth.calls == 1
        swift.flush_tokens()  # the server forgot every token: the next request gets 401
        assert await backend.get(bucket, "k") == b"v"
        assert auth.calls == 2
        # a token the server never issued, while many requests are in flight: one new auth
        assert backend._session is not None
        backend._session = AuthResult(backend._session.storage_url, "AUTH_tkbogus")
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(backend.head, bucket, "k")
        assert auth.calls == 3
        # a token past its announced expiry is renewed before use, without a 401
        backend._session = AuthResult(backend._session.storage_url, "AUTH_tkbogus", 1.0)
        await backend.head(bucket, "k")
        assert auth.calls == 4

    run(backend, body)


def test_refused_credentials(swift: SwiftServer) -> None:
    url, _ = swift.auth()
    for auth in (V1Auth(swift.auth_url, USER, "wrong"), TokenAuth(url, "AUTH_tkbogus")):
        refused = SwiftBackend(auth, retry_deadline=5.0)

        async def body(bucket: str, refused: SwiftBackend = refused) -> None:
            with pytest.raises(AccessDenied):
                await refused.list_buckets()

        run_with(refused, body, create_bucket=False)
    # another account's container is not ours
    other = make_swift(swift)

    async def foreign(bucket: str) -> None:
        mine = SwiftBackend(V1Auth(swift.auth_url, USER2, KEY2), retry_deadline=5.0)
        try:
            with pytest.raises((AccessDenied, BucketNotFound)):
                await mine.list_page(bucket)
        finally:
            await mine.aclose()

    run_with(other, foreign)


def test_slo_upload_overwrite_and_delete(swift: SwiftServer) -> None:
    backend = make_swift(swift)
    parts = [os.urandom(1000), os.urandom(1000), os.urandom(10)]
    opts = WriteOptions(metadata={"mode": "33188"}, content_type="application/x-big")

    async def body(bucket: str) -> None:
        etag = await upload_slo(backend, bucket, "big", parts, opts)
        segments = await segment_names(backend, bucket)
        assert len(segments) == 3
        assert all(s.startswith("big/") for s in segments)
        info = await backend.head(bucket, "big")
        assert (info.size, info.etag, info.metadata) == (2010, etag, {"mode": "33188"})
        page = await backend.list_page(bucket)
        assert [(o.key, o.size, o.etag) for o in page.objects] == [("big", 2010, etag)]
        assert [b.name for b in await backend.list_buckets()].count(f"{bucket}_segments") == 0
        # conditional and ranged reads of an SLO
        assert (
            await backend.get(bucket, "big", 995, 1005, if_match=etag) == b"".join(parts)[995:1005]
        )
        with pytest.raises(PreconditionFailed):
            await backend.get(bucket, "big", if_match="0" * 32)
        # overwriting with a plain object deletes the old segments
        await backend.put(bucket, "big", b"small now")
        assert await segment_names(backend, bucket) == []
        # a new SLO over an SLO: only the new segments remain
        await upload_slo(backend, bucket, "big", parts, None)
        first = await segment_names(backend, bucket)
        await upload_slo(backend, bucket, "big", parts[:2], None)
        second = await segment_names(backend, bucket)
        assert len(second) == 2
        assert not set(first) & set(second)
        assert await backend.get(bucket, "big") == parts[0] + parts[1]
        # a copy of an SLO is a plain object; the copy onto the SLO's key cleans up
        await backend.copy(bucket, "big", "copy")
        assert await backend.get(bucket, "copy") == parts[0] + parts[1]
        await backend.copy(bucket, "copy", "big")
        assert await segment_names(backend, bucket) == []
        # delete and delete_many take the segments along
        await upload_slo(backend, bucket, "one", parts, None)
        await upload_slo(backend, bucket, "two", parts, None)
        await backend.delete(bucket, "one")
        assert all(s.startswith("two/") for s in await segment_names(backend, bucket))
        await backend.delete_many(bucket, ["two", "copy", "big", "missing"])
        assert await segment_names(backend, bucket) == []
        assert (await backend.list_page(bucket)).objects == ()
        await backend.delete_bucket(bucket)
        names = [b.name for b in await backend.list_buckets()]
        assert bucket not in names
        assert f"{bucket}_segments" not in names

    run(backend, body)


def test_slo_nested_manifests_and_abort(swift: SwiftServer) -> None:
    backend = make_swift(swift, segments_per_manifest=2)
    parts = [bytes([i]) * 100 for i in range(5)]

    async def body(bucket: str) -> None:
        await upload_slo(backend, bucket, "nested", parts, None)
        assert await backend.get(bucket, "nested") == b"".join(parts)
        assert await backend.get(bucket, "nested", 150, 450) == b"".join(parts)[150:450]
        assert (await backend.head(bucket, "nested")).size == 500
        await backend.delete(bucket, "nested")
        assert await segment_names(backend, bucket) == []

        upload = await backend.create_multipart(bucket, "gone")
        await backend.upload_part(bucket, "gone", upload, 1, b"a")
        await backend.upload_part(bucket, "gone", upload, 2, b"b")
        assert len(await segment_names(backend, bucket)) == 2
        await backend.abort_multipart(bucket, "gone", upload)
        assert await segment_names(backend, bucket) == []
        with pytest.raises(NotFound):
            await backend.complete_multipart(bucket, "gone", upload, [(1, "x")])
        with pytest.raises(InvalidRequest):
            await backend.create_multipart(bucket, "k", WriteOptions(metadata={"a_b": "1"}))

    run(backend, body)


def test_upload_part_copy_is_a_server_side_ranged_copy(swift: SwiftServer) -> None:
    backend = make_swift(swift)
    data = os.urandom(3000)

    async def body(bucket: str) -> None:
        src = await backend.put(bucket, "src", data)
        upload = await backend.create_multipart(bucket, "dst")
        etag1 = await backend.upload_part_copy(
            bucket, "dst", upload, 1, "src", 1000, 3000, if_match=src.etag
        )
        etag2 = await backend.upload_part_copy(bucket, "dst", upload, 2, "src", 0, 1000)
        with pytest.raises(PreconditionFailed):
            await backend.upload_part_copy(
                bucket, "dst", upload, 3, "src", 0, 10, if_match="0" * 32
            )
        with pytest.raises(NotFound):
            await backend.upload_part_copy(bucket, "dst", upload, 3, "nothing", 0, 10)
        await backend.complete_multipart(bucket, "dst", upload, [(1, etag1), (2, etag2)])
        assert await backend.get(bucket, "dst") == data[1000:] + data[:1000]

    run(backend, body)


def test_versioned_slo_keeps_its_segments(swift: SwiftServer) -> None:
    backend = make_swift(swift)
    parts = [b"a" * 100, b"b" * 100]

    async def body(bucket: str) -> None:
        await backend.set_versioning(bucket, True)
        await upload_slo(backend, bucket, "v", parts, None)
        await backend.put(bucket, "v", b"plain")
        await backend.delete(bucket, "v")
        assert len(await segment_names(backend, bucket)) == 2
        page = await backend.list_versions_page(bucket, delimiter=None)
        old = [v for v in page.versions if v.size == 200]
        assert len(old) == 1
        assert old[0].version_id is not None
        assert await backend.get(bucket, "v", version_id=old[0].version_id) == b"".join(parts)

    run(backend, body)


def test_versions_paginate_past_common_prefixes(swift: SwiftServer) -> None:
    backend = make_swift(swift)

    async def body(bucket: str) -> None:
        await backend.set_versioning(bucket, True)
        for key in ("a", "d/1", "d/2", "e/1", "z"):
            await backend.put(bucket, key, b"1")
            await backend.put(bucket, key, b"2")
        seen: list[str] = []
        key_marker = version_marker = None
        while True:
            page = await backend.list_versions_page(
                bucket, key_marker=key_marker, version_marker=version_marker, max_keys=1
            )
            assert len(page.versions) + len(page.prefixes) == 1
            seen.extend([v.key for v in page.versions] + list(page.prefixes))
            if page.next_key_marker is None:
                break
            key_marker, version_marker = page.next_key_marker, page.next_version_marker
        assert seen == ["a", "a", "d/", "e/", "z", "z"]

    run(backend, body)


def test_tempurl(swift: SwiftServer) -> None:
    backend = make_swift(swift)

    async def body(bucket: str) -> None:
        key = "temp url/ü+%#?.txt"
        first = await backend.put(bucket, key, b"one")
        url = backend.presign(bucket, key, 60)
        assert "temp_url_sig=" in url
        response = await trio.to_thread.run_sync(httpx.get, url)
        assert (response.status_code, response.content) == (200, b"one")
        # only GET, only this object, only until it expires
        put = await trio.to_thread.run_sync(lambda: httpx.put(url, content=b"x"))
        assert put.status_code == 401
        other = url.replace("temp%20url", "temp%20urm")
        assert (await trio.to_thread.run_sync(httpx.get, other)).status_code == 401
        expired = backend.presign(bucket, key, -10)
        assert (await trio.to_thread.run_sync(httpx.get, expired)).status_code == 401
        # TempURL drops every other query parameter: no URL of an older version
        with pytest.raises(NotSupported, match="old version"):
            backend.presign(bucket, key, 60, version_id="1700000000.00000")
        assert first.etag

    run(backend, body)


def test_tempurl_key_is_set_only_when_allowed(swift: SwiftServer) -> None:
    """test2's account has no key until a backend with create_tempurl_key sets one."""

    def as_test2(create: bool) -> SwiftBackend:
        return SwiftBackend(V1Auth(swift.auth_url, USER2, KEY2), create_tempurl_key=create)

    refused = as_test2(False)

    async def without(bucket: str) -> None:
        await refused.put(bucket, "k", b"v")
        with pytest.raises(NotSupported, match="Temp-URL key"):
            refused.presign(bucket, "k", 60)

    run(refused, without)
    allowed = as_test2(True)

    async def with_key(bucket: str) -> None:
        await allowed.put(bucket, "k", b"v")
        response = await trio.to_thread.run_sync(httpx.get, allowed.presign(bucket, "k", 60))
        assert response.content == b"v"

    run(allowed, with_key)


def test_bulk_delete_batches(swift: SwiftServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swift_client, "DELETE_BATCH", 7)
    backend = make_swift(swift)
    keys = [f"k/{i:02d} ü#?" for i in range(20)]

    async def body(bucket: str) -> None:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(backend.put, bucket, key, b"x")
        await backend.put(bucket, "keep", b"x")
        await backend.delete_many(bucket, [*keys, "never-there"])
        page = await backend.list_page(bucket, delimiter=None)
        assert [o.key for o in page.objects] == ["keep"]
        with pytest.raises(BucketNotEmpty):
            await backend.delete_bucket(bucket)

    run(backend, body)


def test_metadata_and_usage(swift: SwiftServer) -> None:
    backend = make_swift(swift)

    async def body(bucket: str) -> None:
        with pytest.raises(InvalidRequest, match="cannot be stored in Swift"):
            await backend.put(bucket, "k", b"v", WriteOptions(metadata={"with_underscore": "1"}))
        value = "ünïcödé ✓"
        await backend.put(bucket, "k", b"12345", WriteOptions(metadata={"note": value}))
        assert (await backend.head(bucket, "k")).metadata == {"note": value}
        assert await backend.usage(bucket) == (5, 1)
        before = time.time()
        info = (await backend.list_page(bucket)).objects[0]
        head = await backend.head(bucket, "k")
        assert abs(info.last_modified - head.last_modified) < 0.001
        assert before - 60 < head.last_modified < before + 60

    run(backend, body)


def test_s3api_conditional_puts_fall_back_to_a_head(swift: SwiftServer) -> None:
    """s3api answers 501 to `If-Match` (it has `If-None-Match: *`): the S3 backend learns it
    from the first one, then checks that condition with a HEAD. Exclusive puts stay (the
    deferred-deletes wrapper says what the store says)."""
    from bucketfs.backends.s3.backend import S3Backend
    from bucketfs.cache.deletes import DeferredDeletes
    from tests.support.contract import make_s3api

    backend = make_s3api(swift)
    wrapped = DeferredDeletes(backend)
    assert isinstance(backend, S3Backend)
    assert wrapped.exclusive_put

    async def body(bucket: str) -> None:
        first = await backend.put(bucket, "k", b"one", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await backend.put(bucket, "k", b"two", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await backend.put(bucket, "k", b"two", if_match="0" * 32)
        assert backend._unconditional == {"If-Match"}
        with pytest.raises(NotFound):
            await backend.put(bucket, "gone", b"two", if_match=first.etag)
        await backend.put(bucket, "k", b"two", if_match=first.etag)
        assert await backend.get(bucket, "k") == b"two"
        assert backend.exclusive_put
        assert wrapped.exclusive_put
        backend.exclusive_put = False  # as after a 501 to If-None-Match
        assert not wrapped.exclusive_put

    run_with(backend, body)
