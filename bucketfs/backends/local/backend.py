"""The embedded store: buckets in a local directory, needing no server.

Owns `<root>/`, where each subdirectory named like an S3 bucket is a bucket:

    <root>/<bucket>/index.sqlite   SQLite (WAL): every object version and the bucket's settings
    <root>/<bucket>/blobs/<id>     object contents, one immutable file per stored body
    <root>/<bucket>/uploads/<id>/  the parts of a multipart upload in progress
    <root>/<bucket>/lock           flock: shared while a process has the bucket open

Why keys are not file paths: a store must accept any key S3 accepts, and many of those cannot be
paths at the same time: "a" and "a/b" together, "a//b", "..", a segment of 255+ bytes, a key of
1024 bytes. So the key is only a column of the index, and a body lives in a file named by a
random id. This also makes listings cheap: keys are stored as UTF-8 BLOBs, SQLite compares them
with memcmp (S3's order), and `prefix/delimiter` listings are range queries
(`key >= prefix AND key < successor(prefix)`); a folded common prefix is skipped with one new range
query starting at the successor of that prefix, never by scanning the subtree.

Invariants (the details are in `index.py` and `store.py`):
- `put` is atomic and crash-safe: the body is written to a new blob (fsynced with its directory
  when `fsync`), then one SQLite transaction switches the key to it; a crash leaves the old
  object or the new one. Blobs that no row names are swept when a process opens a bucket that no
  other process has open. Old blobs are unlinked after the commit that unnamed them.
- Blob files never change once written, so a reader that opened one keeps a consistent view; a
  `copy` names the same blob again instead of copying bytes.
- Several processes may use one root at once (SQLite WAL, `busy_timeout`, `BEGIN IMMEDIATE` for
  every change); the FUSE tests read a mounted store from another process this way.
- Blocking work runs in worker threads (`trio.to_thread`), bounded by one `CapacityLimiter`.
- Errors are translated once, in `_translate`: OSError keeps its errno, a busy database is
  `Transient`, anything else from SQLite is a `BackendError`.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import ParamSpec, TypeVar

import trio

from bucketfs.backends import inprocess as c
from bucketfs.backends.base import MAX_OBJECT_SIZE, Backend, Space
from bucketfs.backends.local.store import LocalStore
from bucketfs.errors import BackendError, BucketfsError, NotSupported, Transient
from bucketfs.types import (
    BucketInfo,
    ListPage,
    ObjectInfo,
    PutResult,
    VersionPage,
    WriteOptions,
)

P = ParamSpec("P")
R = TypeVar("R")

#: the body of `get_stream` comes in pieces of this size
CHUNK_SIZE = 256 * 1024


def _translate(exc: Exception) -> BucketfsError:
    """The one place where a lower-level error becomes a BackendError."""
    if isinstance(exc, BucketfsError):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return Transient(f"local store busy: {exc}")
    if isinstance(exc, OSError):
        return BackendError(f"local store: {exc}", errno=exc.errno or errno.EIO)
    return BackendError(f"local store: {exc!r}")


class LocalBackend(Backend):
    """The `Backend` protocol over a directory; see the module docstring for the layout."""

    supports_versions = True
    exclusive_put = True
    copy_in_place = True  # a copy onto itself changes metadata only
    remote = False
    #: no store limit of its own: S3's, so that a tree moves between the stores as it is
    max_object_size = MAX_OBJECT_SIZE

    def __init__(self, root: Path, *, fsync: bool = True, max_threads: int = 8) -> None:
        self.root = Path(root)
        self.description = f"local {self.root}"
        self._store = LocalStore(self.root, fsync=fsync)
        self._limiter = trio.CapacityLimiter(max_threads)

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(fn, *args, **kwargs)
        _since = time.monotonic()  # taskdump shows how long the thread runs
        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except (OSError, sqlite3.Error, BucketfsError) as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    # --- buckets -----------------------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]:
        return await self._run(self._store.list_buckets)

    async def head_bucket(self, bucket: str) -> None:
        await self._run(self._store.bucket, bucket)

    async def create_bucket(self, bucket: str) -> None:
        await self._run(self._store.create_bucket, bucket)

    async def delete_bucket(self, bucket: str) -> None:
        await self._run(self._store.delete_bucket, bucket)

    async def usage(self, bucket: str) -> tuple[int, int]:
        """(bytes, objects) of the current objects: what `df` shows as used."""
        return await self._run(self._store.usage, bucket)

    async def space(self, bucket: str | None) -> Space:
        """What `df` shows: the current objects of `bucket` (of every bucket when None) as
        used, and the free space of the filesystem the store lives on as free."""
        return await self._run(self._space, bucket)

    def _space(self, bucket: str | None) -> Space:
        names = [bucket] if bucket is not None else [b.name for b in self._store.list_buckets()]
        used = objects = 0
        for name in names:
            size, count = self._store.usage(name)
            used, objects = used + size, objects + count
        disk = os.statvfs(self.root)
        return Space(
            bytes_used=used,
            object_count=objects,
            free_bytes=disk.f_bavail * disk.f_frsize,
            free_files=disk.f_favail,
        )

    async def get_versioning(self, bucket: str) -> str:
        return await self._run(self._store.get_versioning, bucket)

    async def set_versioning(self, bucket: str, enabled: bool) -> None:
        await self._run(self._store.set_versioning, bucket, enabled)

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
        pb, db, tb = c.listing_bytes(prefix, delimiter, token)
        page = await self._run(self._store.list_page, bucket, pb, db, tb, max_keys)
        return c.list_page_of(*page)

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
        pb, db, km = c.listing_bytes(prefix, delimiter, key_marker)
        page = await self._run(
            self._store.list_versions_page, bucket, pb, db, km, version_marker, max_keys
        )
        return c.version_page_of(*page)

    async def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo:
        info = await self._run(self._store.head, bucket, key, version_id)
        return replace(info, server_date=time.time())  # this process is the server

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
        return await self._run(self._store.get, bucket, key, start, end, if_match, version_id)

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
        row, fd = await self._run(self._store.open_object, bucket, key, if_match, version_id)
        try:
            lo, hi = c.clip_range(row.size, start, end)
            yield self._chunks(fd, lo, hi)
        finally:
            if fd is not None:
                os.close(fd)

    async def _chunks(self, fd: int | None, lo: int, hi: int) -> AsyncIterator[bytes]:
        pos = lo
        while fd is not None and pos < hi:
            chunk = await self._run(_read_chunk, fd, pos, min(CHUNK_SIZE, hi - pos))
            pos += len(chunk)
            yield chunk

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
        return await self._run(
            self._store.put, bucket, key, bytes(data), opts, if_match, if_none_match
        )

    async def create_multipart(
        self, bucket: str, key: str, opts: WriteOptions | None = None
    ) -> str:
        return await self._run(self._store.create_multipart, bucket, key, opts)

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
    ) -> str:
        return await self._run(
            self._store.upload_part, bucket, key, upload_id, part_number, bytes(data)
        )

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
        source = (src_key, start, end, src_version_id, if_match)
        return await self._run(
            self._store.upload_part, bucket, key, upload_id, part_number, b"", source
        )

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult:
        return await self._run(self._store.complete_multipart, bucket, key, upload_id, list(parts))

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self._run(self._store.abort_multipart, bucket, key, upload_id)

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
        return await self._run(
            self._store.copy, bucket, src_key, dst_key, opts, src_version_id, if_match
        )

    async def delete(self, bucket: str, key: str) -> None:
        await self._run(self._store.delete_many, bucket, [key])

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        await self._run(self._store.delete_many, bucket, list(keys))

    # --- misc --------------------------------------------------------------------------
    def presign(self, bucket: str, key: str, expires: int, *, version_id: str | None = None) -> str:
        raise NotSupported("the local store has no URLs")

    async def aclose(self) -> None:
        await self._run(self._store.close)


def _read_chunk(fd: int, pos: int, size: int) -> bytes:
    chunk = os.pread(fd, size, pos)
    if not chunk:
        raise BackendError("blob is shorter than its index says")
    return chunk
