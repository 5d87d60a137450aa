"""An object store held in dicts, for fast tests of the filesystem core.

Owns nothing outside the process: buckets, object versions and multipart uploads live in this
object and vanish with it. It implements the whole `Backend` protocol with S3's semantics
(listing order and folding, ranges, conditional puts, multipart ETags, versioning with delete
markers), so that a test passing here means the same thing as one passing against a server.

Invariants: every request is one atomic step between trio checkpoints (no request observes
another half done); per bucket, `keys` is the sorted list (UTF-8 bytes) of every key with at
least one version, and `versions[key]` lists that key's versions newest first, the first being
the latest; at most one version per key has the version id "null". `latency` seconds are slept at
the start of every request, so tests can make concurrency visible.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import trio

from bucketfs.backends import inprocess as c
from bucketfs.backends.base import MAX_OBJECT_SIZE, Backend, Space
from bucketfs.errors import (
    AlreadyExists,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    NotSupported,
    PreconditionFailed,
)
from bucketfs.types import (
    BucketInfo,
    ListPage,
    ObjectInfo,
    PutResult,
    VersionPage,
    WriteOptions,
)

CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Version:
    info: ObjectInfo  # is_latest is not kept here: the first of a key's versions is the latest
    data: bytes = b""


@dataclass(slots=True)
class _Upload:
    key: str
    opts: WriteOptions | None
    parts: dict[int, tuple[str, bytes]] = field(default_factory=dict)


@dataclass(slots=True)
class _Bucket:
    created: float
    versioning: str = "Off"
    keys: list[bytes] = field(default_factory=list)
    versions: dict[bytes, list[_Version]] = field(default_factory=dict)
    uploads: dict[str, _Upload] = field(default_factory=dict)
    #: the bucket's user metadata (as Swift keeps on a container; `quota-bytes` is its quota)
    metadata: dict[str, str] = field(default_factory=dict)

    def latest_live(self, kb: bytes) -> _Version | None:
        versions = self.versions.get(kb)
        if not versions or versions[0].info.is_delete_marker:
            return None
        return versions[0]

    def find(self, kb: bytes, version_id: str | None) -> _Version:
        if version_id is None:
            found = self.latest_live(kb)
        else:
            found = next(
                (v for v in self.versions.get(kb, ()) if v.info.version_id == version_id), None
            )
        if found is None or found.info.is_delete_marker:
            raise NotFound(f"no such key {kb.decode()!r}")
        return found

    def install(self, kb: bytes, info: ObjectInfo, data: bytes) -> str:
        """Make `info` the latest version of the key, as the versioning state says."""
        versions = self.versions.get(kb)
        if versions is None:
            versions = self.versions[kb] = []
            bisect.insort(self.keys, kb)
        vid = c.new_id() if self.versioning == "Enabled" else c.NULL_VERSION
        if vid == c.NULL_VERSION:
            versions[:] = [v for v in versions if v.info.version_id != c.NULL_VERSION]
        versions.insert(0, _Version(replace(info, version_id=vid), data))
        return vid

    def remove_key(self, kb: bytes) -> None:
        del self.versions[kb]
        i = bisect.bisect_left(self.keys, kb)
        del self.keys[i]

    def seek(self, hi: bytes, start: bytes, inclusive: bool) -> Iterator[tuple[bytes, int]]:
        """Keys from `start` below `hi`, each with its index in `keys`."""
        find = bisect.bisect_left if inclusive else bisect.bisect_right
        for i in range(find(self.keys, start), len(self.keys)):
            kb = self.keys[i]
            if kb >= hi:
                return
            yield kb, i


def _public(info: ObjectInfo, *, is_latest: bool = True, listing: bool = False) -> ObjectInfo:
    """The info as callers see it: the null version id is None except in version listings."""
    vid = info.version_id
    if vid == c.NULL_VERSION and not listing:
        vid = None
    return replace(info, version_id=vid, is_latest=is_latest)


class MemoryBackend(Backend):
    """The `Backend` protocol over dicts; `latency` seconds are slept per request."""

    supports_versions = True
    exclusive_put = True
    copy_in_place = True  # a copy onto itself changes metadata only
    remote = False
    max_object_size = MAX_OBJECT_SIZE

    def __init__(self, latency: float = 0.0) -> None:
        self.description = "memory"
        self.latency = latency
        self._buckets: dict[str, _Bucket] = {}

    async def _request(self) -> None:
        if self.latency > 0:
            await trio.sleep(self.latency)
        else:
            await trio.lowlevel.checkpoint()

    def _bucket(self, bucket: str) -> _Bucket:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise BucketNotFound(f"no such bucket {bucket!r}") from None

    # --- buckets -----------------------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]:
        await self._request()
        return [BucketInfo(name, b.created) for name, b in sorted(self._buckets.items())]

    async def head_bucket(self, bucket: str) -> None:
        await self._request()
        self._bucket(bucket)

    async def create_bucket(self, bucket: str) -> None:
        await self._request()
        if not c.valid_bucket_name(bucket):
            raise InvalidRequest(f"invalid bucket name {bucket!r}")
        if bucket in self._buckets:
            raise AlreadyExists(f"bucket {bucket!r} exists")
        self._buckets[bucket] = _Bucket(created=time.time())

    async def delete_bucket(self, bucket: str) -> None:
        await self._request()
        if self._bucket(bucket).keys:
            raise BucketNotEmpty(f"bucket {bucket!r} is not empty")
        del self._buckets[bucket]

    async def usage(self, bucket: str) -> tuple[int, int]:
        """(bytes, objects) of the current objects: what `df` shows as used."""
        await self._request()
        b = self._bucket(bucket)
        live = [v for v in (b.latest_live(kb) for kb in b.keys) if v is not None]
        return sum(v.info.size for v in live), len(live)

    async def space(self, bucket: str | None) -> Space:
        """Usage as `usage` says; a quota (like Swift's) from the bucket's `quota-bytes` and
        `quota-count` metadata."""
        names = [bucket] if bucket is not None else sorted(self._buckets)
        used = objects = 0
        for name in names:
            size, count = await self.usage(name)
            used, objects = used + size, objects + count
        meta = self._bucket(bucket).metadata if bucket is not None else {}
        quota = {k: int(v) for k, v in meta.items() if k in ("quota-bytes", "quota-count")}
        return Space(used, objects, quota.get("quota-bytes"), quota.get("quota-count"))

    async def bucket_metadata(self, bucket: str) -> dict[str, str]:
        await self._request()
        return dict(self._bucket(bucket).metadata)

    async def set_bucket_metadata(self, bucket: str, changes: dict[str, str | None]) -> None:
        await self._request()
        meta = self._bucket(bucket).metadata
        for key, value in changes.items():
            if value is None:
                meta.pop(key.lower(), None)
            else:
                meta[key.lower()] = value

    async def get_versioning(self, bucket: str) -> str:
        await self._request()
        return self._bucket(bucket).versioning

    async def set_versioning(self, bucket: str, enabled: bool) -> None:
        await self._request()
        self._bucket(bucket).versioning = "Enabled" if enabled else "Suspended"

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
        await self._request()
        b = self._bucket(bucket)
        pb, db, tb = c.listing_bytes(prefix, delimiter, token)
        hi = c.prefix_end(pb)

        def seek(start: bytes, inclusive: bool) -> Iterator[tuple[bytes, ObjectInfo]]:
            for kb, _ in b.seek(hi, start, inclusive):
                live = b.latest_live(kb)
                if live is not None:
                    yield kb, _public(live.info)

        return c.list_page_of(*c.keys_page(seek, pb, db, tb, max_keys))

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
        await self._request()
        b = self._bucket(bucket)
        pb, db, km = c.listing_bytes(prefix, delimiter, key_marker)
        hi = c.prefix_end(pb)

        def versions_of(kb: bytes, skip: int = 0) -> Iterator[tuple[bytes, ObjectInfo]]:
            for n, v in enumerate(b.versions[kb][skip:], start=skip):
                yield kb, _public(v.info, is_latest=n == 0, listing=True)

        def seek(start: bytes, inclusive: bool) -> Iterator[tuple[bytes, ObjectInfo]]:
            for kb, _ in b.seek(hi, start, inclusive):
                yield from versions_of(kb)

        def older(kb: bytes, version_id: str) -> Iterator[tuple[bytes, ObjectInfo]] | None:
            vids = [v.info.version_id for v in b.versions.get(kb, ())]
            return versions_of(kb, vids.index(version_id) + 1) if version_id in vids else None

        page = c.versions_page(seek, older, pb, db, km, version_marker, max_keys)
        return c.version_page_of(*page)

    async def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        await self._request()
        b = self._bucket(bucket)
        kb = c.encode_key(key)
        found = b.find(kb, version_id)
        info = _public(found.info, is_latest=found is b.versions[kb][0])
        return replace(info, server_date=time.time())  # this process is the server

    def _read(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int | None,
        if_match: str | None,
        version_id: str | None,
    ) -> bytes:
        found = self._bucket(bucket).find(c.encode_key(key), version_id)
        if if_match is not None and not c.etag_matches(if_match, found.info.etag):
            raise PreconditionFailed(f"{key!r} changed")
        lo, hi = c.clip_range(len(found.data), start, end)
        return found.data[lo:hi]

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
        await self._request()
        return self._read(bucket, key, start, end, if_match, version_id)

    @asynccontextmanager
    async def get_stream(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        if_match: str | None = None,
        version_id: str | None = None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        await self._request()
        data = self._read(bucket, key, start, end, if_match, version_id)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), CHUNK_SIZE):
                await trio.lowlevel.checkpoint()
                yield data[i : i + CHUNK_SIZE]

        yield chunks()

    # --- writing -----------------------------------------------------------------------
    def _check_conditions(
        self, b: _Bucket, kb: bytes, if_match: str | None, if_none_match: bool
    ) -> None:
        current = b.latest_live(kb)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{kb.decode()!r} exists")
        if if_match is not None:
            if current is None:
                raise NotFound(f"no such key {kb.decode()!r}")
            if not c.etag_matches(if_match, current.info.etag):
                raise PreconditionFailed(f"{kb.decode()!r} changed")

    def _store(
        self, b: _Bucket, key: str, data: bytes, opts: WriteOptions | None, etag: str
    ) -> PutResult:
        metadata, content_type, system = c.normalize_opts(opts)
        info = ObjectInfo(
            key=key,
            size=len(data),
            etag=etag,
            last_modified=time.time(),
            metadata=metadata,
            content_type=content_type,
            system=system,
        )
        vid = b.install(c.encode_key(key), info, data)
        return PutResult(etag, None if vid == c.NULL_VERSION else vid)

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
        await self._request()
        b = self._bucket(bucket)
        kb = c.encode_key(key)
        c.normalize_opts(opts)
        c.check_put_size(len(data))
        self._check_conditions(b, kb, if_match, if_none_match)
        data = bytes(data)
        return self._store(b, key, data, opts, c.md5_hex(data))

    async def create_multipart(
        self, bucket: str, key: str, opts: WriteOptions | None = None
    ) -> str:
        await self._request()
        b = self._bucket(bucket)
        c.encode_key(key)
        c.normalize_opts(opts)
        upload_id = c.new_id()
        b.uploads[upload_id] = _Upload(key, opts)
        return upload_id

    def _upload(self, b: _Bucket, key: str, upload_id: str) -> _Upload:
        upload = b.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NotFound(f"no such upload {upload_id!r}")
        return upload

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
    ) -> str:
        await self._request()
        upload = self._upload(self._bucket(bucket), key, upload_id)
        c.check_part_number(part_number)
        data = bytes(data)
        etag = c.md5_hex(data)
        upload.parts[part_number] = (etag, data)
        return etag

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
        await self._request()
        upload = self._upload(self._bucket(bucket), key, upload_id)
        c.check_part_number(part_number)
        data = self._read(bucket, src_key, start, end, if_match, src_version_id)
        etag = c.md5_hex(data)
        upload.parts[part_number] = (etag, data)
        return etag

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult:
        await self._request()
        b = self._bucket(bucket)
        upload = self._upload(b, key, upload_id)
        if not parts:
            raise InvalidRequest("no parts")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise InvalidRequest("parts must be listed in ascending order, once each")
        chosen: list[tuple[str, bytes]] = []
        for number, etag in parts:
            part = upload.parts.get(number)
            if part is None or part[0] != c.strip_etag(etag):
                raise InvalidRequest(f"part {number} not uploaded or ETag differs")
            chosen.append(part)
        data = b"".join(d for _, d in chosen)
        del b.uploads[upload_id]
        return self._store(b, key, data, upload.opts, c.multipart_etag([e for e, _ in chosen]))

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._request()
        b = self._bucket(bucket)
        self._upload(b, key, upload_id)
        del b.uploads[upload_id]

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
        await self._request()
        b = self._bucket(bucket)
        c.encode_key(dst_key)
        src = b.find(c.encode_key(src_key), src_version_id)
        if if_match is not None and not c.etag_matches(if_match, src.info.etag):
            raise PreconditionFailed(f"{src_key!r} changed")
        c.check_put_size(src.info.size)
        if opts is None:
            opts = WriteOptions(src.info.metadata, src.info.content_type, src.info.system)
        c.normalize_opts(opts)
        return self._store(b, dst_key, src.data, opts, src.info.etag)

    def _delete(self, b: _Bucket, key: str) -> None:
        kb = c.encode_key(key)
        if b.latest_live(kb) is None:
            return
        if b.versioning == "Off":
            b.remove_key(kb)
            return
        marker = ObjectInfo(key=key, size=0, last_modified=time.time(), is_delete_marker=True)
        b.install(kb, marker, b"")

    async def delete(self, bucket: str, key: str) -> None:
        await self._request()
        self._delete(self._bucket(bucket), key)

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        await self._request()
        b = self._bucket(bucket)
        for key in keys:
            c.encode_key(key)
        for key in keys:
            self._delete(b, key)

    # --- misc --------------------------------------------------------------------------
    def presign(self, bucket: str, key: str, expires: int, *, version_id: str | None = None) -> str:
        raise NotSupported("the memory backend has no URLs")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
