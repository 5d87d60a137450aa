"""Metadata prefetch after a listing: the HEADs sent ahead of the kernel for the names a
readdir listed, whether readdir gave them a node or not.

Owns, per directory read lately, the queue of what its readdir snapshot listed (`defer`), how
far ahead of the kernel's questions HEADs go (`kick`), the HEADs in flight (`wait` for a node,
`wait_name` for a name), and what those HEADs found for names that had no node yet (`take`):
readdir shows small files without a node (readdir.py), and the lookup that comes for one of
them takes what the prefetch found instead of asking the server. What a HEAD means for a node
or a name is the namespace's business (`refresh`, `head_name`, namespace.py); this module only
decides when they are sent, keeps their answers for a short while, and lets a caller wait.

The window: the kernel's first question about a listed name of a directory (a lookup, or
getattr of a listed node: ls -l, du, rsync, tar c ask; find and plain ls do not) sends its
HEAD first and lets HEADs go out, in listing order from the first name, up to
`PREFETCH_ENTRIES` names past that one; every later
question moves the window's end past the name asked by what the kernel asks in half of
`fresh_for` at its pace so far (`LEAD_MIN` to `PREFETCH_ENTRIES`): an answer that ran out
before its lookup came is a HEAD sent twice. `ls -l` of 100,000 names, asking in listing
order, so keeps HEADs going just ahead of it to the end; a `stat` of one name costs at most
the first window. A question about a name that needs a HEAD and lies behind the
workers (its answer was used, or is too old) or a window past them moves them there.

Invariants: nothing is sent for a directory's listing until the kernel asks about one of its
listed names, nothing for an entry of a sure kind (a directory, or a file too large to be a
symlink) until the kernel asks its attributes (a lookup only needs kinds: `rm -rf` of large
files sends no HEAD), and never with `-o attrs=listing` (readdir.py defers nothing then); at
most `PREFETCH_PARALLEL` HEADs in flight in all, one per node or name at a time, and whoever
waits for one is woken whether it succeeded or failed; a failed prefetch is logged and
forgotten (the next question asks again); what a HEAD found for a name is used once, within
`fresh_for` of its answer, and never if this mount changed the name meanwhile (`changed`,
`clear`); queues hold the snapshots' entries of the directories read last, about
`QUEUED_MAX` entries in all (the newest whatever its size); without a nursery (before `run`)
nothing is prefetched.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from operator import itemgetter

import trio
from cachetools import LRUCache

from bucketfs.core.listing import Entry
from bucketfs.core.nodes import SYMLINK_MAX, Kind, Node
from bucketfs.errors import BucketfsError

log = logging.getLogger(__name__)

PREFETCH_PARALLEL = 32
#: how many listed names HEADs go ahead of the kernel's last question in a directory at most
PREFETCH_ENTRIES = 1024
#: and at least, once the kernel's pace is known: what a HEAD finds serves for `fresh_for`
#: (1 s by default), so the lead is what the kernel asks in half that time (`ls -l` of
#: 100,000 names asked ~600 a second: a lead of 1,024 HEADed most names twice)
LEAD_MIN = 2 * PREFETCH_PARALLEL
#: snapshot entries kept for the queues of all directories together (~300 bytes each)
QUEUED_MAX = 16384
#: answers for names without a node kept until a lookup takes them
FOUND_MAX = 2 * PREFETCH_ENTRIES

_name = itemgetter(0)


@dataclass(eq=False, slots=True)
class _Queue:
    """A directory's snapshot entries (the listing's first, in name order) and how far the
    prefetch went in them."""

    entries: list[tuple[str, Node | Entry]]
    listed: int  # the first `listed` entries are the listing's, ascending by name
    cursor: int = 0  # the next entry a worker takes
    until: int = 0  # workers stop before this one
    kinds: bool = True  # a lookup asked (kinds only), no getattr yet
    skipped: list[int] = field(default_factory=list)  # passed over while `kinds`
    workers: int = 0
    asked: int = 0  # the kernel's questions about its names
    changed: set[str] = field(default_factory=set)  # by this mount since: not HEADed
    first: float = 0.0  # when the first came (time.monotonic)


class Prefetch:
    def __init__(
        self,
        refresh: Callable[[Node], Awaitable[None]],
        head_name: Callable[[int, str, Entry], Awaitable[Entry | None]],
        child: Callable[[int, str], Node | None],
        *,
        fresh_for: float,
    ) -> None:
        """`refresh(node)` sends the HEAD of one listed node and applies what it says;
        `head_name(directory, name, entry)` that of a listed name with no node and says what
        it found; `child(directory, name)` is the inode table's node reachable by that name,
        if any; what a name's HEAD found serves a lookup for `fresh_for` seconds."""
        self._refresh = refresh
        self._head_name = head_name
        self._child = child
        self.fresh_for = fresh_for
        self.nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(PREFETCH_PARALLEL)
        #: HEADs in flight for nodes, by inode, and for names, by (directory, name)
        self._prefetching: dict[int, trio.Event] = {}
        self._naming: dict[tuple[int, str], trio.Event] = {}
        #: names changed through this mount while their HEAD was in flight
        self._stale: set[tuple[int, str]] = set()
        #: what HEADs found for names without a node, and until when it serves
        self._found: LRUCache[tuple[int, str], tuple[Entry, float]] = LRUCache(FOUND_MAX)
        #: by directory inode, least recently read or asked first
        self._queues: dict[int, _Queue] = {}
        self._queued = 0
        self.taken = 0  # answers `take` gave (status)

    # --- what readdir and the namespace tell --------------------------------------------------

    def defer(
        self, directory_ino: int, entries: list[tuple[str, Node | Entry]], listed: int
    ) -> None:
        """A readdir snapshot of the directory: `entries`, the first `listed` of them from the
        listing in name order. Their metadata is fetched once the kernel asks (`kick`)."""
        self.dropped(directory_ino)
        self._queues[directory_ino] = _Queue(entries, listed)
        self._queued += len(entries)
        while self._queued > QUEUED_MAX and len(self._queues) > 1:
            self.dropped(next(iter(self._queues)))

    def dropped(self, directory_ino: int) -> None:
        """The directory's node is gone, or a newer snapshot replaces its queue."""
        queue = self._queues.pop(directory_ino, None)
        if queue is not None:
            self._queued -= len(queue.entries)

    def changed(self, directory_ino: int, name: str) -> None:
        """This mount changed `name`: what a HEAD found of it no longer holds."""
        key = (directory_ino, name)
        self._found.pop(key, None)
        if key in self._naming:
            self._stale.add(key)
        queue = self._queues.get(directory_ino)
        if queue is not None:
            queue.changed.add(name)

    def clear(self) -> None:
        """Forget every answer (a conflict: names show the server's again)."""
        self._found.clear()
        self._stale.update(self._naming)

    # --- the kernel asks ----------------------------------------------------------------------

    def kick(self, directory_ino: int, name: str, *, kinds: bool = False) -> None:
        """The kernel asks about `name` of the directory: HEAD the listed names from there
        on (see the module docstring). A lookup (`kinds`) needs only kinds: it starts those
        whose kind the listing leaves unsure and leaves the others to getattr."""
        queue = self._queues.get(directory_ino)
        if queue is None or self.nursery is None:
            return
        position = bisect_left(queue.entries, name, hi=queue.listed, key=_name)
        if position >= queue.listed or queue.entries[position][0] != name:
            return  # not listed (made here since, or never there): no reason to go on
        if queue.entries[position][1].kind is Kind.DIR:
            return  # a directory's attributes are its marker's: nothing for its siblings
        # the most recently asked moves to the back (a dict keeps insertion order)
        del self._queues[directory_ino]
        self._queues[directory_ino] = queue
        if not kinds and queue.kinds:
            queue.kinds = False
            if queue.skipped:  # back to the first passed over: the others are quick to skip
                queue.cursor = min(queue.cursor, queue.skipped[0])
                queue.skipped.clear()
        queue.until = max(queue.until, position + self._lead(queue))
        # the name asked goes first: its HEAD is in flight from now on, unless done or going
        first = self._claim(directory_ino, queue, position)
        if first is not None:
            if position < queue.cursor or position - queue.cursor >= PREFETCH_ENTRIES:
                # behind the workers (its answer was used or too old) or far past them: they
                # go on from there
                queue.cursor = position + 1
            elif position == queue.cursor:
                queue.cursor += 1
            queue.workers += 1
            self.nursery.start_soon(self._work, directory_ino, queue, first)
        end = min(queue.until, len(queue.entries))
        while queue.workers < PREFETCH_PARALLEL and queue.workers < end - queue.cursor:
            queue.workers += 1
            self.nursery.start_soon(self._work, directory_ino, queue)

    def _lead(self, queue: _Queue) -> int:
        """How far past the name asked HEADs may go (see `LEAD_MIN`)."""
        now = time.monotonic()
        queue.asked += 1
        if queue.asked == 1:
            queue.first = now
            return PREFETCH_ENTRIES
        pace = queue.asked / max(now - queue.first, 1e-3)
        return min(PREFETCH_ENTRIES, max(LEAD_MIN, int(pace * self.fresh_for / 2)))

    async def wait(self, node: Node) -> None:
        """Until a prefetch HEAD of `node` in flight is answered (now if none is)."""
        event = self._prefetching.get(node.ino)
        if event is not None:
            await event.wait()

    async def wait_name(self, directory_ino: int, name: str) -> None:
        """Until a prefetch HEAD of the name in flight is answered (now if none is)."""
        event = self._naming.get((directory_ino, name))
        if event is not None:
            await event.wait()

    async def settle(self, directory_ino: int, names: list[str], *, kinds: bool) -> None:
        """Until the HEADs of these listed names (in listing order, none with a node) are
        answered: readdir waits for them while the kernel walks a tree (readdir.py `ahead`).
        The window starts at the first, as the kernel's question about it would start it
        (`kinds`: a lookup's, else getattr's); a name the workers have not reached yet is
        claimed here (`_claim` sends nothing twice). Every name is claimed before the first
        wait: one whose HEAD found nothing is not asked again."""
        queue = self._queues.get(directory_ino)
        if queue is None or self.nursery is None or not names:
            return
        self.kick(directory_ino, names[0], kinds=kinds)
        events = []
        heads: deque[Callable[[], Awaitable[None]]] = deque()
        for name in names:
            key = (directory_ino, name)
            event = self._naming.get(key)
            if event is None:  # (`_claim` passes over one found lately)
                position = bisect_left(queue.entries, name, hi=queue.listed, key=_name)
                if position >= queue.listed or queue.entries[position][0] != name:
                    continue
                head = self._claim(directory_ino, queue, position)
                if head is None:
                    continue
                heads.append(head)
                event = self._naming.get(key)  # none if it had a node by now
                if event is None:
                    continue
            events.append(event)
        # a few tasks take the claimed HEADs in turn, not one task per name parked on the
        # limiter (a spawn and a wake-up each: ~5% of a cold walk's CPU)
        for _ in range(min(len(heads), PREFETCH_PARALLEL)):
            self.nursery.start_soon(_in_turn, heads)
        for event in events:
            await event.wait()

    def take(self, directory_ino: int, name: str) -> tuple[Entry, float] | None:
        """What a prefetch HEAD found for the name (it had no node) and until when
        (time.monotonic) it holds; once."""
        found = self._found.pop((directory_ino, name), None)
        if found is None or found[1] <= time.monotonic():
            return None
        self.taken += 1
        return found

    # --- the HEADs ----------------------------------------------------------------------------

    async def _work(
        self, directory_ino: int, queue: _Queue, first: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Take the queue's entries in order while the window allows (`first`: the HEAD of
        one `kick` took already)."""
        try:
            if first is not None:
                await first()
            while queue.cursor < min(queue.until, len(queue.entries)):
                if self._queues.get(directory_ino) is not queue:
                    return  # a newer snapshot, or the directory is gone
                index = queue.cursor
                queue.cursor += 1
                head = self._claim(directory_ino, queue, index)
                if head is not None:
                    await head()
        finally:
            queue.workers -= 1

    def _claim(
        self, directory_ino: int, queue: _Queue, index: int
    ) -> Callable[[], Awaitable[None]] | None:
        """The HEAD of the queue's entry at `index`, if it needs one, counted as in flight
        from now on (`wait`, `wait_name`)."""
        name, item = queue.entries[index]
        if name in queue.changed:
            return None  # what the listing said of it no longer holds
        node = self._child(directory_ino, name)
        if node is None and isinstance(item, Node):
            return None  # no longer reachable by that name
        if node is not None:
            if node.full or node.pinned or node.ino in self._prefetching:
                return None
            if queue.kinds and node.kind_certain:
                queue.skipped.append(index)
                return None
            self._prefetching[node.ino] = trio.Event()
            return lambda: self._head_node(node)
        assert isinstance(item, Entry)
        if item.kind is not Kind.FILE or item.head or item.info is None:
            return None  # a directory without a node: nothing shows its attributes yet
        if queue.kinds and item.info.size > SYMLINK_MAX:
            queue.skipped.append(index)
            return None
        key = (directory_ino, name)
        if key in self._naming or self.fresh_for <= 0:
            return None
        found = self._found.get(key)
        if found is not None and found[1] > time.monotonic():
            return None
        self._naming[key] = trio.Event()
        return lambda: self._head_entry(key, item)

    async def _head_node(self, node: Node) -> None:
        try:
            async with self._limiter:
                await self._refresh(node)
        except BucketfsError as exc:
            log.debug("prefetch of %s failed: %s", node.key, exc)
        except Exception:  # it runs in the mount's nursery: a bug must not end the mount
            log.exception("prefetch of %s failed", node.key)
        finally:
            self._prefetching.pop(node.ino).set()

    async def _head_entry(self, key: tuple[int, str], entry: Entry) -> None:
        try:
            async with self._limiter:
                found = await self._head_name(key[0], key[1], entry)
            if found is not None and key not in self._stale:
                self._found[key] = (found, time.monotonic() + self.fresh_for)
        except BucketfsError as exc:
            log.debug("prefetch of %s failed: %s", key[1], exc)
        except Exception:
            log.exception("prefetch of %s failed", key[1])
        finally:
            self._stale.discard(key)
            self._naming.pop(key).set()


async def _in_turn(heads: deque[Callable[[], Awaitable[None]]]) -> None:
    """Send the HEADs one after the other until none is left (each handles its own failure)."""
    while heads:
        await heads.popleft()()
