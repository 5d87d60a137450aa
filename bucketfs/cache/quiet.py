"""The write-back's queue of files in their quiet period: released, not yet due, no task each.

Owns the queue (first released, first out) and the one task that starts a file's upload
worker once the file is due: its quiet period (`delay` since `CachedFile.changed`) ended and
the kernel's requests paused, or `defer` seconds more passed while they kept coming (the same
rule as `WriteBack._until_due`, which the worker still applies). Before it, every release
started a worker task that slept through the quiet period in a cancel scope of its own and
then waited for the pause: a burst of 2,000 creates left 2,000 tasks, timers and scopes
behind it, ~10% of the daemon's CPU per created file (docs/maintainers/performance.md,
"Session 17, small files").

Invariants: a file is in the queue at most once and only while it has no worker; `take`
removes it (someone waits for it: its worker starts at once); the first file is never
waited for past its own due time, and one whose quiet period moved on since it was queued (a
change after its release) goes to the back, so it holds back no file released after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from bucketfs.cache.cachedfile import CachedFile
from bucketfs.concurrency import Foreground

#: the kernel's requests count as paused once none ran for this long
FOREGROUND_IDLE = 0.05


class QuietQueue:
    def __init__(
        self,
        *,
        delay: float,
        defer: float,
        foreground: Foreground | None,
        due: Callable[[CachedFile], None],
        until_calm: Callable[[Foreground], Awaitable[None]],
    ) -> None:
        self.delay = delay
        self.defer = defer
        self._foreground = foreground
        #: told when a file is due (the write-back starts its worker)
        self._due = due
        self._until_calm = until_calm
        #: file -> when its quiet period ended as it was queued
        self._queued: dict[CachedFile, float] = {}
        #: set when a file arrives in an empty queue
        self._arrived = trio.Event()

    def __contains__(self, cf: CachedFile) -> bool:
        return cf in self._queued

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, cf: CachedFile) -> None:
        if not self._queued:
            self._arrived.set()
        self._queued[cf] = cf.changed + self.delay

    def take(self, cf: CachedFile) -> bool:
        """Out of the queue (its worker starts now); whether it was in it."""
        return self._queued.pop(cf, None) is not None

    async def run(self) -> None:
        """Hand each file to `due` once due, first queued first."""
        queued = self._queued
        while True:
            if not queued:
                self._arrived = trio.Event()
                await self._arrived.wait()
                continue
            cf, queued_due = next(iter(queued.items()))
            due = cf.changed + self.delay
            now = trio.current_time()
            if now < due:
                if due > queued_due:  # changed since it was queued: behind the others
                    del queued[cf]
                    queued[cf] = due
                    continue
                await trio.sleep_until(due)
                continue
            fg = self._foreground
            busy = fg is not None and self.delay > 0 and fg.busy(FOREGROUND_IDLE)
            if fg is not None and busy and now < due + self.defer:
                with trio.move_on_at(due + self.defer):
                    await self._until_calm(fg)
                continue
            del queued[cf]
            self._due(cf)
