"""The S3 backend: `base.Backend` over the S3 REST API with httpx2, signed with SigV4.

Owns the operations on buckets and objects of an S3 endpoint, and the translation of its
answers into `bucketfs.types` values; the request path (addressing, signing, retries) is
`client.py`, multipart uploads `multipart.py`. Invariants:

- every operation is one or more `_request`s (see `client.py`); a `get` range is half-open and
  a 416 or a server ignoring `Range` are `http.ranged_get`'s business;
- a streaming GET is retried only until its headers arrived; after the first chunk a failure
  surfaces as `Transient`;
- a copy onto itself that changes nothing is sent as a REPLACE with the same values (S3
  refuses it otherwise), guarded by the source's ETag;
- a store that answers 501 to a PUT with `If-Match` or `If-None-Match: *` (Swift's s3api:
  `If-Match`) is remembered as one without that header: from then on that condition is
  checked with a HEAD just before an unconditional PUT (as the Swift backend does for
  `If-Match`), which leaves a window where another client's write goes unseen; without
  `If-None-Match`, `exclusive_put` is False;
- `copy_in_place` is True once an answer came from SeaweedFS (`Server: SeaweedFS ...`), whose
  copy of an object onto itself changes its metadata only (checked: 20-30 ms for 40 MiB, the
  multipart ETag kept); for any other server it stays None (AWS copies the data).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

from bucketfs.backends.base import MAX_OBJECT_SIZE, Backend, Body
from bucketfs.backends.http import (
    RANGED_OK,
    SendDirectGet,
    quote_key,
    range_header,
    ranged_body,
    ranged_get,
    ranged_stream,
)
from bucketfs.backends.s3 import xmlparse
from bucketfs.backends.s3.client import (
    DEFAULT_REGION,
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    S3Credentials,
)
from bucketfs.backends.s3.errors import error_class
from bucketfs.backends.s3.multipart import S3Multipart
from bucketfs.backends.s3.values import (
    batches,
    encode_query,
    object_info,
    put_result,
    quoted_etag,
    write_headers,
)
from bucketfs.backends.s3.wire import Answer
from bucketfs.errors import (
    AccessDenied,
    BucketNotFound,
    NotFound,
    PreconditionFailed,
    ServerNotImplemented,
)
from bucketfs.types import (
    BucketInfo,
    ListPage,
    ObjectInfo,
    PutResult,
    VersionPage,
    WriteOptions,
)

#: re-exported for the callers that build a backend (`app/mount.py`) and for tests
__all__ = [
    "EMPTY_SHA256",
    "UNSIGNED_PAYLOAD",
    "S3Backend",
    "S3Credentials",
    "batches",
    "encode_query",
    "quote_key",
]


log = logging.getLogger(__name__)


class S3Backend(S3Multipart, Backend):
    """An S3-compatible object store reached over HTTP(S)."""

    supports_versions = True
    exclusive_put = True
    max_object_size = MAX_OBJECT_SIZE
    #: conditional PUT headers the store answered 501 to (checked with a HEAD instead)
    _unconditional: frozenset[str] = frozenset()
    #: signs every request and is shown as `user.bucketfs.region`
    region: str

    # --- buckets -----------------------------------------------------------------------

    async def list_buckets(self) -> list[BucketInfo]:
        return xmlparse.parse_buckets(await self._xml("GET", None))

    async def head_bucket(self, bucket: str) -> None:
        await self._request("HEAD", bucket, bucket_level=True)

    async def create_bucket(self, bucket: str) -> None:
        body = b"" if self.region == DEFAULT_REGION else xmlparse.create_bucket_body(self.region)
        await self._request("PUT", bucket, body=body)

    async def delete_bucket(self, bucket: str) -> None:
        await self._request("DELETE", bucket, bucket_level=True)

    async def get_versioning(self, bucket: str) -> str:
        root = await self._xml("GET", bucket, query={"versioning": ""}, bucket_level=True)
        return xmlparse.text(root, "Status") or "Off"

    async def set_versioning(self, bucket: str, enabled: bool) -> None:
        body = xmlparse.versioning_body(enabled)
        await self._request("PUT", bucket, query={"versioning": ""}, body=body, bucket_level=True)

    # --- reading -----------------------------------------------------------------------

    async def list_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        query = {"list-type": "2", "encoding-type": "url", "max-keys": str(max_keys)}
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        root = await self._xml("GET", bucket, query=query, bucket_level=True)
        return xmlparse.parse_list_v2(root)

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
        query = {"versions": "", "encoding-type": "url", "max-keys": str(max_keys)}
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = delimiter
        if key_marker:
            query["key-marker"] = key_marker
            if version_marker:
                query["version-id-marker"] = version_marker
        root = await self._xml("GET", bucket, query=query, bucket_level=True)
        return xmlparse.parse_versions(root)

    async def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        query = {"versionId": version_id} if version_id else None
        response, _ = await self._request("HEAD", bucket, key, query=query)
        return object_info(key, response.headers)

    async def head_checksums(
        self, bucket: str, key: str, *, version_id: str | None = None
    ) -> ObjectInfo:
        """A HEAD in checksum mode (`x-amz-checksum-mode: ENABLED`): the `x-amz-checksum-*`
        the store kept come back. Refused (AWS: a KMS-encrypted object without
        `kms:Decrypt`): a plain HEAD instead."""
        query = {"versionId": version_id} if version_id else None
        try:
            response, _ = await self._request(
                "HEAD", bucket, key, query=query, headers={"x-amz-checksum-mode": "ENABLED"}
            )
        except AccessDenied:
            return await self.head(bucket, key, version_id=version_id)
        return object_info(key, response.headers)

    async def head_and_get(
        self, bucket: str, key: str, *, up_to: int
    ) -> tuple[ObjectInfo, bytes] | None:
        """One GET of the first `up_to` bytes: a GET answers with a HEAD's headers, and its
        `Content-Range` carries the object's size. None for an empty object (a range of it is
        416, without the object's headers)."""
        sent = range_header(0, up_to)
        response, content = await self._request("GET", bucket, key, headers=sent, ok=RANGED_OK)
        if response.status_code == 416:
            return None
        info = object_info(key, response.headers)
        total = (response.header(b"content-range") or "").rpartition("/")[2]
        size = int(total) if response.status_code == 206 and total.isdigit() else len(content)
        data = content[:up_to] if response.status_code == 200 else content
        return replace(info, size=size), data

    def _get_args(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int | None,
        if_match: str | None,
        version_id: str | None,
    ) -> tuple[SendDirectGet, dict[str, str]]:
        """How to send a GET of the object (plain or streamed), and its headers."""
        headers = range_header(start, end)
        if if_match:
            headers["If-Match"] = quoted_etag(if_match)
        query = {"versionId": version_id} if version_id else {}

        async def send(sent: Mapping[str, str], stream: bool) -> tuple[Answer, bytes]:
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
        return ranged_stream(send, headers, start, end, self.endpoint, f"GET {bucket}/{key}")

    def get_body(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> AbstractAsyncContextManager[Body]:
        send, headers = self._get_args(bucket, key, start, end, if_match, version_id)
        return ranged_body(send, headers, start, end, self.endpoint, f"GET {bucket}/{key}")

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
        # which condition the store is asked to check (the other, if any, is ours to check)
        header = "If-None-Match" if if_none_match else "If-Match" if if_match else None
        if header is not None and header in self._unconditional:
            await self._check_condition(bucket, key, if_match, if_none_match)
        elif header is not None:
            headers[header] = "*" if if_none_match else quoted_etag(if_match or "")
        digest = await self._data_checksum(data, headers)

        async def send() -> PutResult:
            response, _ = await self._request(
                "PUT", bucket, key, headers=headers, body=data, data=True, sha256=digest
            )
            return put_result(response.header(b"etag"), response.header(b"x-amz-version-id"))

        try:
            return await send()
        except ServerNotImplemented:
            if header is None or header not in headers:
                raise
        log.warning(
            "%s answers 501 to a PUT with %s: checking that condition with a HEAD before "
            "the upload from now on (not atomic: see docs/swift.md)",
            self.endpoint,
            header,
        )
        self._unconditional = self._unconditional | {header}
        if header == "If-None-Match":
            self.exclusive_put = False
        del headers[header]
        await self._check_condition(bucket, key, if_match, if_none_match)
        return await send()

    async def _check_condition(
        self, bucket: str, key: str, if_match: str | None, if_none_match: bool
    ) -> None:
        """What `If-None-Match: *` / `If-Match` would have refused, asked with a HEAD."""
        try:
            etag: str | None = (await self.head(bucket, key)).etag
        except NotFound as exc:
            if isinstance(exc, BucketNotFound):
                raise
            etag = None
        if if_none_match and etag is not None:
            raise PreconditionFailed(f"PUT {bucket}/{key}: the object exists")
        if if_match and etag is None:
            raise NotFound(f"PUT {bucket}/{key}: no object to match {if_match}")
        if if_match and etag != xmlparse.strip_etag(if_match):
            raise PreconditionFailed(f"PUT {bucket}/{key}: ETag changed")

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
        if opts is None and src_key == dst_key and src_version_id is None:
            # S3 refuses a copy onto itself that changes nothing: replace with the same values
            info = await self.head(bucket, src_key)
            opts = WriteOptions(info.metadata, info.content_type, info.system)
            if_match = if_match or info.etag
        headers = {"x-amz-copy-source": self._copy_source(bucket, src_key, src_version_id)}
        if opts is None:
            headers["x-amz-metadata-directive"] = "COPY"
        else:
            headers["x-amz-metadata-directive"] = "REPLACE"
            headers.update(write_headers(opts))
        if if_match:
            headers["x-amz-copy-source-if-match"] = quoted_etag(if_match)
        response, content = await self._request(
            "PUT", bucket, dst_key, headers=headers, error_in_body=True
        )
        etag = xmlparse.parse_etag_result(xmlparse.parse(content))
        return PutResult(etag=etag, version_id=response.header(b"x-amz-version-id"))

    async def delete(self, bucket: str, key: str) -> None:
        try:
            await self._request("DELETE", bucket, key)
        except BucketNotFound:
            raise
        except NotFound:
            return

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        for batch in batches(keys):
            root = await self._xml(
                "POST", bucket, query={"delete": ""}, body=xmlparse.delete_body(batch)
            )
            failures = [f for f in xmlparse.parse_delete_errors(root) if f.code != "NoSuchKey"]
            if failures:
                first = failures[0]
                cls = error_class(None, first.code)
                raise cls(
                    f"DeleteObjects {bucket}: {len(failures)} keys not deleted, first "
                    f"{first.key!r}: {first.code}: {first.message}"
                )

    # --- misc --------------------------------------------------------------------------

    def presign(self, bucket: str, key: str, expires: int, *, version_id: str | None = None) -> str:
        url = self._url(bucket, key, {"versionId": version_id} if version_id else {})
        return self._presigned("GET", url, expires)

    def presign_upload(self, bucket: str, key: str, expires: int) -> str:
        """A presigned PUT: `curl -T FILE URL` stores FILE as the object (its payload is
        not signed, so any body goes; no checksum is asked for)."""
        return self._presigned("PUT", self._url(bucket, key, {}), expires)

    def _presigned(self, method: str, url: str, expires: int) -> str:
        if self._credentials is None:
            return url
        request = AWSRequest(method=method, url=url)
        creds = self._credentials.get_frozen_credentials()
        S3SigV4QueryAuth(creds, "s3", self.region, expires=expires).add_auth(request)
        return str(request.url)
