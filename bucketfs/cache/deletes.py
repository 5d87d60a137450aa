"""Deferred deletes: `unlink` queues its DELETE; the queue leaves as DeleteObjects batches.

Owns the deletes that `unlink` does not wait for, and the ordering every other request keeps
with them. `DeferredDeletes` wraps the mount's backend; everything the core, the cache and the
write-back send goes through it. `rm -rf` of a tree then costs about one request per directory
instead of one per file, and `unlink` returns without a round trip.

Invariants:
- a request that touches a key with a queued delete (HEAD, GET, PUT, multipart, copy from or
  to it) or lists a prefix holding one waits until that delete was sent and confirmed, so no
  reader sees a deleted key and no write is overtaken by an older delete;
- a write (PUT, multipart, copy to) waits as well for the queued deletes of every key naming
  the same entry or one on its path: `x` and `x/` for `x` or `x/`, each directory above it as a
  file or a marker, and every key under `x/`. A store whose keys are paths in one tree
  (SeaweedFS's filer) refuses a marker `x/` while a file `x` still is, a file where a
  directory still is, and a key below a file: `rm x; mkdir x` must not send the marker first;
- a batch that fails stays queued and is sent again (growing delay); requests waiting on it
  get its error;
- `flush()` (unmount, SIGTERM) returns when the queue is empty or raises why it is not (with
  `run()` not running, after one attempt per batch); a batch whose sending was cancelled
  (`run()` stopped) is queued again, so a later flush sends it instead of waiting forever;
- outside `run()` (before the mount serves, after it stopped) a delete is sent at once;
- with a journal (the cache index), a key is recorded there before `defer_delete` returns and
  removed only after the server confirmed its delete and before any request waiting on it goes
  on, so a daemon killed with deletes queued sends them at the next mount (before any upload
  of the same key: uploads wait for them), and never deletes a newer object of that key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import trio

from bucketfs.backends.base import Backend, Body, Space
from bucketfs.errors import BucketfsError, CacheError
from bucketfs.types import (
    BucketInfo,
    ListPage,
    ObjectInfo,
    PutResult,
    VersionPage,
    WriteOptions,
)

log = logging.getLogger(__name__)

#: how long a first queued key waits for others to share its batch
DELAY = 0.01
#: keys per batch (S3's DeleteObjects limit)
BATCH = 1000
RETRY_MIN, RETRY_MAX = 0.5, 30.0


class Journal(Protocol):
    """Where queued deletes survive a crash (`cache.index.CacheIndex`)."""

    def add_delete(self, bucket: str, key: str) -> None: ...

    def remove_deletes(self, items: Iterable[tuple[str, str]]) -> None: ...

    def pending_deletes(self) -> list[tuple[str, str]]: ...


class _Batch:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BucketfsError | None = None


class DeferredDeletes:
    """A `Backend` whose `defer_delete` queues; every other call keeps order with the queue."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.description = inner.description
        self.supports_versions = inner.supports_versions
        self.max_object_size = inner.max_object_size
        self.region = inner.region
        self.max_metadata_bytes = inner.max_metadata_bytes
        self.expiry = inner.expiry
        self.remote = inner.remote
        #: (bucket, key) -> the batch that will delete it (replaced when a batch failed)
        self._pending: dict[tuple[str, str], _Batch] = {}
        #: (bucket, "a/b/") -> how many queued keys lie under that prefix
        self._under: dict[tuple[str, str], int] = {}
        self._queued: list[tuple[str, str]] = []
        self._wake = trio.Event()
        self._urgent = trio.Event()
        self._running = False
        self._journal: Journal | None = None
        self._unrecorded: list[tuple[str, str]] = []
        self.sent_batches = 0

    @property
    def exclusive_put(self) -> bool:
        """The inner store's, read each time: S3Backend learns it from a 501."""
        return self.inner.exclusive_put

    @exclusive_put.setter
    def exclusive_put(self, value: bool) -> None:
        self.inner.exclusive_put = value

    @property
    def copy_in_place(self) -> bool | None:
        """The inner store's, read each time: S3Backend learns it from an answer."""
        return self.inner.copy_in_place

    @copy_in_place.setter
    def copy_in_place(self, value: bool | None) -> None:
        self.inner.copy_in_place = value

    async def usage(self, bucket: str) -> tuple[int, int] | None:
        return await self.inner.usage(bucket)

    async def space(self, bucket: str | None) -> Space | None:
        return await self.inner.space(bucket)

    async def bucket_metadata(self, bucket: str) -> dict[str, str] | None:
        return await self.inner.bucket_metadata(bucket)

    async def set_bucket_metadata(self, bucket: str, changes: dict[str, str | None]) -> None:
        await self.inner.set_bucket_metadata(bucket, changes)

    # --- the queue -----------------------------------------------------------------------

    def attach(self, journal: Journal) -> None:
        """Record queued deletes in `journal`; queue what it kept from an earlier run."""
        self._journal = journal
        for item in journal.pending_deletes():
            if item not in self._pending:
                log.info("deleting %s/%s (unlinked before a restart)", *item)
                self._add(item)
                self._queued.append(item)
        if self._queued:
            self._wake.set()

    async def defer_delete(self, bucket: str, key: str) -> None:
        if not self._running:
            await self.inner.delete(bucket, key)
            return
        if (bucket, key) in self._pending:
            return
        if self._journal is not None:
            try:
                self._journal.add_delete(bucket, key)
            except CacheError as exc:
                log.debug("deleting %s/%s at once: %s", bucket, key, exc)
                await self.inner.delete(bucket, key)
                return
        self._add((bucket, key))
        self._queued.append((bucket, key))
        if len(self._queued) >= BATCH:
            self._urgent.set()
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued deletes until cancelled (then whatever is left is sent at once)."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                with trio.move_on_after(DELAY):
                    await self._urgent.wait()
                await self._send_all()
                if not self._queued:
                    # a wait for a batch already in flight set them after `_send_all` reset
                    # them: left set with nothing queued, this loop spun at 100% CPU
                    self._wake = trio.Event()
                    self._urgent = trio.Event()
        finally:
            self._running = False

    async def _send_all(self, *, retry: bool = True) -> None:
        """Send the queue; a failed batch is queued again and retried after a growing delay,
        or (`retry` False: nobody runs the queue) raised at once."""
        delay = RETRY_MIN
        while self._queued:
            taken, self._queued = self._queued[:BATCH], self._queued[BATCH:]
            if not self._queued:
                self._wake = trio.Event()
                self._urgent = trio.Event()
            by_bucket: dict[str, list[str]] = {}
            for bucket, key in taken:
                by_bucket.setdefault(bucket, []).append(key)
            try:
                for bucket, keys in by_bucket.items():
                    await self.inner.delete_many(bucket, keys)
            except BucketfsError as exc:
                log.warning(
                    "deleting %d objects failed, retrying in %.1f s: %s", len(taken), delay, exc
                )
                self._fail(taken, exc)
                self._queued = taken + self._queued
                if not retry:
                    raise
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except BaseException:  # cancelled with the batch in flight: a later flush sends it
                self._queued = taken + self._queued
                raise
            self.sent_batches += 1
            self._forget(taken)
            for item in taken:
                batch = self._pending.pop(item, None)
                if batch is not None:
                    self._count_under(item, -1)
                    batch.done.set()

    def _add(self, item: tuple[str, str]) -> None:
        self._pending[item] = _Batch()
        self._count_under(item, 1)

    def _count_under(self, item: tuple[str, str], step: int) -> None:
        bucket, key = item
        parts = key.rstrip("/").split("/")
        for depth in range(1, len(parts)):
            prefix = (bucket, "/".join(parts[:depth]) + "/")
            count = self._under.get(prefix, 0) + step
            if count > 0:
                self._under[prefix] = count
            else:
                self._under.pop(prefix, None)

    def _forget(self, done: list[tuple[str, str]]) -> None:
        """Take confirmed deletes out of the journal (a replay after a restart must not
        delete a newer object of the same key); what cannot be taken out now is tried again
        with the next batch."""
        if self._journal is None:
            return
        self._unrecorded.extend(done)
        try:
            self._journal.remove_deletes(self._unrecorded)
        except CacheError as exc:
            log.error("could not record %d confirmed deletes: %s", len(self._unrecorded), exc)
            return
        self._unrecorded = []

    def _fail(self, taken: list[tuple[str, str]], exc: BucketfsError) -> None:
        """Tell the waiters of a failed batch; the keys get a fresh batch for the retry."""
        for item in taken:
            batch = self._pending.get(item)
            if batch is not None:
                batch.error = exc
                batch.done.set()
                self._pending[item] = _Batch()

    async def flush(self) -> None:
        """Return when nothing is queued; raise the error of a batch that failed meanwhile."""
        while self._pending:
            await self._wait(list(self._pending.values()))

    async def _wait(self, batches: list[_Batch]) -> None:
        if not batches:
            return
        if not self._running:
            await self._send_all(retry=False)
        self._urgent.set()
        self._wake.set()
        for batch in batches:
            await batch.done.wait()
            if batch.error is not None:
                raise batch.error

    async def _key(self, bucket: str, key: str) -> None:
        batch = self._pending.get((bucket, key))
        if batch is not None:
            await self._wait([batch])

    async def _entry(self, bucket: str, key: str) -> None:
        """Before a write of `key`: wait for the queued deletes of the same entry, of the
        entries on its path, and of everything under it (see the invariants)."""
        if not self._pending:
            return
        name = key.rstrip("/")
        parts = name.split("/")
        batches: list[_Batch] = []
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            for form in (path, path + "/"):
                batch = self._pending.get((bucket, form))
                if batch is not None:
                    batches.append(batch)
        if self._under.get((bucket, name + "/")):
            batches.extend(
                b
                for (bk, k), b in self._pending.items()
                if bk == bucket and k.startswith(name + "/")
            )
        await self._wait(batches)

    async def _prefix(self, bucket: str, prefix: str) -> None:
        if self._pending:
            await self._wait(
                [b for (bk, k), b in self._pending.items() if bk == bucket and k.startswith(prefix)]
            )

    # --- Backend, in order with the queue --------------------------------------------------

    async def list_buckets(self) -> list[BucketInfo]:
        return await self.inner.list_buckets()

    async def head_bucket(self, bucket: str) -> None:
        await self.inner.head_bucket(bucket)

    async def create_bucket(self, bucket: str) -> None:
        await self.inner.create_bucket(bucket)

    async def delete_bucket(self, bucket: str) -> None:
        await self._prefix(bucket, "")
        await self.inner.delete_bucket(bucket)

    async def get_versioning(self, bucket: str) -> str:
        return await self.inner.get_versioning(bucket)

    async def set_versioning(self, bucket: str, enabled: bool) -> None:
        await self.inner.set_versioning(bucket, enabled)

    async def list_page(self, bucket: str, prefix: str = "", **kw: Any) -> ListPage:
        await self._prefix(bucket, prefix)
        return await self.inner.list_page(bucket, prefix, **kw)

    async def list_versions_page(self, bucket: str, prefix: str = "", **kw: Any) -> VersionPage:
        await self._prefix(bucket, prefix)
        return await self.inner.list_versions_page(bucket, prefix, **kw)

    async def head(self, bucket: str, key: str, **kw: Any) -> ObjectInfo:
        await self._key(bucket, key)
        return await self.inner.head(bucket, key, **kw)

    async def head_and_get(
        self, bucket: str, key: str, *, up_to: int
    ) -> tuple[ObjectInfo, bytes] | None:
        await self._key(bucket, key)
        return await self.inner.head_and_get(bucket, key, up_to=up_to)

    async def get(self, bucket: str, key: str, *args: Any, **kw: Any) -> bytes:
        await self._key(bucket, key)
        return await self.inner.get(bucket, key, *args, **kw)

    def get_stream(
        self, bucket: str, key: str, *args: Any, **kw: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._stream(bucket, key, *args, **kw)

    @asynccontextmanager
    async def _stream(
        self, bucket: str, key: str, *args: Any, **kw: Any
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        await self._key(bucket, key)
        async with self.inner.get_stream(bucket, key, *args, **kw) as chunks:
            yield chunks

    def get_body(
        self, bucket: str, key: str, *args: Any, **kw: Any
    ) -> AbstractAsyncContextManager[Body]:
        return self._body(bucket, key, *args, **kw)

    @asynccontextmanager
    async def _body(self, bucket: str, key: str, *args: Any, **kw: Any) -> AsyncIterator[Body]:
        await self._key(bucket, key)
        async with self.inner.get_body(bucket, key, *args, **kw) as body:
            yield body

    async def put(self, bucket: str, key: str, data: bytes, *args: Any, **kw: Any) -> PutResult:
        await self._entry(bucket, key)
        return await self.inner.put(bucket, key, data, *args, **kw)

    async def create_multipart(
        self, bucket: str, key: str, opts: WriteOptions | None = None
    ) -> str:
        await self._entry(bucket, key)
        return await self.inner.create_multipart(bucket, key, opts)

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
    ) -> str:
        return await self.inner.upload_part(bucket, key, upload_id, part_number, data)

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        src_key: str,
        start: int,
        end: int,
        **kw: Any,
    ) -> str:
        await self._key(bucket, src_key)
        return await self.inner.upload_part_copy(
            bucket, key, upload_id, part_number, src_key, start, end, **kw
        )

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult:
        await self._entry(bucket, key)
        return await self.inner.complete_multipart(bucket, key, upload_id, parts)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        await self.inner.abort_multipart(bucket, key, upload_id)

    async def copy(
        self, bucket: str, src_key: str, dst_key: str, *args: Any, **kw: Any
    ) -> PutResult:
        await self._key(bucket, src_key)
        await self._entry(bucket, dst_key)
        return await self.inner.copy(bucket, src_key, dst_key, *args, **kw)

    async def delete(self, bucket: str, key: str) -> None:
        await self._key(bucket, key)
        await self.inner.delete(bucket, key)

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        await self.inner.delete_many(bucket, keys)

    def presign(self, bucket: str, key: str, expires: int, **kw: Any) -> str:
        return self.inner.presign(bucket, key, expires, **kw)

    async def head_checksums(self, bucket: str, key: str, **kw: Any) -> ObjectInfo:
        await self._key(bucket, key)
        return await self.inner.head_checksums(bucket, key, **kw)

    def presign_upload(self, bucket: str, key: str, expires: int) -> str:
        return self.inner.presign_upload(bucket, key, expires)

    async def aclose(self) -> None:
        await self.inner.aclose()
