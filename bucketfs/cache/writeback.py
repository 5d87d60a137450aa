"""Write-back: uploading dirty cached files to the server, in the background.

Owns the upload workers (one per dirty file at most, all in the nursery of `run`). A file is
scheduled at the release of its last writable handle (`closed`), on fsync, after a crash (at
start), and when dirty bytes pass `max_dirty`; one released waits in `quiet.QuietQueue`,
with no task of its own, until due (or someone waits for it). Its worker waits while the file
is open for writing (`held`) and then for the *quiet period*: until the file was left alone
(no write, truncate, or change of the metadata it is uploaded with, no writable release:
`CachedFile.changed`) for `delay` seconds — so what tar, rsync and cp change right after close
(times, mode, owner, xattrs) goes up with the content in the one request — and then, while
kernel requests keep coming (`Foreground`: a program writing a tree), until they pause, for at
most `defer` seconds more: every step of an upload (reading the body, signing, the request,
the index update) runs on the thread that answers the kernel, so an upload during a burst of
creates delays the creates (one run: 2,000 small files closed in 4.2 s with no upload under
way, 7.1 s with the uploads beside them). Then it uploads a
consistent snapshot and marks it clean — or, when the file changed meanwhile, abandons the
stale upload and starts again; on failure it retries with a growing delay (the file stays
dirty, its state says why). Someone waiting for the file (fsync, `bucketfs flush`, unmount,
`max_dirty`) skips both waits.

Invariants:
- an upload is a snapshot of one generation: every byte is read while the generation is
  unchanged, and `complete` is not sent if it changed, so the server never holds a mix;
- a multipart upload that does not complete is aborted, and its id is in the index's journal
  from before its first part until the server confirmed its end (`early.py`: the next mount
  aborts what a kill left); a large new file's parts may have gone while it was written
  (`early.py`), the due upload then sends only what is missing (beside the early parts
  still in flight, whose answers it waits for before completing) and restamps the metadata;
- unchanged ranges of a large object are copied on the server (UploadPartCopy), not re-sent;
- a file open for writing is uploaded only when someone waits for it (`flush`: fsync, `bucketfs
  flush`, unmount, `max_dirty`), never because one of its descriptors was closed: a shell's
  `echo v > f` closes a duplicate first and must not upload the truncated file (one upload per
  save);
- `flush(cf)` returns only once a generation at least as new as the one it saw is uploaded,
  and raises the error of a failed attempt instead of waiting forever;
- nothing here is awaited by a close: `closed` only records and schedules.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from bucketfs.backends.base import MAX_PARTS, MIN_PART_SIZE, Backend
from bucketfs.cache.early import EarlyParts
from bucketfs.cache.quiet import FOREGROUND_IDLE, QuietQueue
from bucketfs.cache.store import BlockCache, CachedFile
from bucketfs.concurrency import Foreground, for_each
from bucketfs.errors import BucketfsError, CacheError, NotFound, PreconditionFailed
from bucketfs.types import PutResult, WriteOptions

log = logging.getLogger(__name__)

#: metadata key tagging our uploads with "<cache id>:<file id>" (hidden from xattrs)
UPLOAD_TAG = "bucketfs.upload"
RETRY_FIRST = 1.0
#: attempts a waiting flush/fsync makes before it reports the upload's failure
FLUSH_ATTEMPTS = 3
#: after a stale upload, the file is uploaded again once quiet for this long (or `delay`)
STALE_SETTLE = 1.0
#: the longest a writable open waits for the upload of the file's previous save
PREVIOUS_SAVE_WAIT = 5.0
RETRY_MAX = 60.0


class StaleUpload(BucketfsError):
    """The file changed while it was being uploaded: that upload is abandoned."""


@dataclass(frozen=True, slots=True)
class Uploaded:
    file: CachedFile
    generation: int
    result: PutResult
    size: int


class WriteBack:
    def __init__(
        self,
        cache: BlockCache,
        backend: Backend,
        *,
        delay: float = 0.0,
        part_size: int = 16 << 20,
        max_files: int = 4,
        max_parts: int = 8,
        on_uploaded: Callable[[Uploaded], None] = lambda _: None,
        on_conflict: Callable[[CachedFile, str], None] = lambda _cf, _key: None,
        held: Callable[[CachedFile], bool] = lambda _: False,
        defer: float = 0.0,
        foreground: Foreground | None = None,
        early_parts: str = "off",
        volatile: tuple[str, ...] = (),
    ) -> None:
        self.cache = cache
        self.backend = backend
        self.delay = delay
        #: how long a due upload may wait more while kernel requests keep coming
        self.defer = defer
        self._foreground = foreground
        #: set once the kernel's requests paused (`_until_calm`); None: no upload waits
        self._calm: trio.Event | None = None
        #: workers waiting for such a pause -> their wait, which a kick cancels
        self._deferring: dict[CachedFile, trio.CancelScope] = {}
        self.part_size = part_size
        self._files = trio.CapacityLimiter(max_files)
        self._parts = trio.CapacityLimiter(max_parts)
        self._on_uploaded = on_uploaded
        self._on_conflict = on_conflict
        #: whether a file is open for writing (its upload waits for the last release)
        self._held = held
        self._nursery: trio.Nursery | None = None
        #: a worker per file object (ids of deleted files may be reused) -> "run now"; a file
        #: in `_quiet` has this entry but no task yet
        self._workers: dict[CachedFile, trio.Event] = {}
        self._quiet = QuietQueue(
            delay=delay,
            defer=defer,
            foreground=foreground,
            due=self._spawn,
            until_calm=self._until_calm,
        )
        #: a worker waiting while its file is open for writing -> "released or kicked"
        self._wakes: dict[CachedFile, trio.Event] = {}
        #: files whose upload attempt runs (or waits for an upload slot): due, not superseded
        self._attempting: set[CachedFile] = set()
        self._worker_ended = trio.Event()
        self.uploaded_bytes = 0
        self.uploads = 0
        self.last_errors: list[str] = []
        self._rate: list[tuple[float, int]] = []
        cache.on_forget = self._forgotten
        #: parts of large new files sent while they are written, and the upload ids' journal
        self.early = EarlyParts(
            cache,
            backend,
            self._parts,
            mode=early_parts,
            part_size=part_size,
            held=held,
            options=self._options,
            volatile=volatile,
        )
        cache.on_write = self.early.wrote

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.early.attach(nursery)
            for cf in self.cache.dirty_files():
                if cf.key is not None:
                    log.info("recovering %s/%s from the cache (%s)", cf.bucket, cf.key, cf.state)
                    self.schedule(cf, now=True)
            nursery.start_soon(self._quiet.run)
            task_status.started()
            await trio.sleep_forever()

    # --- scheduling --------------------------------------------------------------------------

    def schedule(self, cf: CachedFile, *, now: bool = False) -> None:
        if not cf.dirty or cf.key is None:
            return
        if cf in self._workers:
            if now:
                self._kick(cf)
            return
        kick = trio.Event()
        self._workers[cf] = kick
        if now:
            kick.set()
            self._spawn(cf)
            return
        self._quiet.add(cf)

    def _spawn(self, cf: CachedFile) -> None:
        assert self._nursery is not None, "WriteBack.run() has not started"
        self._nursery.start_soon(self._worker, cf)

    async def flush(self, cf: CachedFile) -> None:
        """Return once the file's content as of now is on the server."""
        target = cf.generation
        failures = 0
        while cf.dirty and cf.key is not None and cf.uploaded_generation < target:
            progress = cf.progress
            self.schedule(cf, now=True)
            self._kick(cf)
            await progress.wait()
            if cf.state == "failed" and cf.uploaded_generation < target:
                failures += 1
                if failures < FLUSH_ATTEMPTS:
                    continue  # at once again: a server just back often fails the first try
                errno = cf.failure.errno if cf.failure is not None else CacheError.errno
                raise CacheError(f"upload failed: {cf.error}", errno=errno)

    def _kick(self, cf: CachedFile) -> None:
        """Someone waits for the file: its worker uploads now, open for writing or not."""
        kick = self._workers.get(cf)
        if kick is not None:
            kick.set()
            if self._quiet.take(cf):
                self._spawn(cf)
        deferring = self._deferring.get(cf)
        if deferring is not None:
            deferring.cancel()
        self.released(cf)

    def closed(self, cf: CachedFile) -> None:
        """The file's last writable handle was released: it is uploaded once left alone for
        `delay` from now (at once without a delay). Never waits."""
        cf.changed = trio.current_time()
        self.released(cf)
        self.schedule(cf, now=not self.delay)

    def released(self, cf: CachedFile) -> None:
        """The file's last writable handle was released (or a wait must end): a worker
        waiting for that looks again."""
        wake = self._wakes.pop(cf, None)
        if wake is not None:
            wake.set()
        self.early.wake(cf)  # its early parts go at full speed now

    async def previous_save(self, cf: CachedFile) -> None:
        """A writer is about to open a file whose last save is still on its way: if that
        save's upload is due (its attempt runs or waits for a slot, someone asked for it, or
        there is no `delay`), let it finish (or fail once) first, so that each save that
        went out is one version and an `O_TRUNC` never cuts the content a release handed to
        the write-back. A save still in its quiet period is superseded instead: no wait, no
        version of its own (saves within `delay` merge on purpose). Only for a file sent in
        one PUT (a multipart upload of a large file is cancelled by the next write anyway:
        its quick saves merge) and for at most PREVIOUS_SAVE_WAIT; not for a failing upload
        (an outage must not block writers), not while another writer holds the file."""
        kick = self._workers.get(cf)
        if kick is None or not cf.dirty or cf.key is None:
            return
        if not (kick.is_set() or cf in self._attempting):
            return  # in its quiet period: this open supersedes it
        if cf.size > self.part_size or cf.state == "failed" or self._held(cf):
            return
        with trio.move_on_after(PREVIOUS_SAVE_WAIT):
            await cf.progress.wait()

    async def drain(self) -> list[CachedFile]:
        """Upload every dirty file now; returns those that could not be uploaded."""
        failed: list[CachedFile] = []

        async def one(cf: CachedFile) -> None:
            try:
                await self.flush(cf)
            except BucketfsError:
                failed.append(cf)

        async with trio.open_nursery() as nursery:
            for cf in self.cache.dirty_files():
                if cf.key is not None:
                    nursery.start_soon(one, cf)
        return failed

    # --- the worker --------------------------------------------------------------------------

    async def _worker(self, cf: CachedFile) -> None:
        retry = RETRY_FIRST
        quiet = self.delay
        try:
            while cf.dirty and cf.key is not None:
                await self._until_due(cf, self._workers[cf], quiet)
                if not cf.dirty or cf.key is None:
                    break  # deleted (or uploaded by a flush) while we waited
                self._workers[cf] = trio.Event()
                try:
                    await self._attempt(cf)
                    retry, quiet = RETRY_FIRST, self.delay
                except StaleUpload:
                    # still being written: again once quiet (unless someone waits for it)
                    quiet = max(self.delay, STALE_SETTLE)
                    continue
                except Exception as exc:
                    if not isinstance(exc, BucketfsError):
                        log.exception("upload of %s/%s failed", cf.bucket, cf.key)
                        exc = CacheError(f"internal error: {exc!r}")
                    cf.failure = exc
                    try:
                        self.cache.mark_failed(cf, str(exc))
                    except BucketfsError as also:  # e.g. the cache disk is full too
                        log.warning("could not record the failure of %s: %s", cf.key, also)
                        cf.state, cf.error = "failed", str(exc)
                    self._note_error(cf, exc)
                    self._progress(cf)
                    log.warning(
                        "upload of %s/%s failed, retrying in %.0f s: %s",
                        cf.bucket,
                        cf.key,
                        retry,
                        exc,
                    )
                    with trio.move_on_after(retry * (0.5 + random.random())):
                        await self._workers[cf].wait()
                    retry = min(retry * 2, RETRY_MAX)
        finally:
            self._workers.pop(cf, None)
            self._wakes.pop(cf, None)
            self._progress(cf)
            ended, self._worker_ended = self._worker_ended, trio.Event()
            ended.set()

    async def _until_due(self, cf: CachedFile, kick: trio.Event, quiet: float) -> None:
        """Until the file may be uploaded: no handle has it open for writing and it was left
        alone for `quiet` seconds since its last change or release (`CachedFile.changed`,
        which any change moves on), and then the kernel's requests paused (at most `defer`
        seconds more, never with no quiet period) — or at once when someone waits for it
        (`kick`)."""
        deferred_until: float | None = None
        while not kick.is_set():
            if self._held(cf):
                wake = self._wakes[cf] = trio.Event()
                await wake.wait()  # the last writable release, or a kick
                continue
            now = trio.current_time()
            left = cf.changed + quiet - now
            if left > 0:
                with trio.move_on_after(left):
                    await kick.wait()
                continue
            fg = self._foreground
            if fg is None or quiet <= 0 or not fg.busy(FOREGROUND_IDLE):
                return
            if deferred_until is None:  # `defer` after the quiet period ended, at most
                deferred_until = cf.changed + quiet + self.defer
            if now >= deferred_until:
                return
            with trio.move_on_at(deferred_until) as scope:
                self._deferring[cf] = scope
                try:
                    await self._until_calm(fg)
                finally:
                    del self._deferring[cf]

    async def _until_calm(self, fg: Foreground) -> None:
        """Until no kernel request ran for FOREGROUND_IDLE seconds; one timer for every
        upload that waits for that (none when none waits: an idle daemon stays asleep)."""
        if self._calm is None:
            self._calm = calm = trio.Event()
            assert self._nursery is not None, "WriteBack.run() has not started"

            async def watch() -> None:
                # a timer, not an event per kernel request: their cost is what this saves
                while fg.busy(FOREGROUND_IDLE):  # noqa: ASYNC110
                    await trio.sleep(FOREGROUND_IDLE)
                self._calm = None
                calm.set()

            self._nursery.start_soon(watch)
        await self._calm.wait()

    def _forgotten(self, cf: CachedFile) -> None:
        """`cf` left the cache or lost its name: its worker (if any) ends now, not after
        `delay` (a file deleted before its upload would keep a task for that long)."""
        self._kick(cf)  # also ends a wait for the last writable release

    async def wait_idle(self) -> None:
        """Until no upload is scheduled or running (those that fail keep retrying: bound
        this wait with a timeout)."""
        while self._workers:
            await self._worker_ended.wait()

    def _progress(self, cf: CachedFile) -> None:
        event, cf.progress = cf.progress, trio.Event()
        event.set()

    def _note_error(self, cf: CachedFile, exc: BaseException) -> None:
        self.last_errors = [*self.last_errors[-9:], f"{cf.bucket}/{cf.key}: {exc}"]

    async def _attempt(self, cf: CachedFile) -> None:
        self._attempting.add(cf)
        try:
            await self._attempt_now(cf)
        finally:
            self._attempting.discard(cf)

    async def _attempt_now(self, cf: CachedFile) -> None:
        generation = cf.generation
        async with self._files:
            if cf.generation != generation or not cf.dirty or cf.key is None:
                raise StaleUpload()
            self.cache.mark_uploading(cf)
            try:
                with trio.CancelScope() as scope:
                    cf.upload_scope = scope
                    try:
                        size = cf.size
                        started = time.monotonic()
                        result = await self._upload(cf, generation, size)
                    finally:
                        cf.upload_scope = None
            except BaseExceptionGroup as group:
                # a write cancelled a multipart upload: once this scope took its Cancelled
                # back, what is left of the parts' group may be only StaleUploads
                if group.split(StaleUpload)[1] is None:
                    raise StaleUpload() from None
                raise
            if scope.cancelled_caught:
                raise StaleUpload()
        self.uploads += 1
        self.uploaded_bytes += size
        self._rate = [*self._rate[-19:], (time.monotonic(), size)]
        log.debug(
            "uploaded %s/%s (%d bytes) in %.3f s",
            cf.bucket,
            cf.key,
            size,
            time.monotonic() - started,
        )
        if self.cache.mark_clean(cf, generation, result.etag, size):
            self._on_uploaded(Uploaded(cf, generation, result, size))
        self._progress(cf)

    def upload_rate(self) -> float:
        """Bytes per second over the last uploads (0 when idle for a minute)."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self._rate if now - t < 60]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1.0)
        return sum(n for _, n in recent) / span

    # --- one upload --------------------------------------------------------------------------

    def _tag(self, cf: CachedFile) -> str:
        return f"{self.cache.cache_id}:{cf.id}"

    def _options(self, cf: CachedFile) -> WriteOptions:
        meta = cf.meta
        return WriteOptions(
            metadata={**meta.get("metadata", {}), UPLOAD_TAG: self._tag(cf)},
            content_type=meta.get("content_type"),
            system=dict(meta.get("system", {})),
        )

    async def _snapshot(self, cf: CachedFile, generation: int, start: int, end: int) -> bytes:
        await self.cache.materialize(cf, start, end)
        if cf.generation != generation:
            raise StaleUpload()
        data = await self.cache.read_local(cf, start, end)
        if cf.generation != generation:
            raise StaleUpload()
        return data

    def part_size_for(self, size: int) -> int:
        part = max(self.part_size, MIN_PART_SIZE)
        while (size + part - 1) // part > MAX_PARTS:
            part *= 2
        return part

    def _expected(self, cf: CachedFile) -> str | None:
        """The ETag the server must still have for our upload to replace it: "" = no object,
        None = anything (a rename through this mount replaced the target on purpose)."""
        if cf.base_etag is not None and cf.base_key == cf.key:
            return cf.base_etag
        return None if cf.meta.get("replaces") else ""

    async def _upload(self, cf: CachedFile, generation: int, size: int) -> PutResult:
        assert cf.key is not None
        bucket, key = cf.bucket, cf.key
        opts = self._options(cf)
        expected = self._expected(cf)
        if size <= self.part_size:
            self.early.cancel(cf)  # truncated below a part since it started
            data = await self._snapshot(cf, generation, 0, size)
            # once sent, a request is let finish even if a write makes it stale: we must know
            # which version the server holds, or our next upload would see it as a conflict
            with trio.CancelScope(shield=True):
                try:
                    result = await self.backend.put(
                        bucket,
                        key,
                        data,
                        opts,
                        if_match=expected or None,
                        if_none_match=expected == "",
                    )
                except NotFound:
                    # deleted by another client meanwhile: our edit brings it back
                    result = await self.backend.put(bucket, key, data, opts, if_none_match=True)
                except PreconditionFailed:
                    ours = await self._our_object(cf)
                    if ours is None:
                        return await self._conflict(cf, generation, data, opts)
                    # our own upload whose answer never came: build on it
                    result = await self.backend.put(bucket, key, data, opts, if_match=ours)
                if cf.generation != generation or cf.key != key:
                    self.cache.stored(cf, key, result.etag, size)
                # else `mark_clean` records it, in the same commit (no checkpoint until then)
                return result
        if expected and await self._changed_on_server(cf, expected):
            data = await self._snapshot(cf, generation, 0, size)  # fails if ours is partial
            return await self._conflict(cf, generation, data, opts)
        part = self.part_size_for(size)
        bs = self.cache.block_size
        base_key, base_etag, base_size = cf.base_key, cf.base_etag, cf.base_size

        def copyable(start: int, end: int) -> bool:
            if base_etag is None or base_key is None or end > base_size:
                return False
            if end - start < MIN_PART_SIZE and end != size:
                return False
            return not any(i in cf.dirty_blocks for i in range(start // bs, (end - 1) // bs + 1))

        early = await self.early.take(cf, part)
        if early is not None and early.upload_id is not None:
            upload_id = early.upload_id
            # full parts of the file as it is (a truncate dropped those it cut already)
            etags = {n: etag for n, etag in early.sent.items() if n * part <= size}
        else:
            early = None
            upload_id = await self.backend.create_multipart(bucket, key, opts)
            self.early.journal(upload_id, bucket, key)
            etags = {}

        async def one(item: tuple[int, int]) -> None:
            number, start = item
            end = min(start + part, size)
            async with self._parts:
                if copyable(start, end):
                    assert base_key is not None
                    etags[number] = await self.backend.upload_part_copy(
                        bucket, key, upload_id, number, base_key, start, end, if_match=base_etag
                    )
                else:
                    data = await self._snapshot(cf, generation, start, end)
                    etags[number] = await self.backend.upload_part(
                        bucket, key, upload_id, number, data
                    )

        todo = [(n, start) for n, start in enumerate(range(0, size, part), start=1)]
        tasks = trio.CapacityLimiter(64)
        try:
            # beside the early parts still in flight, then what they did not bring
            flying = set(early.inflight) if early is not None else set()
            skip = etags.keys() | flying  # (once, not per part)
            await for_each([t for t in todo if t[0] not in skip], one, tasks)
            if early is not None:
                await self.early.landed(early)
                for n in flying:
                    if n in early.sent and n * part <= size:
                        etags[n] = early.sent[n]
                        self.early.used += 1
                await for_each([t for t in todo if t[0] not in etags], one, tasks)
            if cf.generation != generation:
                raise StaleUpload()
            if expected and await self._changed_on_server(cf, expected):
                raise PreconditionFailed(f"{key} changed on the server during the upload")
            with trio.CancelScope(shield=True):
                result = await self.backend.complete_multipart(
                    bucket, key, upload_id, sorted(etags.items())
                )
                self.early.ended(upload_id)
                self.cache.stored(cf, key, result.etag, size)
        except BaseException:
            if early is not None and early.inflight:
                # its early parts still in flight land on an aborted upload: the early task
                # aborts it again once they ended (on AWS a part that lands after the abort
                # keeps its storage until another abort)
                early.drop()
            if await self.early.abort(bucket, key, upload_id) and early is not None:
                self.early.wasted += len(early.sent)
                early.sent.clear()  # (counted here, not again by the early task)
            raise
        if early is None:
            return result
        with trio.CancelScope(shield=True):  # the final metadata (the mtime moved since)
            result = await self.early.restamp(bucket, key, early, opts, result)
            self.cache.stored(cf, key, result.etag, size)
        return result

    async def _changed_on_server(self, cf: CachedFile, expected: str) -> bool:
        assert cf.key is not None
        try:
            info = await self.backend.head(cf.bucket, cf.key)
        except NotFound:
            return False
        if info.etag == expected:
            return False
        if info.metadata.get(UPLOAD_TAG) == self._tag(cf):
            self.cache.stored(cf, cf.key, info.etag, info.size)  # ours, answer lost
            return False
        return True

    async def _our_object(self, cf: CachedFile) -> str | None:
        """The ETag of the object under the file's key if it is an upload of ours."""
        assert cf.key is not None
        try:
            info = await self.backend.head(cf.bucket, cf.key)
        except NotFound:
            return None
        if info.metadata.get(UPLOAD_TAG) != self._tag(cf):
            return None
        self.cache.stored(cf, cf.key, info.etag, info.size)
        return info.etag

    async def _conflict(
        self, cf: CachedFile, generation: int, data: bytes, opts: WriteOptions
    ) -> PutResult:
        """Another client changed the object since we based our edit on it: keep both. Ours
        goes to a conflict name next to it; theirs stays under the name."""
        if cf.key is None:
            raise StaleUpload()  # deleted or replaced through the mount meanwhile
        name = conflict_name(cf.key, time.time())
        log.warning(
            "%s/%s was changed by another client since it was opened here: keeping theirs, "
            "saving ours as %s",
            cf.bucket,
            cf.key,
            name,
        )
        result = await self.backend.put(cf.bucket, name, data, opts, if_none_match=True)
        original = cf.key
        self.cache.move(cf, cf.bucket, name)
        self._on_conflict(cf, original)
        return result


def conflict_name(key: str, when: float) -> str:
    """`dir/report.txt` -> `dir/report.conflict-20261121T101500Z.txt`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    head, _, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    new = f"{stem}.conflict-{stamp}" + (f".{ext}" if ext else "")
    return f"{head}/{new}" if head else new
