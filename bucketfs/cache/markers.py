"""Directory markers sent in the background: `mkdir` returns once its marker is journaled.

Owns the `dir/` marker objects that `mkdir` made and the server has not confirmed yet
(`PendingMarker`), their journal in the cache index (the `markers` table, index.py), the tasks
that send them (in the nursery of `run`, at most `max_parallel` PUTs in flight, each once its
directory was left alone for `delay` seconds), and what the namespace asks of them: whether a
directory waits for its marker (`pending`) and which do in a directory (`children`), so that a
listing from the server that lacks them does not hide them.

Why a queue of its own and not a zero-byte dirty file of the write-back: a marker has no
content, no blocks, no data file, no generation of bytes, no conflict to detect and no writer
to wait for; what it needs is what deferred deletes (deletes.py) have: a keyed journal row, a
retry, a flush, an order with the other requests on the same names. One INSERT per mkdir.

Invariants:
- with a journal, a marker is recorded (bucket, key, the metadata it will carry) before `add`
  returns, and leaves the journal only once the server confirmed a PUT of its latest metadata,
  or when its directory was removed before that (`remove`); a daemon killed after `mkdir`
  returned sends the marker at the next mount (`attach`, before the mount is visible);
- every PUT goes through `DeferredDeletes`, so a marker waits for the queued deletes of the
  same entry, of the entries on its path and of those under it (`rm x; mkdir x`,
  `rmdir d; mkdir d`): the order deletes.py keeps for every write;
- `update` (chmod, chown, utime, an xattr of a directory whose marker is pending) changes what
  the pending PUT carries, journaled first; a PUT in flight when it changes is sent again;
- `remove` (rmdir) of a marker never attempted sends nothing; one that may have reached the
  server (an attempt failed, or it was made by an earlier run) gets its delete queued before
  it leaves the journal; one in flight lands first and is then the caller's to delete;
- a failed PUT keeps the marker pending with its error (`failed`, `bucketfs status`) and is
  tried again after RETRY_MIN seconds, doubling up to RETRY_MAX; `flush` tries at once and
  raises the error of an attempt that failed while it waited;
- outside `run()` (before the mount serves, after it stopped) `add` PUTs the marker at once and
  `flush` sends what is pending itself;
- a marker is sent only once no marker of an ancestor directory is pending (an ancestor's is
  kicked, not waited for to be due): SeaweedFS 4.x loses a `d/` marker it answered 200 for when
  a PUT under it (`d/sub/`) runs at the same time (2 of 100 tries of the pair on loopback);
  parents first is the order `mkdir -p` made them in anyway;
- whoever `watch`es is told of every marker confirmed while pending, before anything waiting
  for it goes on: from then on the directory is no longer shown from here, so what the
  namespace holds of listings made while it was pending (which lack it) must learn of it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from bucketfs.cache.deletes import DeferredDeletes
from bucketfs.concurrency import for_each
from bucketfs.errors import BucketfsError, CacheError
from bucketfs.types import WriteOptions

log = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 1.0, 60.0


class Journal(Protocol):
    """Where pending markers survive a crash (`cache.index.CacheIndex`)."""

    def add_marker(self, bucket: str, key: str, meta: dict[str, Any]) -> None: ...

    def remove_markers(self, items: Iterable[tuple[str, str]]) -> None: ...

    def pending_markers(self) -> list[tuple[str, str, dict[str, Any]]]: ...


def _meta(opts: WriteOptions) -> dict[str, Any]:
    return {
        "metadata": dict(opts.metadata),
        "content_type": opts.content_type,
        "system": dict(opts.system),
    }


def _opts(meta: dict[str, Any]) -> WriteOptions:
    return WriteOptions(
        dict(meta.get("metadata", {})), meta.get("content_type"), dict(meta.get("system", {}))
    )


def split_key(key: str) -> tuple[str, str]:
    """A marker's key "a/b/" as (its directory's parent prefix "a/", its name "b")."""
    path = key[:-1]
    cut = path.rfind("/") + 1
    return path[:cut], path[cut:]


class _Attempt:
    """One try at sending a marker: `done` once it ended; `error` None when the marker is no
    longer pending (sent, or its directory removed)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BucketfsError | None = None


class PendingMarker:
    """A directory's marker the server has not confirmed yet."""

    __slots__ = (
        "attempt",
        "bucket",
        "due",
        "error",
        "generation",
        "key",
        "kick",
        "maybe_sent",
        "opts",
        "sending",
        "settled",
    )

    def __init__(
        self, bucket: str, key: str, opts: WriteOptions, *, due: float, maybe_sent: bool
    ) -> None:
        self.bucket = bucket
        self.key = key
        #: what the PUT carries (the directory's mode, owner, times, user metadata)
        self.opts = opts
        #: bumped by every `update`: a PUT of an older one is sent again
        self.generation = 0
        #: when the marker goes (trio's clock): `delay` after the last change
        self.due = due
        #: a PUT of it may have reached the server (an attempt was made, here or before)
        self.maybe_sent = maybe_sent
        self.sending = False
        self.settled = trio.Event()  # set when the PUT in flight ended
        self.kick = trio.Event()  # someone waits for it: send now
        self.attempt = _Attempt()
        self.error: BucketfsError | None = None

    @property
    def item(self) -> tuple[str, str]:
        return (self.bucket, self.key)


