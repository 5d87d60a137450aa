"""The OpenStack Swift backend: `base.Backend` over the Swift object API with httpx2.

Owns the object operations on a Swift account and the mapping of the S3-shaped protocol onto
Swift: the request path (authentication, retries, errors) is `client.py`, containers and
listings `account.py`, large objects `slo.py`. Invariants:

- object data is sent with its MD5 as `ETag`, so Swift refuses (422, retried) a body corrupted
  on the way; a `get` range is half-open and a 416 or a server ignoring `Range` are
  `http.ranged_get`'s business;
- large objects are Static Large Objects (SLO, see `slo.py`): segments live in the container
  `<container>_segments` under `<key>/<upload id>/`; the segments of an SLO that is overwritten
  or deleted are deleted with it, except when the object or its container is versioned (an old
  version may still need them);
- an object's expiry (`X-Delete-At`, `expiry`) is part of its `system` fields and sent with
  every write of its metadata: a POST replaces all of it, so one without the header cancels it.

Swift lacks a conditional PUT on `If-Match`: `put(if_match=...)` compares with a HEAD just
before the PUT (a window of one round trip in which another writer can slip in).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

from bucketfs.backends.base import MAX_PUT_SIZE, Backend
from bucketfs.backends.http import (
    RANGED_OK,
    RawResponse,
    SendGet,
    quote_key,
    quote_name,
    range_header,
    ranged_get,
    ranged_stream,
)
from bucketfs.backends.swift import slo
from bucketfs.backends.swift.account import SwiftAccount
from bucketfs.backends.swift.auth import auth_from_env
from bucketfs.backends.swift.client import check_bulk
from bucketfs.backends.swift.segments import MAX_MANIFEST_SEGMENTS
from bucketfs.backends.swift.values import (
    md5_hex,
    object_info,
    put_result,
    strip_etag,
    write_headers,
)
from bucketfs.errors import InvalidRequest, NotSupported, PreconditionFailed
from bucketfs.types import ObjectInfo, PutResult, WriteOptions


class SwiftBackend(SwiftAccount, Backend):
    """An OpenStack Swift account reached over HTTP(S); containers are the buckets."""

    supports_versions = True
    #: `X-Delete-At` (values.py)
    expiry = True
    exclusive_put = True  # If-None-Match: * (not If-Match, see above)
    copy_in_place = True  # a copy onto itself changes metadata only
    #: Swift's documented bound of a static large object with its default settings:
    #: max_manifest_segments (1,000) segments of max_file_size (5 GiB)
    max_object_size = MAX_MANIFEST_SEGMENTS * MAX_PUT_SIZE

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        auth_url: str | None = None,
        region: str | None = None,
        **kwargs: Any,
    ) -> SwiftBackend:
        """A backend with the credentials of the environment (`auth.auth_from_env`)."""
        return cls(auth_from_env(env, auth_url=auth_url, region=region), **kwargs)

    # --- reading -----------------------------------------------------------------------

    async def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        query = {"version-id": version_id} if version_id else None
        response, _ = await self._request("HEAD", bucket, key, query=query)
        return object_info(key, response.headers)

    def _get_args(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int | None,
        if_match: str | None,
        version_id: str | None,
    ) -> tuple[SendGet, dict[str, str]]:
        """How to send a GET of the object (plain or streamed), and its headers."""
        headers = range_header(start, end)
        if if_match:
            headers["If-Match"] = if_match if if_match.startswith('"') else f'"{if_match}"'
        query: dict[str, str | None] = {"version-id": version_id} if version_id else {}

        async def send(sent: Mapping[str, str], stream: bool) -> tuple[RawResponse, bytes]:
            return await self._request(
                "GET", bucket, key, query=query, headers=sent, ok=RANGED_OK, stream=stream
            )

        return send, headers

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
        send, headers = self._get_args(bucket, key, start, end, if_match, version_id)
        return await ranged_get(send, headers, start, end)

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
        send, headers = self._get_args(bucket, key, start, end, if_match, version_id)
        return ranged_stream(send, headers, start, end, self.description, f"GET {bucket}/{key}")

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
        """Delete the key; an SLO with its segments (unless versioned: see `slo.py`)."""
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
                check=check_bulk,
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

    # --- multipart, as Static Large Objects (slo.py) ---------------------------------

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
        return self._tempurl("GET", bucket, key, expires)

    def presign_upload(self, bucket: str, key: str, expires: int) -> str:
        """A TempURL for PUT (the tempurl middleware allows PUT by default)."""
        return self._tempurl("PUT", bucket, key, expires)

    def _tempurl(self, method: str, bucket: str, key: str, expires: int) -> str:
        session, secret = self._session, self._tempurl_key
        if session is None or secret is None:
            raise NotSupported(
                "the Swift account has no Temp-URL key (set one with `swift post -m "
                "Temp-URL-Key:SECRET`, or mount with -o create_tempurl_key)"
            )
        expires_at = int(time.time()) + expires
        path = f"{urlsplit(session.storage_url).path.rstrip('/')}/{bucket}/{key}"
        signature = hmac.new(
            secret.encode(), f"{method}\n{expires_at}\n{path}".encode(), hashlib.sha256
        ).hexdigest()
        query = {"temp_url_sig": signature, "temp_url_expires": str(expires_at)}
        return self._url(session.storage_url, bucket, key, dict(query))
