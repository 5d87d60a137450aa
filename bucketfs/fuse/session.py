"""The pyfuse3 session of one mount: init, the main loop, and the order of the way out.

Owns pyfuse3's process-wide session (`pyfuse3.init` ... `pyfuse3.close`) and what only exists
while it runs: the kernel options, the mount's readahead (/sys/class/bdi), SIGTERM/SIGINT (they
unmount, through `fusermount.unmount_or_detach`), the task dump on SIGUSR1 (`taskdump.py`), the
/dev/fuse read watchdog (`readwatch.py`) and the bound on the inode table (`max_nodes`: the
kernel is asked to forget the coldest names). The program (`app/mount.py`) assembles the mount
and its services and hands the filesystem to `serve`.

Order on start: the task dump listens, pyfuse3 mounts (a failure is a `ConfigError` naming the
mountpoint), the read watchdog starts, then `on_mounted` (the mount is live), then signals and
readahead. Order on stop (kernel unmount, `bucketfs umount`, a signal, an error): pyfuse3's main
loop has returned, so no request is served any more; `on_stopping`; every dirty file is
uploaded (`BucketFS.drain`, bounded by `drain_timeout`; what is left is logged and stays in the
cache index for the next mount); the watchdog stops; pyfuse3 closes and unmounts.

Invariants: `on_mounted` is called at most once, only after `pyfuse3.init` succeeded;
once `pyfuse3.init` succeeded `pyfuse3.close` is always called, after the drain, even when the
main loop failed or was cancelled (the way out is shielded); the watchdog never outlives the
session; this module's tasks end with the session.
"""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from bucketfs.core.fs import BucketFS
from bucketfs.errors import ConfigError
from bucketfs.fuse import fusermount, readwatch
from bucketfs.fuse.ops import FuseOps
from bucketfs.fuse.prune import Pruner
from bucketfs.fuse.taskdump import dump_on_signal

log = logging.getLogger(__name__)

#: seconds between two rounds of forgetting while the table is above `max_nodes`, and the
#: names invalidated per worker-thread call (each a write to /dev/fuse that may wait for a
#: directory's lock; small batches keep the way out prompt). A prune takes no lock and the
#: kernel queues its FORGETs before the write returns, so the next round comes sooner.
BOUND_INTERVAL = 0.2
PRUNE_INTERVAL = 0.05
FORGET_BATCH = 512
#: readdir waits (`_NodeBound.room`) while the table holds more than this times `max_nodes`,
#: for ROOM_WAIT s at most per reply
ROOM_FACTOR = 1.5
ROOM_WAIT = 0.5
STOP_WAIT = 5.0