class Markers:
    def __init__(
        self, backend: DeferredDeletes, *, delay: float = 0.0, max_parallel: int = 16
    ) -> None:
        self._backend = backend
        self.delay = delay
        self._limiter = trio.CapacityLimiter(max_parallel)
        self._pending: dict[tuple[str, str], PendingMarker] = {}
        #: (bucket, parent prefix) -> {name: marker}, for listings
        self._by_parent: dict[tuple[str, str], dict[str, PendingMarker]] = {}
        self._journal: Journal | None = None
        self._unrecorded: list[tuple[str, str]] = []
        self._nursery: trio.Nursery | None = None
        #: told (bucket, parent prefix, name) of each marker confirmed while pending
        self._watchers: list[Callable[[str, str, str], None]] = []
        self.sent = 0

    # --- what the namespace and status ask ---------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._pending)

    def pending(self, bucket: str | None, key: str) -> PendingMarker | None:
        """The pending marker `key` (none in the list of buckets: `bucket` None)."""
        return None if bucket is None else self._pending.get((bucket, key))

    def children(self, bucket: str | None, prefix: str) -> dict[str, PendingMarker]:
        """The directories directly in directory `prefix` whose markers are pending, by name."""
        return {} if bucket is None else dict(self._by_parent.get((bucket, prefix), {}))

    def names(self) -> list[str]:
        """Every pending marker as "bucket/key/" (what an unmount leaves to the next mount)."""
        return sorted(f"{b}/{k}" for b, k in self._pending)

    def failed(self) -> dict[str, str]:
        """Markers whose last attempt failed: "bucket/key/" -> its error."""
        return {f"{p.bucket}/{p.key}": str(p.error) for p in self._pending.values() if p.error}

    def watch(self, sent: Callable[[str, str, str], None]) -> None:
        """Call `sent(bucket, parent prefix, name)` for each marker the server confirmed while
        it was pending (not for one `add` PUT at once: that is done when `add` returns)."""
        self._watchers.append(sent)

    # --- the queue ---------------------------------------------------------------------------

    def attach(self, journal: Journal) -> None:
        """Journal markers in `journal`; queue those it kept from an earlier run (each may
        have reached the server already: it was sent, or not, before the daemon died)."""
        self._journal = journal
        for bucket, key, meta in journal.pending_markers():
            if (bucket, key) not in self._pending:
                log.info("sending the marker of %s/%s (made before a restart)", bucket, key)
                self._register(PendingMarker(bucket, key, _opts(meta), due=0.0, maybe_sent=True))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send pending markers until cancelled (what is left then, `flush` sends)."""
        async with trio.open_nursery() as nursery:
            try:
                self._nursery = nursery
                for p in list(self._pending.values()):
                    nursery.start_soon(self._worker, p)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def add(self, bucket: str, key: str, opts: WriteOptions) -> None:
        """`mkdir`: the marker `key` will be PUT with `opts`; journaled when this returns."""
        if self._nursery is None or self._journal is None:
            await self._backend.put(bucket, key, b"", opts)
            return
        if (bucket, key) in self._pending:  # not expected: the name was free
            self.update(bucket, key, opts)
            return
        try:
            self._journal.add_marker(bucket, key, _meta(opts))
        except CacheError as exc:
            log.debug("sending the marker %s/%s at once: %s", bucket, key, exc)
            await self._backend.put(bucket, key, b"", opts)
            return
        if (bucket, key) in self._unrecorded:  # a later retry must not take the new row out
            self._unrecorded.remove((bucket, key))
        p = PendingMarker(bucket, key, opts, due=trio.current_time() + self.delay, maybe_sent=False)
        self._register(p)
        self._nursery.start_soon(self._worker, p)

    def update(self, bucket: str, key: str, opts: WriteOptions) -> bool:
        """The directory's attributes changed: if its marker is pending, the PUT carries them
        (True); else the caller writes the marker itself (False)."""
        p = self._pending.get((bucket, key))
        if p is None:
            return False
        if self._journal is not None:
            self._journal.add_marker(bucket, key, _meta(opts))
        p.opts = opts
        p.generation += 1
        if self._nursery is not None:
            p.due = max(p.due, trio.current_time() + self.delay)
        return True

    async def remove(self, bucket: str, key: str) -> bool:
        """`rmdir`: True if the marker was pending and is no more (nothing sent, or its delete
        queued here); False if it is not pending (on the server: the caller deletes it)."""
        p = self._pending.get((bucket, key))
        if p is None:
            return False
        while p.sending:  # a PUT in flight lands first
            await p.settled.wait()
        if self._pending.get(p.item) is not p:
            return False
        if p.maybe_sent:
            await self._backend.defer_delete(bucket, key)
        if self._journal is not None:
            self._journal.remove_markers([p.item])
        self._unregister(p)
        return True

    async def flush(self, bucket: str | None = None, prefix: str = "") -> None:
        """Return once no marker under `prefix` (in `bucket`, in any if None) is pending;
        raise the error of an attempt that failed meanwhile."""
        while True:
            todo = [
                p
                for p in self._pending.values()
                if (bucket is None or p.bucket == bucket) and p.key.startswith(prefix)
            ]
            if not todo:
                return
            if self._nursery is None:  # parents first (see the module's invariants)
                depth = min(p.key.count("/") for p in todo)
                top = [p for p in todo if p.key.count("/") == depth]
                await for_each(top, self._send_or_raise, self._limiter)
                continue
            for p in todo:
                p.kick.set()
            for p in todo:
                if self._pending.get(p.item) is p:
                    attempt = p.attempt
                    await attempt.done.wait()
                    if attempt.error is not None:
                        raise attempt.error

    # --- sending -----------------------------------------------------------------------------

    def _register(self, p: PendingMarker) -> None:
        self._pending[p.item] = p
        parent, name = split_key(p.key)
        self._by_parent.setdefault((p.bucket, parent), {})[name] = p

    def _unregister(self, p: PendingMarker) -> None:
        """No longer pending: its worker ends, whoever waits for it goes on."""
        if self._pending.get(p.item) is p:
            del self._pending[p.item]
        parent, name = split_key(p.key)
        siblings = self._by_parent.get((p.bucket, parent))
        if siblings is not None and siblings.get(name) is p:
            del siblings[name]
            if not siblings:
                del self._by_parent[(p.bucket, parent)]
        attempt, p.attempt = p.attempt, _Attempt()
        attempt.done.set()
        p.kick.set()

    def _pending_ancestor(self, p: PendingMarker) -> PendingMarker | None:
        """The nearest ancestor directory's marker still pending, if any."""
        key = p.key.rstrip("/")
        while (cut := key.rfind("/")) >= 0:
            key = key[:cut]
            ancestor = self._pending.get((p.bucket, key + "/"))
            if ancestor is not None:
                return ancestor
        return None

    async def _after_ancestors(self, p: PendingMarker) -> None:
        """Wait until no ancestor's marker is pending (see the module's invariants)."""
        while self._pending.get(p.item) is p and (ancestor := self._pending_ancestor(p)):
            if ancestor.error is None:  # a failed one keeps its retry delay
                ancestor.kick.set()
            await ancestor.attempt.done.wait()

    async def _worker(self, p: PendingMarker) -> None:
        delay = RETRY_MIN
        while self._pending.get(p.item) is p:
            while not p.kick.is_set() and trio.current_time() < p.due:  # `update` moves it
                with trio.move_on_at(p.due):
                    await p.kick.wait()
            if self._pending.get(p.item) is not p:  # removed (rmdir): nothing to send
                return
            await self._after_ancestors(p)  # before a slot: an ancestor may need one
            if self._pending.get(p.item) is not p:
                return
            async with self._limiter:
                if self._pending.get(p.item) is not p:
                    return
                sent = await self._send(p)
            if sent is False:
                p.due = trio.current_time() + delay * random.uniform(0.8, 1.2)
                delay = min(delay * 2, RETRY_MAX)

    async def _send_or_raise(self, p: PendingMarker) -> None:
        if self._pending.get(p.item) is p and await self._send(p) is False:
            assert p.error is not None
            raise p.error

    async def _send(self, p: PendingMarker) -> bool | None:
        """One PUT: True when the marker is confirmed (and no longer pending), False when it
        failed, None when it changed while in flight (to be sent again)."""
        generation = p.generation
        p.sending, p.settled = True, trio.Event()
        try:
            await self._backend.put(p.bucket, p.key, b"", p.opts)
        except BucketfsError as exc:
            log.warning("sending the marker %s/%s failed (retried): %s", p.bucket, p.key, exc)
            p.error = exc
            attempt, p.attempt = p.attempt, _Attempt()
            attempt.error = exc
            attempt.done.set()
            p.kick = trio.Event()  # the next try waits for its delay unless someone waits
            return False
        finally:
            p.maybe_sent = True
            p.sending = False
            p.settled.set()
        p.error = None
        self.sent += 1
        if p.generation != generation:
            return None
        if self._pending.get(p.item) is p:
            parent, name = split_key(p.key)
            for sent in self._watchers:  # before `_unregister` lets waiters go on
                sent(p.bucket, parent, name)
            self._unregister(p)
            self._forget(p.item)
        return True

    def _forget(self, item: tuple[str, str]) -> None:
        """Take a confirmed marker out of the journal; what cannot be taken out now is tried
        again with the next one (a replay would only PUT it again)."""
        if self._journal is None:
            return
        self._unrecorded.append(item)
        try:
            self._journal.remove_markers(self._unrecorded)
        except CacheError as exc:
            log.error("could not record %d confirmed markers: %s", len(self._unrecorded), exc)
            return
        self._unrecorded = []
