"""The OpenStack Swift backend: `base.Backend` over the Swift object API with httpx2.

Owns the HTTP conversation with a Swift proxy: authentication (through `swift_auth`), token
refresh, addressing, JSON listings, the translation of answers into `bucketfs.types` values, and
the mapping of the S3-shaped protocol onto Swift (buckets are containers). Invariants:

- every request goes through `_request` (one attempt = token + send + classify) inside
  `retry.retry_call`; statuses become errors only in `error_class`, transport failures in
  `http.transport_error`;
- a 401 makes one new authentication and one immediate new attempt (a token expired or was
  revoked); a second 401 is `AccessDenied`; a token whose expiry time passed is renewed before
  it is used; concurrent requests share one authentication (`_auth_lock`);
- a key is sent URL-encoded once (`s3.quote_key`); object data is sent with its MD5 as `ETag`,
  so Swift refuses (422, retried) a body corrupted on the way; bodies are read raw;
- large objects are Static Large Objects (SLO, see `swift_slo`): segments live in the container
  `<container>_segments` under `<key>/<upload id>/`; the segments of an SLO that is overwritten
  or deleted are deleted with it, except when the object or its container is versioned (an old
  version may still need them);
- logs carry method, container, key, status and duration at DEBUG, never a token, a key of the
  account or a TempURL signature.

Swift lacks a conditional PUT on `If-Match`: `put(if_match=...)` compares with a HEAD just
before the PUT (a window of one round trip in which another writer can slip in).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import httpx2
import trio

from bucketfs.backends.base import MAX_PUT_SIZE, Backend
from bucketfs.backends.http import (
    RANGED_OK,
    no_chunks,
    ranged_chunks,
    ranged_content,
    transport_error,
)
from bucketfs.backends.retry import retry_call
from bucketfs.backends.s3.backend import quote_key
from bucketfs.backends.swift import slo
from bucketfs.backends.swift.auth import Authenticator, AuthResult, auth_from_env
from bucketfs.backends.swift.values import (
    listing_info,
    listing_time,
    md5_hex,
    object_info,
    put_result,
    query_string,
    quote_name,
    strip_etag,
    version_id,
    write_headers,
)
from bucketfs.errors import (
    AccessDenied,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    NotSupported,
    PreconditionFailed,
    Transient,
)
from bucketfs.types import (
    BucketInfo,
    ListPage,
    ObjectInfo,
    PutResult,
    VersionPage,
    WriteOptions,
)

log = logging.getLogger(__name__)

#: paths per bulk-delete request (Swift's default `max_deletes_per_request` is 10,000)
DELETE_BATCH = 1000
#: Swift's default `container_listing_limit`
MAX_LISTING = 10_000
#: renew a token this many seconds before the expiry the auth service announced
_RENEW_EARLY = 60.0

#: every status `error_class` maps on purpose; all others fall back by their hundreds
HANDLED_STATUSES = frozenset(
    {400, 401, 403, 404, 405, 408, 409, 411, 412, 413, 416, 422, 429, 498, 499}
    | {500, 501, 502, 503, 504, 507}
)


def error_class(status: int, *, container_level: bool = False) -> type[BackendError]:
    """The one mapping of a Swift status to an error class. `container_level`: the request
    addressed a container, so 404 is `BucketNotFound` and 409 (DELETE) `BucketNotEmpty`."""
    if status in (401, 403):
        return AccessDenied
    if status == 404:
        return BucketNotFound if container_level else NotFound
    if status == 412:
        return PreconditionFailed
    if status == 409:
        # a container that still holds objects; on an object, a write racing another (retry)
        return BucketNotEmpty if container_level else Transient
    # 408 request timeout, 422 body did not match its ETag, 429/498 rate limited,
    # 499 the proxy saw the client go away, 5xx (507: the only disk is full or unmounted)
    if status in (408, 422, 429, 498, 499) or (status >= 500 and status != 501):
        return Transient
    # 3xx, 400 bad name/metadata, 405, 411, 413 too large, 416, other 4xx, 501
    return InvalidRequest


class SwiftBackend(Backend):
    """An OpenStack Swift account reached over HTTP(S); containers are the buckets."""

    supports_versions = True
    #: Swift's documented bound of a static large object with its default settings:
    #: max_manifest_segments (1,000) segments of max_file_size (5 GiB)
    max_object_size = slo.MAX_MANIFEST_SEGMENTS * MAX_PUT_SIZE

    def __init__(
        self,
        auth: Authenticator,
        *,
        max_connections: int = 32,
        retry_deadline: float = 60.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        create_tempurl_key: bool = False,
        leave_segments: bool = False,
        segments_per_manifest: int = slo.MAX_MANIFEST_SEGMENTS,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        """`create_tempurl_key`: set a random Temp-URL key on the account when it has none
        (needs an account admin; see `presign`); `leave_segments`: never look for (nor delete)
        the segments of an SLO that a PUT or COPY replaces (saves one HEAD per write);
        `segments_per_manifest`: the cluster's `max_manifest_segments` (bigger uploads nest
        manifests); `transport` replaces the network (unit tests)."""
        self._auth = auth
        self.retry_deadline = retry_deadline
        self.create_tempurl_key = create_tempurl_key
        self.leave_segments = leave_segments
        self.segments_per_manifest = segments_per_manifest
        self.description = f"swift {auth.auth_url}"
        self._client = httpx2.AsyncClient(
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
            headers={"Accept-Encoding": "identity"},
            follow_redirects=False,
            transport=transport,
        )
        self._session: AuthResult | None = None
        self._auth_lock = trio.Lock()
        self._tempurl_key: str | None = None
        #: uploads started here and not yet completed or aborted, by upload id
        self._uploads: dict[str, slo.Upload] = {}
        #: segments containers known to exist
        self._segment_containers: set[str] = set()

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        auth_url: str | None = None,
        region: str | None = None,
        **kwargs: Any,
    ) -> SwiftBackend:
        """A backend with the credentials of the environment (`swift_auth.auth_from_env`)."""
        return cls(auth_from_env(env, auth_url=auth_url, region=region), **kwargs)

    # --- authentication ----------------------------------------------------------------

    async def _current_session(self) -> AuthResult:
        session = self._session
        if session is not None and not _expiring(session):
            return session
        async with self._auth_lock:
            session = self._session
            if session is None or _expiring(session):
                session = await self._authenticate()
            return session

    async def _renew(self, stale: AuthResult) -> None:
        """Forget `stale` after a 401, unless another task already renewed it."""
        async with self._auth_lock:
            if self._session is stale:
                self._session = None

    async def _authenticate(self) -> AuthResult:
        started = time.monotonic()
        try:
            session = await self._auth.authenticate(self._client)
        except httpx2.TransportError as exc:
            raise transport_error(exc, self._auth.auth_url, "authentication") from exc
        log.debug("authenticated at %s in %.3fs", self._auth.auth_url, time.monotonic() - started)
        self._session = session
        await self._load_tempurl_key(session)
        return session

    async def _load_tempurl_key(self, session: AuthResult) -> None:
        """Remember the account's Temp-URL key; set a new one if allowed and there is none.
        Best effort: a user without account access simply gets no presigned URLs."""
        headers = {"X-Auth-Token": session.token}
        try:
            response = await self._client.head(session.storage_url, headers=headers)
            if response.status_code >= 300:
                log.debug("HEAD account -> %d: no Temp-URL key", response.status_code)
                return
            key = response.headers.get("x-account-meta-temp-url-key") or response.headers.get(
                "x-account-meta-temp-url-key-2"
            )
            if not key and self.create_tempurl_key:
                key = secrets.token_urlsafe(32)
                response = await self._client.post(
                    session.storage_url,
                    headers={**headers, "X-Account-Meta-Temp-URL-Key": key},
                )
                if response.status_code >= 300:
                    log.warning(
                        "could not set a Temp-URL key on the account (HTTP %d)",
                        response.status_code,
                    )
                    return
                log.info("set a new Temp-URL key on the Swift account (create_tempurl_key)")
            self._tempurl_key = key or None
        except httpx2.TransportError as exc:
            log.debug("HEAD account failed: %r", exc)

    # --- plumbing ----------------------------------------------------------------------

    def _url(
        self,
        storage_url: str,
        container: str | None,
        key: str | None,
        query: Mapping[str, str | None],
    ) -> str:
        url = storage_url.rstrip("/")
        if container is not None:
            url += "/" + quote_name(container)
        if key is not None:
            url += "/" + quote_key(key)
        return f"{url}?{query_string(query)}" if query else url

    async def _request(
        self,
        method: str,
        container: str | None,
        key: str | None = None,
        *,
        query: Mapping[str, str | None] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        ok: frozenset[int] = frozenset({200, 201, 202, 204, 206}),
        container_level: bool = False,
        stream: bool = False,
        check: Callable[[bytes], None] | None = None,
    ) -> tuple[httpx2.Response, bytes]:
        """One Swift call with retries: the response (open when `stream`) and its raw body.
        `check` inspects a successful body inside the attempt (errors it raises are retried
        when `Transient`)."""
        what = f"{method} {container or ''}/{key or ''}"
        encoded = [(n.encode("ascii"), v.encode("utf-8")) for n, v in (headers or {}).items()]

        async def attempt() -> tuple[httpx2.Response, bytes]:
            for renewed in (False, True):
                session = await self._current_session()
                url = self._url(session.storage_url, container, key, query or {})
                request = self._client.build_request(
                    method,
                    url,
                    headers=[*encoded, (b"X-Auth-Token", session.token.encode("ascii"))],
                    content=body,
                )
                response, content = await self._send(request, what, ok, stream)
                status = response.status_code
                if status == 401 and not renewed and self._auth.renewable:
                    log.debug("%s -> 401: authenticating again", what)
                    await self._renew(session)
                    continue
                if status not in ok:
                    cls = error_class(status, container_level=container_level)
                    detail = content[:200].decode("utf-8", "replace").strip()
                    raise cls(f"{what}: HTTP {status}" + (f" ({detail})" if detail else ""))
                if check is not None:
                    check(content)
                return response, content
            raise AssertionError("unreachable")

        return await retry_call(attempt, deadline=self.retry_deadline, what=what)

    async def _send(
        self, request: httpx2.Request, what: str, ok: frozenset[int], stream: bool
    ) -> tuple[httpx2.Response, bytes]:
        started = time.monotonic()
        try:
            response = await self._client.send(request, stream=True)
            try:
                if stream and response.status_code in ok:
                    return response, b""
                content = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                if not stream or response.status_code not in ok:
                    await response.aclose()
        except httpx2.TransportError as exc:
            log.debug("%s failed after %.3fs: %r", what, time.monotonic() - started, exc)
            raise transport_error(exc, self.description, what) from exc
        log.debug("%s -> %d in %.3fs", what, response.status_code, time.monotonic() - started)
        return response, content

    async def _json(self, container: str | None, query: Mapping[str, str | None]) -> Any:
        _, content = await self._request(
            "GET",
            container,
            query={"format": "json", **query},
            container_level=container is not None,
        )
        if not content:
            return []
        try:
            return json.loads(content)
        except ValueError as exc:
            raise Transient(f"GET {container or ''}: listing is not JSON ({exc})") from None

    # --- buckets (containers) ----------------------------------------------------------

    async def list_buckets(self) -> list[BucketInfo]:
        """Every container, except the segments containers of listed ones (`_is_segments_of`)."""
        items: list[Mapping[str, Any]] = []
        marker: str | None = None
        while True:
            query = {"limit": str(MAX_LISTING)} | ({"marker": marker} if marker else {})
            page = await self._json(None, query)
            items.extend(page)
            if len(page) < MAX_LISTING:
                break
            marker = str(page[-1]["name"])
        names = {str(item["name"]) for item in items}
        return [
            BucketInfo(str(item["name"]), listing_time(item.get("last_modified")))
            for item in items
            if not _is_segments_of(str(item["name"]), names)
        ]

    async def head_bucket(self, bucket: str) -> None:
        await self._request("HEAD", bucket, container_level=True)

    async def create_bucket(self, bucket: str) -> None:
        """PUT the container (an existing one is kept as it is: Swift answers 202)."""
        await self._request("PUT", bucket, container_level=True)

    async def delete_bucket(self, bucket: str) -> None:
        """Delete the container, then its `<name>_segments` container if that is empty."""
        await self._request("DELETE", bucket, container_level=True)
        with suppress(BucketNotFound, BucketNotEmpty):
            await self._request("DELETE", slo.segments_container(bucket), container_level=True)

    async def get_versioning(self, bucket: str) -> str:
        response, _ = await self._request("HEAD", bucket, container_level=True)
        enabled = response.headers.get("x-versions-enabled")
        if enabled is None:
            return "Off"
        return "Enabled" if enabled.lower() == "true" else "Suspended"

    async def set_versioning(self, bucket: str, enabled: bool) -> None:
        headers = {"X-Versions-Enabled": "true" if enabled else "false"}
        await self._request("POST", bucket, headers=headers, container_level=True)

    async def usage(self, bucket: str | None = None) -> tuple[int, int]:
        """(bytes used, object count) of a container, or of the account when `bucket` is None
        (the account's figures lag until the container updater ran)."""
        response, _ = await self._request("HEAD", bucket, container_level=bucket is not None)
        kind = "container" if bucket is not None else "account"
        return (
            int(response.headers.get(f"x-{kind}-bytes-used", "0")),
            int(response.headers.get(f"x-{kind}-object-count", "0")),
        )

    # --- reading -----------------------------------------------------------------------

    async def _listing(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None,
        marker: str | None,
        max_keys: int,
        extra: Mapping[str, str | None],
    ) -> tuple[list[Mapping[str, Any]], bool]:
        """Up to `max_keys` entries after `marker` and whether more follow (asks for one more)."""
        max_keys = max(1, min(max_keys, MAX_LISTING - 1))
        query: dict[str, str | None] = {"limit": str(max_keys + 1), **extra}
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = delimiter
        if marker:
            query["marker"] = marker
        items: list[Mapping[str, Any]] = await self._json(bucket, query)
        return items[:max_keys], len(items) > max_keys

    async def list_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        items, more = await self._listing(bucket, prefix, delimiter, token, max_keys, {})
        objects = tuple(listing_info(i) for i in items if "subdir" not in i)
        prefixes = tuple(str(i["subdir"]) for i in items if "subdir" in i)
        last = items[-1] if items else None
        next_token = None
        if more and last is not None:
            next_token = str(last.get("subdir") or last["name"])
        return ListPage(objects, prefixes, next_token)

    async def list_versions_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        key_marker: str | None = None,
        version_marker: str | None = None,
        max_keys: int = 1000,
    ) -> VersionPage:
        extra: dict[str, str | None] = {"versions": None}
        if key_marker and version_marker:
            extra["version_marker"] = version_marker
        max_keys = max(1, min(max_keys, MAX_LISTING - 2))
        # one more than asked: a listing resumed after a common prefix repeats it first
        items, more = await self._listing(
            bucket, prefix, delimiter, key_marker, max_keys + 1, extra
        )
        if key_marker and not version_marker and items and items[0].get("subdir") == key_marker:
            items = items[1:]
        if len(items) > max_keys:
            items, more = items[:max_keys], True
        versions = tuple(listing_info(i) for i in items if "subdir" not in i)
        prefixes = tuple(str(i["subdir"]) for i in items if "subdir" in i)
        next_key = next_version = None
        if more and items:
            last = items[-1]
            if "subdir" in last:
                next_key = str(last["subdir"])
            else:
                next_key, next_version = str(last["name"]), version_id(last.get("version_id"))
        return VersionPage(versions, prefixes, next_key, next_version)

    async def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        query = {"version-id": version_id} if version_id else None
        response, _ = await self._request("HEAD", bucket, key, query=query)
        return object_info(key, response.headers)

    async def _head_or_none(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            return await self.head(bucket, key)
        except BucketNotFound:
            raise
        except NotFound:
            return None

    def _get_args(
        self, start: int, end: int | None, if_match: str | None, version_id: str | None
    ) -> tuple[dict[str, str], dict[str, str | None]]:
        headers: dict[str, str] = {}
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            headers["If-Match"] = if_match if if_match.startswith('"') else f'"{if_match}"'
        query: dict[str, str | None] = {"version-id": version_id} if version_id else {}
        return headers, query

    async def get(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> bytes:
        if start < 0 or (end is not None and end < 0):
            raise InvalidRequest(f"negative range {start}-{end}")
        if end is not None and end <= start:
            return b""
        headers, query = self._get_args(start, end, if_match, version_id)
        response, content = await self._request(
            "GET", bucket, key, query=query, headers=headers, ok=RANGED_OK
        )
        return ranged_content(response.status_code, headers, content, start, end)

    def get_stream(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._stream(bucket, key, start, end, if_match, version_id)

    @asynccontextmanager
    async def _stream(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int | None,
        if_match: str | None,
        version_id: str | None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if end is not None and end <= start:
            yield no_chunks()
            return
        headers, query = self._get_args(start, end, if_match, version_id)
        response, _ = await self._request(
            "GET",
            bucket,
            key,
            query=query,
            headers=headers,
            ok=RANGED_OK,
            stream=True,
        )
        try:
            yield ranged_chunks(
                response, headers, start, end, self.description, f"GET {bucket}/{key}"
            )
        finally:
            await response.aclose()

    # --- writing -----------------------------------------------------------------------

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        opts: WriteOptions | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> PutResult:
        headers = write_headers(opts)
        if if_none_match:
            headers["If-None-Match"] = "*"
        old = await slo.replaced(self, bucket, key, if_match=if_match)
        headers["ETag"] = await md5_hex(data)
        response, _ = await self._request("PUT", bucket, key, headers=headers, body=data)
        await slo.drop_segments(self, old)
        return put_result(response.headers)

    async def copy(
        self,
        bucket: str,
        src_key: str,
        dst_key: str,
        opts: WriteOptions | None = None,
        *,
        src_version_id: str | None = None,
        if_match: str | None = None,
    ) -> PutResult:
        """`X-Copy-From` (`X-Fresh-Metadata` to replace metadata); onto itself a POST, which
        replaces the metadata in place, also of an SLO. The copy of an SLO is an ordinary
        object (Swift joins the segments), so it is limited to Swift's `max_file_size`."""
        if src_key == dst_key and src_version_id is None:
            info = await self.head(bucket, src_key)
            if if_match and strip_etag(if_match) != info.etag:
                raise PreconditionFailed(f"COPY {bucket}/{src_key}: ETag changed")
            if opts is not None:
                await self._request("POST", bucket, dst_key, headers=write_headers(opts))
            return PutResult(info.etag, info.version_id)
        headers = {"X-Copy-From": f"/{quote_name(bucket)}/{quote_key(src_key)}"}
        if opts is not None:
            headers["X-Fresh-Metadata"] = "true"
            headers.update(write_headers(opts))
        if if_match:
            headers["If-Match"] = if_match if if_match.startswith('"') else f'"{if_match}"'
        query = {"version-id": src_version_id} if src_version_id else None
        old = await slo.replaced(self, bucket, dst_key)
        response, _ = await self._request("PUT", bucket, dst_key, query=query, headers=headers)
        await slo.drop_segments(self, old)
        return put_result(response.headers)

    async def delete(self, bucket: str, key: str) -> None:
        """Delete the key; an SLO with its segments (unless versioned: see `swift_slo`)."""
        headers = await slo.head_raw(self, bucket, key)
        if headers is None:
            return
        await self._delete_object(bucket, key, await slo.owns_segments(self, bucket, headers))

    async def _delete_object(self, bucket: str, key: str, with_segments: bool) -> None:
        if with_segments:
            await self._request(
                "DELETE",
                bucket,
                key,
                query={"multipart-manifest": "delete"},
                headers={"Accept": "application/json"},
                check=_check_bulk,
            )
        else:
            await self._request("DELETE", bucket, key, ok=frozenset({200, 204, 404}))

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        """Bulk delete (`?bulk-delete`, up to DELETE_BATCH paths a request). When the container
        has a segments container, every key is looked at first and SLOs go with their
        segments."""
        if not keys:
            return
        plain = list(keys)
        if await slo.has_segments_container(self, bucket):
            large = set()
            for key, headers in zip(plain, await slo.head_many(self, bucket, plain), strict=True):
                if headers is not None and await slo.owns_segments(self, bucket, headers):
                    large.add(key)
            for key in sorted(large):
                await self._delete_object(bucket, key, with_segments=True)
            plain = [k for k in plain if k not in large]
        await self.bulk_delete([(bucket, k) for k in plain])

    async def bulk_delete(self, paths: Sequence[tuple[str, str]]) -> None:
        """Delete (container, key) pairs with the bulk middleware; missing ones are fine."""
        for start in range(0, len(paths), DELETE_BATCH):
            batch = paths[start : start + DELETE_BATCH]
            body = "\n".join(f"/{quote_name(c)}/{quote_key(k)}" for c, k in batch).encode()
            await self._request(
                "POST",
                None,
                query={"bulk-delete": None},
                headers={"Content-Type": "text/plain", "Accept": "application/json"},
                body=body,
                check=_check_bulk,
            )

    # --- multipart, as Static Large Objects (swift_slo) ------------------------------

    async def create_multipart(
        self, bucket: str, key: str, opts: WriteOptions | None = None
    ) -> str:
        return await slo.create_multipart(self, bucket, key, opts)

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
    ) -> str:
        return await slo.upload_part(self, bucket, key, upload_id, part_number, data)

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        src_key: str,
        start: int,
        end: int,
        *,
        src_version_id: str | None = None,
        if_match: str | None = None,
    ) -> str:
        return await slo.upload_part_copy(
            self,
            bucket,
            key,
            upload_id,
            part_number,
            src_key,
            start,
            end,
            src_version_id=src_version_id,
            if_match=if_match,
        )

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult:
        return await slo.complete_multipart(self, bucket, key, upload_id, parts)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await slo.abort_multipart(self, bucket, key, upload_id)

    # --- misc --------------------------------------------------------------------------

    def presign(self, bucket: str, key: str, expires: int, *, version_id: str | None = None) -> str:
        """A TempURL signed with HMAC-SHA256 and the account's Temp-URL key (read when the
        backend authenticates; set first if `create_tempurl_key` and the account had none).
        Only for the current version: the tempurl middleware drops every other query
        parameter, `version-id` included."""
        if version_id:
            raise NotSupported("a Swift TempURL cannot address an old version of an object")
        session, secret = self._session, self._tempurl_key
        if session is None or secret is None:
            raise NotSupported(
                "the Swift account has no Temp-URL key (set one with `swift post -m "
                "Temp-URL-Key:SECRET`, or mount with -o create_tempurl_key)"
            )
        expires_at = int(time.time()) + expires
        path = f"{urlsplit(session.storage_url).path.rstrip('/')}/{bucket}/{key}"
        signature = hmac.new(
            secret.encode(), f"GET\n{expires_at}\n{path}".encode(), hashlib.sha256
        ).hexdigest()
        query = {"temp_url_sig": signature, "temp_url_expires": str(expires_at)}
        return self._url(session.storage_url, bucket, key, dict(query))

    async def aclose(self) -> None:
        await self._client.aclose()


def _expiring(session: AuthResult) -> bool:
    return session.expires is not None and time.time() > session.expires - _RENEW_EARLY


def _is_segments_of(name: str, names: set[str]) -> bool:
    """`<name>_segments` (ours, the `swift` CLI's) or `<name>+segments` (s3api's multipart
    uploads) of a container that is listed too."""
    return any(
        name.endswith(suffix) and name.removesuffix(suffix) in names
        for suffix in ("_segments", "+segments")
    )


def _check_bulk(content: bytes) -> None:
    """The verdict inside a 200 answer of bulk delete or `multipart-manifest=delete`."""
    text = content.strip()
    if not text:
        return
    try:
        result = json.loads(text)
    except ValueError:
        raise Transient(f"bulk delete: unreadable answer {text[:100]!r}") from None
    status = str(result.get("Response Status", "200"))
    errors = [e for e in result.get("Errors", []) if not str(e[1]).startswith("404")]
    if errors:
        code = int(str(errors[0][1]).split()[0])
        cls = error_class(code)
        raise cls(f"bulk delete: {len(errors)} not deleted, first {errors[0][0]}: {errors[0][1]}")
    if not status.startswith(("2", "404")):
        cls = error_class(int(status.split()[0]))
        raise cls(f"bulk delete: {status}: {result.get('Response Body', '')}")
