"""Early parts: a large new file's multipart upload, sent while the file is written.

Owns the `EarlyUpload` of each file that has one (`CachedFile.early`), the task that sends its
parts (`_pump`), and the journal of multipart upload ids (`uploads` in the cache's index) with
the abort, at the next mount, of those a killed daemon left (`recover`).

A file none of whose bytes come from a base object (a new file, or one truncated to zero: an
`O_TRUNC` of an existing object) written past `START_PARTS` parts starts a multipart upload; its
full parts go as soon as the writer moved past them: `WHILE_WRITING` in flight while a handle
has the file open for writing (the upload shares the CPU with the writer) and, with `auto`,
only while the machine has half a CPU idle (`spare_cpu`, from /proc/stat over CPU_WINDOW:
on a busy 2-core host a part sent beside the writer made its close 2.5x slower); the
write-back's `upload_parts` once it was released (its quiet period), CPU or not. The due
upload (`writeback.py`) then takes the upload over (`take`), sends what is missing (the
last part, parts a write changed) beside the early parts still in flight, and completes it
once those landed (`landed`); the final metadata is set by one copy of
the object onto itself (`restamp`), since the mtime moved since CreateMultipartUpload, and
only where the store does that in place across a network (`Backend.copy_in_place` and
`remote`: SeaweedFS, Swift; `-o early_parts=auto`, the default) or when asked (`-o
early_parts=on`, which also sends parts while written without looking at the CPU).

Invariants:
- the server's object is only ever what the due upload completes: a snapshot of one
  generation (`writeback.py`); a part sent early is used only if no write or truncate touched
  its bytes since they were read (`EarlyUpload.touched`), else it is sent again;
- an upload that can no longer complete (the file renamed, deleted, replaced, grown past
  what one copy can restamp, a part failed before the due upload took it over) is aborted;
  a stale due upload aborts it too; once taken, only the due upload aborts or completes it
  (a part failing then is sent again by it);
- parts in flight, early or due, are at most `upload_parts` (one shared limiter, held from
  a part's read until its answer): memory stays within `upload_parts` x `part_size`;
- every multipart upload id (early or not) is in the index before its first part is sent and
  leaves it only once the server confirmed its completion or its abort; `recover` aborts what
  an earlier run left there (a kill between CreateMultipartUpload's answer and the journal's
  commit is the one window left: one request's answer);
- the CreateMultipartUpload of a file still open for writing carries its metadata without
  the `volatile` keys (mtime, atime): between the completion and the restamp a reader sees
  the store's LastModified (later than the last write) instead of an older mtime.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

import trio

from bucketfs.backends.base import MAX_PARTS, MAX_PUT_SIZE, Backend
from bucketfs.cache.cachedfile import CachedFile, EarlyUpload
from bucketfs.cache.store import BlockCache
from bucketfs.errors import BucketfsError, NotFound
from bucketfs.types import PutResult, WriteOptions

log = logging.getLogger(__name__)

#: a new file starts its multipart upload once this many full parts are written
START_PARTS = 2
#: parts in flight while a handle has the file open for writing (then `upload_parts`)
WHILE_WRITING = 1
#: CPUs idle (of the machine's) for a part to start while the file is written (`spare_cpu`)
SPARE_CPU = 0.5
#: the idle share is measured over at least this long (seconds); parts held back look again
#: after it
CPU_WINDOW = 0.2
#: `-o early_parts=` values
MODES = ("auto", "on", "off")
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


def ready_parts(
    size: int, part: int, done: set[int] | dict[int, str], inflight: set[int], *, slack: int
) -> list[int]:
    """The numbers of the parts that may go now: full, wholly below `size - slack` (the
    writer moved past them), neither sent nor in flight."""
    full = max(0, size - slack) // part
    return [n for n in range(1, full + 1) if n not in done and n not in inflight]


def in_flight(writing: bool, most: int, spare: bool = True) -> int:
    """Parts an early upload keeps in flight: few while the writer is at work, and none then
    while the machine has no spare CPU (the upload would only slow the writer down)."""
    if not writing:
        return most
    return min(WHILE_WRITING, most) if spare else 0


def cpu_times(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs (idle counts iowait); None where unknown."""
    try:
        with open(path, "rb") as f:
            fields = f.readline().split()
        values = [int(v) for v in fields[1:9]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values)


def spare_cpu(before: tuple[int, int], after: tuple[int, int], cpus: int) -> bool:
    """Whether at least half a CPU was idle between two `cpu_times` samples."""
    idle, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return True
    return idle / total >= SPARE_CPU / max(1, cpus)