#: the kernel's readahead for this mount (128 KiB by default): larger means fewer, larger
#: read requests through Python for sequential readers (measured 8.8 -> 6.2 s for 1 GiB cold)
READ_AHEAD_KB = 16384


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What the kernel is told about the mount."""

    mountpoint: Path
    fsname: str
    allow_other: bool = False
    read_only: bool = False
    debug: bool = False
    #: nodes kept at most: above it the kernel is asked to forget the coldest names (0: no bound)
    max_nodes: int = 0


def fuse_options(options: SessionOptions) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts.add(f"fsname={options.fsname}")
    opts.add("subtype=bucketfs")
    opts.add("noatime")
    if options.allow_other:
        opts.add("allow_other")
    if options.read_only:
        opts.add("ro")
    if options.debug:
        opts.add("debug")
    return opts


async def serve(
    fs: BucketFS,
    options: SessionOptions,
    *,
    drain_timeout: float,
    on_mounted: Callable[[], None],
    on_stopping: Callable[[], None],
) -> None:
    """Mount `fs` (whose services already run) and serve it until unmounted, then drain."""
    mountpoint = options.mountpoint
    bounding = _NodeBound()
    async with trio.open_nursery() as nursery:
        await nursery.start(dump_on_signal)
        try:
            # the readahead is raised once the INIT reply (which sets it to 128 KiB) is written
            ops = FuseOps(
                fs,
                on_init=lambda: nursery.start_soon(_raise_readahead, mountpoint),
                room=bounding.room,
            )
            pyfuse3.init(ops, str(mountpoint), fuse_options(options))
        except RuntimeError as exc:
            raise ConfigError(f"cannot mount on {mountpoint}: {exc}") from exc
        unprotect = readwatch.protect()
        try:
            on_mounted()
            nursery.start_soon(_watch_signals, mountpoint)
            if options.max_nodes:
                pruner = Pruner(readwatch.fuse_fd())
                nursery.start_soon(bounding.run, fs, options.max_nodes, pruner)
            await pyfuse3.main()
        finally:
            with trio.CancelScope(shield=True):
                await bounding.stop()  # before pyfuse3.close: it writes to the session
                on_stopping()
                with trio.move_on_after(drain_timeout) as scope:
                    failed = await fs.drain()
                if scope.cancelled_caught or failed:
                    log.error("unmounted with data not uploaded: %s", failed or "timeout")
                unprotect()
                pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()


async def _watch_signals(mountpoint: Path) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: unmounting %s", signal.Signals(signum).name, mountpoint)
            await trio.to_thread.run_sync(fusermount.unmount_or_detach, mountpoint)


async def _raise_readahead(mountpoint: Path) -> None:
    """Best effort (needs root): /sys/class/bdi/<major:minor>/read_ahead_kb, right after the
    kernel's INIT was answered (its reply sets it to the negotiated 128 KiB). A file keeps the
    readahead it was opened with: one opened before this ran is read in 128 KiB requests, 8x
    as many as in 1 MiB ones (it was 1 s later, and the bench's cold read opened its file
    within that second). The device comes from mountinfo: a stat() of our own mountpoint
    would wait for us to answer it."""
    await trio.to_thread.run_sync(_set_readahead, mountpoint)


def _set_readahead(mountpoint: Path) -> None:
    try:
        device = None
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if fields[4] == str(mountpoint) and " - fuse" in line:
                    device = fields[2]
        if device is not None:
            Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise the readahead of %s: %s", mountpoint, exc)


class _NodeBound:
    """Keeps the inode table near `max_nodes`: the kernel holds a reference (a dentry) on every
    name it looked up and, with memory to spare, never lets go, so a `find` over a million keys
    kept a million nodes (~1 GiB). Above `max_nodes` the coldest names (nodes.py
    `cold_entries`) are pruned by inode number (prune.py: no directory lock, so it keeps up
    with a READDIRPLUS walk of one large directory) or, where the kernel does not take that,
    invalidated by name, until the table is back to 90 % of it; the kernel then sends FORGET
    and the table drops them. A name used again is simply looked up again."""

    def __init__(self) -> None:
        self._scope = trio.CancelScope()
        self._done: trio.Event | None = None
        self._over = trio.Event()
        #: set while `run` runs: readdir waits for room only then
        self._fs: BucketFS | None = None
        self._pruner = Pruner(None)
        self._room_limit = 0
        #: whether the last round found names to forget and the table shrank (else waiting
        #: would not help)
        self._forgetting = False
        #: set at the end of each round of forgetting (and replaced)
        self._round = trio.Event()

    async def room(self) -> None:
        """Before each READDIR(PLUS) reply (fuse/ops.py): while the table holds more than
        ROOM_FACTOR times the bound, wait (ROOM_WAIT at most) for the kernel's FORGETs. The
        reader's directory lock is held meanwhile, which a prune does not need (an
        invalidation would: then, and when nothing could be forgotten, it does not wait)."""
        fs = self._fs
        if fs is None or fs.node_count() <= self._room_limit:
            return
        if not (self._pruner.available and self._forgetting):
            return
        with trio.move_on_after(ROOM_WAIT):
            while fs.node_count() > self._room_limit and self._forgetting:
                await self._round.wait()

    def _wake(self) -> None:
        self._over.set()

    async def run(self, fs: BucketFS, max_nodes: int, pruner: Pruner) -> None:
        """Sleeps until the table grows past `max_nodes` (no timer: an idle daemon does not
        wake up), then has the coldest names forgotten, and looks again `PRUNE_INTERVAL` (or
        `BOUND_INTERVAL`) later (the kernel's FORGETs come meanwhile)."""
        self._done = trio.Event()
        low = max(1, max_nodes * 9 // 10)
        fs.watch_nodes(max_nodes, self._wake)
        self._fs, self._pruner = fs, pruner
        self._room_limit = int(max_nodes * ROOM_FACTOR)
        try:
            with self._scope:
                while True:
                    await self._over.wait()
                    self._over = trio.Event()
                    count = fs.node_count()
                    if count <= max_nodes:
                        continue
                    entries = fs.cold_entries(count - low)
                    self._forgetting = bool(entries)
                    started = trio.current_time()
                    # pruning takes no lock: one worker-thread call for all (each call waits
                    # for a turn of the trio loop); invalidation goes in small batches
                    step = max(1, len(entries)) if pruner.available else FORGET_BATCH
                    for i in range(0, len(entries), step):
                        batch = entries[i : i + step]
                        await trio.to_thread.run_sync(_forget, pruner, batch)
                    log.debug(
                        "node bound: %d nodes, %d asked to be forgotten (%s) in %.3f s",
                        count,
                        len(entries),
                        "pruned" if pruner.available else "invalidated",
                        trio.current_time() - started,
                    )
                    await trio.sleep(PRUNE_INTERVAL if pruner.available else BOUND_INTERVAL)
                    # a round that freed nothing (every name picked still in use) stops
                    # readdir's waiting: a reader is never held up for nothing
                    self._forgetting = self._forgetting and fs.node_count() < count
                    self._round.set()
                    self._round = trio.Event()
                    if fs.node_count() > max_nodes:
                        self._over.set()
        finally:
            fs.watch_nodes(0, lambda: None)
            self._fs = None
            self._round.set()
            self._done.set()

    async def stop(self) -> None:
        """Cancel, and wait for a batch being invalidated to end."""
        self._scope.cancel()
        if self._done is not None:
            with trio.move_on_after(STOP_WAIT):  # the kernel should answer at once
                await self._done.wait()


def _forget(pruner: Pruner, entries: list[tuple[int, int, str]]) -> None:
    """In a worker thread: the kernel waits for a request on the same directory or entry to be
    answered before it invalidates, and the trio thread answers it meanwhile."""
    if pruner.prune([ino for ino, _parent, _name in entries]):
        return
    for _ino, parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name.encode("utf-8"))
        except OSError as exc:  # ENOENT: the kernel had already let go
            if exc.errno != errno.ENOENT:
                log.debug("could not invalidate %r in inode %d: %s", name, parent, exc)