class EarlyParts:
    def __init__(
        self,
        cache: BlockCache,
        backend: Backend,
        parts: trio.CapacityLimiter,
        *,
        mode: str = "off",
        part_size: int = 16 << 20,
        held: Callable[[CachedFile], bool] = lambda _: False,
        options: Callable[[CachedFile], WriteOptions] = lambda _: WriteOptions(),
        volatile: tuple[str, ...] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"early_parts={mode!r}: one of {', '.join(MODES)}")
        self.cache = cache
        self.backend = backend
        self.mode = mode
        self.part_size = part_size
        self._parts = parts
        self._held = held
        self._options = options
        self._volatile = volatile
        #: auto mode saw a restamp change the ETag (the store copied the data): off from then
        self._copies_data = False
        self._nursery: trio.Nursery | None = None
        self._cpus = os.cpu_count() or 1
        self._cpu_sample: tuple[float, tuple[int, int] | None] = (0.0, None)
        #: (no window measured yet: held back until one is)
        self._spare = False
        #: parts held back while written because the machine had no spare CPU
        self.held_back = 0
        #: parts sent early; of those, used by a completed upload / sent and not used
        self.sent = 0
        self.used = 0
        self.wasted = 0
        self.restamps = 0

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self.recover)

    @property
    def enabled(self) -> bool:
        if self.mode == "auto":
            backend = self.backend
            return backend.copy_in_place is True and backend.remote and not self._copies_data
        return self.mode == "on"

    # --- the journal of upload ids --------------------------------------------------------

    def journal(self, upload_id: str, bucket: str, key: str) -> None:
        """Before the first part of `upload_id` is sent (the next mount aborts it)."""
        self.cache.index.add_upload(upload_id, bucket, key)

    def ended(self, upload_id: str) -> None:
        """The server confirmed the upload's completion or abort."""
        self.cache.index.remove_upload(upload_id)

    async def abort(self, bucket: str, key: str, upload_id: str) -> bool:
        """Abort an upload and forget it (an unknown upload is gone already); False if the
        server could not be asked (it stays in the journal)."""
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            try:
                await self.backend.abort_multipart(bucket, key, upload_id)
            except NotFound:
                pass
            except BucketfsError as exc:
                log.warning("could not abort upload %s of %s/%s: %s", upload_id, bucket, key, exc)
                return False
            self.ended(upload_id)
            return True
        return False

    async def recover(self) -> None:
        """Abort the multipart uploads an earlier run started and never ended (killed)."""
        pending = self.cache.index.pending_uploads()
        retry = RETRY_FIRST
        while pending:
            left = []
            for upload_id, bucket, key in pending:
                log.info(
                    "aborting upload %s of %s/%s left by an earlier run", upload_id, bucket, key
                )
                if not await self.abort(bucket, key, upload_id):
                    left.append((upload_id, bucket, key))
            pending = left
            if pending:
                await trio.sleep(retry * (0.5 + random.random()))
                retry = min(retry * 2, RETRY_MAX)

    # --- starting and feeding early uploads ---------------------------------------------------

    def wrote(self, cf: CachedFile) -> None:
        """After every write (`BlockCache.on_write`): start or wake the file's early upload.
        Cheap: this runs for every WRITE request."""
        up = cf.early
        slack = self.cache.block_size
        if up is not None:
            full = max(0, cf.size - slack) // up.part
            if full != up.seen:
                up.seen = full
                up.poke()
            return
        if (
            cf.size < START_PARTS * self.part_size + slack
            or cf.base_size > 0  # a part may come from the base object (UploadPartCopy)
            or cf.key is None
            or cf.upload_scope is not None
            or not cf.dirty
            or self._nursery is None
            or not self.enabled
        ):
            return
        opts = self._options(cf)
        writing = self._held(cf)
        if writing and self._volatile:
            metadata = {k: v for k, v in opts.metadata.items() if k not in self._volatile}
            opts = WriteOptions(metadata, opts.content_type, dict(opts.system))
        up = cf.early = EarlyUpload(cf.bucket, cf.key, self.part_size, opts)
        up.seen = max(0, cf.size - slack) // up.part
        self._nursery.start_soon(self._pump, cf, up)

    def spare(self) -> bool:
        """Whether the machine had a spare CPU lately (measured over CPU_WINDOW at least)."""
        now = trio.current_time()
        at, sample = self._cpu_sample
        if sample is not None and now - at < CPU_WINDOW:
            return self._spare
        current = cpu_times()
        if current is None:
            return True
        if sample is not None:
            self._spare = spare_cpu(sample, current, self._cpus)
        self._cpu_sample = (now, current)
        return self._spare

    def wake(self, cf: CachedFile) -> None:
        """The file was released (full speed now) or kicked."""
        if cf.early is not None:
            cf.early.poke()

    async def _pump(self, cf: CachedFile, up: EarlyUpload) -> None:
        try:
            upload_id = await self.backend.create_multipart(up.bucket, up.key, up.opts)
            self.journal(upload_id, up.bucket, up.key)
            up.upload_id = upload_id
            async with trio.open_nursery() as nursery:
                while not up.void and not up.taken:
                    woken = up.wake
                    if cf.size > MAX_PUT_SIZE or -(-cf.size // up.part) > MAX_PARTS:
                        up.drop()  # one copy onto itself could not restamp it
                        break
                    writing = self._held(cf)
                    slack = self.cache.block_size if writing else 0
                    ready = ready_parts(cf.size, up.part, up.sent, up.inflight, slack=slack)
                    spare = not (writing and ready) or self.mode != "auto" or self.spare()
                    limit = in_flight(writing, int(self._parts.total_tokens), spare)
                    for number in ready:
                        if len(up.inflight) >= limit:
                            break
                        up.inflight.add(number)
                        nursery.start_soon(self._send, cf, up, number)
                    if spare:
                        await woken.wait()
                    else:  # look again soon, writes or not
                        self.held_back += 1
                        with trio.move_on_after(CPU_WINDOW):
                            await woken.wait()
                if up.void:
                    nursery.cancel_scope.cancel()  # parts in flight are of no use now
        except BucketfsError as exc:
            log.info("early upload of %s/%s given up: %s", up.bucket, up.key, exc)
            up.void = True
        except Exception:  # a bug: the due upload sends the file; the mount goes on
            log.exception("early upload of %s/%s", up.bucket, up.key)
            up.void = True
        finally:
            if up.void:
                if cf.early is up:
                    cf.early = None
                self.wasted += len(up.sent)
                if up.upload_id is not None:
                    await self.abort(up.bucket, up.key, up.upload_id)
            up.poke()  # a `take` waiting for the parts in flight

    async def _send(self, cf: CachedFile, up: EarlyUpload, number: int) -> None:
        epoch = up.epochs.get(number, 0)
        start = (number - 1) * up.part
        try:
            async with self._parts:
                if up.void or up.epochs.get(number, 0) != epoch:
                    return
                data = await self.cache.read_local(cf, start, start + up.part)
                if up.void or up.epochs.get(number, 0) != epoch:
                    return
                assert up.upload_id is not None
                etag = await self.backend.upload_part(up.bucket, up.key, up.upload_id, number, data)
            self.sent += 1
            if not up.void and up.epochs.get(number, 0) == epoch:
                up.sent[number] = etag
        except BucketfsError as exc:
            log.info("early part %d of %s/%s failed: %s", number, up.bucket, up.key, exc)
            self._failed(up)
        except Exception:  # a bug: never the mount's end (the due upload sends the part)
            log.exception("early part %d of %s/%s", number, up.bucket, up.key)
            self._failed(up)
        finally:
            up.inflight.discard(number)
            up.poke()

    @staticmethod
    def _failed(up: EarlyUpload) -> None:
        """A part failed. Before the due upload took the upload over, the upload is given up
        (the due upload sends the file); once taken, the part is only not kept: the due upload
        sends it again (`landed`), and the upload it completes must not be aborted under it."""
        if not up.taken:
            up.drop()

    # --- the due upload ----------------------------------------------------------------------

    async def take(self, cf: CachedFile, part: int) -> EarlyUpload | None:
        """The due upload of `cf` (part size `part`) takes its early upload over (no part
        starts here from now on) once its CreateMultipartUpload answered; None if it has none
        it can use (one it cannot is aborted). Parts still in flight go on: the due upload
        sends the others meanwhile and waits for those (`landed`) before it completes (before
        session 18 it waited for them first: every slot they left idle until the last one
        landed was a slot no part used)."""
        up = cf.early
        if up is None:
            return None
        up.taken = True
        up.poke()
        while up.upload_id is None:
            if up.void:
                return None
            await up.wake.wait()  # (taken before looking: no checkpoint since)
        if up.void or up.key != cf.key or up.part != part:
            up.drop()
            if up.upload_id is not None:
                self.wasted += len(up.sent)
                await self.abort(up.bucket, up.key, up.upload_id)
            cf.early = None
            return None
        cf.early = None
        self.used += len(up.sent)
        return up

    async def landed(self, up: EarlyUpload) -> None:
        """Until no part of a taken upload is in flight (each one landed in `up.sent`, or
        failed or was changed meanwhile and is not there: the due upload sends it)."""
        while up.inflight:
            await up.wake.wait()  # (`_send` pokes as each one ends)

    def cancel(self, cf: CachedFile) -> None:
        """The file goes up in one PUT after all: its early upload is aborted (`_pump`)."""
        if cf.early is not None:
            cf.early.drop()
            cf.early = None

    async def restamp(
        self, bucket: str, key: str, up: EarlyUpload, opts: WriteOptions, result: PutResult
    ) -> PutResult:
        """The completed object gets the final metadata (one copy onto itself), unless its
        CreateMultipartUpload carried it already."""
        if (opts.metadata, opts.content_type, opts.system) == (
            up.opts.metadata,
            up.opts.content_type,
            up.opts.system,
        ):
            return result
        stamped = await self.backend.copy(bucket, key, key, opts, if_match=result.etag)
        self.restamps += 1
        if stamped.etag != result.etag and self.mode == "auto" and not self._copies_data:
            self._copies_data = True
            log.info(
                "early_parts=auto: %s copies an object's data to change its metadata; large "
                "files are uploaded after their quiet period from now on",
                self.backend.description,
            )
        return stamped
