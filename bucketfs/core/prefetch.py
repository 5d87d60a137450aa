"""Metadata prefetch after a listing: the HEADs readdir starts for files known only from it.

Owns which listed nodes wait for the kernel's first question about one of them (`defer`), and
the HEADs in flight (`kick`, `wait`). What a HEAD means for a node is the namespace's business
(`refresh`, namespace.py); this module only decides when they are sent and lets a caller wait.
Also owns whether the program walking the mount asks about what it lists (`_asked`): `ls -l`,
`du`, `rsync` and `rm -rf` do, `find` and plain `ls` do not. While recent listings' entries
were asked about, a listing's HEADs start at once (`defer` returns True) and readdir waits for
each entry's before answering it (`wait`): readdirplus then carries attributes the kernel keeps,
and the kernel sends no LOOKUP per entry (a third of the requests of a cold `ls -lR`).

Invariants: nothing is sent for a directory's listing until the kernel asks about one of its
listed non-directories, unless the last listings judged (`_judge`) were asked about
(`EAGER_AFTER`), and then only for what their questions needed (kinds only, or attributes
too); one listing in `PROBE_EVERY` is still deferred, to judge again whether the walker asks;
nothing for an entry of a sure kind until the kernel asks its attributes (a lookup only needs
kinds: `rm -rf` of large files sends no HEAD), and never with
`-o attrs=listing` (namespace.py defers nothing then); at most
`PREFETCH_ENTRIES` HEADs per listing and `PREFETCH_PARALLEL` in flight; one HEAD per node at a
time, and whoever waits for it is woken whether it succeeded or failed; a failed prefetch is
logged and forgotten (the next getattr asks again); without a nursery (before `run`) nothing is
prefetched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from enum import IntEnum

import trio
from cachetools import LRUCache

from bucketfs.core.nodes import Kind, Node
from bucketfs.errors import BucketfsError

log = logging.getLogger(__name__)

#: readdir asks for the metadata of at most this many listed entries ahead of the kernel
PREFETCH_ENTRIES = 4096
PREFETCH_PARALLEL = 32
#: a listing's HEADs start at once while the moving average of "the kernel asked about a
#: judged listing's entries" (weight `ASKED_WEIGHT` for the newest) is above this
EAGER_AFTER = 0.5
ASKED_WEIGHT = 0.5
#: while eager, one listing in this many is deferred all the same, to judge the walker again
PROBE_EVERY = 8


class _Level(IntEnum):
    """What the kernel asked about a judged listing's entries."""

    NOTHING = 0
    KINDS = 1  # lookups: only the entries whose kind the listing leaves unsure need a HEAD
    ATTRIBUTES = 2  # getattr: every listed file's metadata


class Prefetch:
    def __init__(self, refresh: Callable[[Node], Awaitable[None]]) -> None:
        """`refresh(node)` sends the HEAD of one listed node and applies what it says."""
        self._refresh = refresh
        self.nursery: trio.Nursery | None = None
        #: HEADs started by readdir for nodes known only from a listing, by inode
        self._prefetching: dict[int, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(PREFETCH_PARALLEL)
        #: listed nodes of a directory whose metadata nobody asked for yet, by its inode
        self._deferred: LRUCache[int, list[Node]] = LRUCache(maxsize=256)
        #: the moving average of "asked", over judged listings (`_judge`)
        self._asked = 0.0
        #: what the kernel asked about the entries of the last judged listings
        self._wants = _Level.NOTHING
        #: the directory whose deferred listing is judged next, and what was asked about it
        self._probe: int | None = None
        self._probe_asked = _Level.NOTHING
        self._listings = 0

    def defer(self, directory_ino: int, nodes: list[Node]) -> bool:
        """A listing of the directory left `nodes` without metadata: HEAD them on demand, or
        at once when the walker asks about what it lists (True: readdir should `wait`)."""
        files = [n for n in nodes if n.kind is not Kind.DIR]
        if not files:  # nothing to judge: the walker's questions about directories send none
            self._deferred[directory_ino] = nodes
            return False
        self._judge()
        self._listings += 1
        if self._asked > EAGER_AFTER and self._listings % PROBE_EVERY and self.nursery:
            if self._wants is _Level.KINDS:
                sure = [n for n in nodes if n.kind_certain]
                if sure:  # getattr asks for those, if it ever does
                    self._deferred[directory_ino] = sure
                files = [n for n in files if not n.kind_certain]
            self._start(files)
            return True
        self._deferred[directory_ino] = nodes
        self._probe, self._probe_asked = directory_ino, _Level.NOTHING
        return False

    def _judge(self) -> None:
        """Fold the verdict on the last deferred listing into the moving average."""
        if self._probe is None:
            return
        asked = self._probe_asked
        self._asked = (1 - ASKED_WEIGHT) * self._asked + ASKED_WEIGHT * bool(asked)
        if asked:
            self._wants = asked
        self._probe = None

    def waits(self, node: Node) -> bool:
        """Whether a HEAD of this listed node is under way."""
        return node.ino in self._prefetching

    def dropped(self, ino: int) -> None:
        self._deferred.pop(ino, None)

    async def wait(self, node: Node) -> None:
        event = self._prefetching.get(node.ino)
        if event is not None:
            await event.wait()

    def kick(self, node: Node, *, kinds: bool = False) -> None:
        """The kernel asks for a listed file: HEAD its siblings from that listing too. A
        lookup (`kinds`) needs only kinds: it starts those whose kind the listing leaves
        unsure (small files: `Node.kind_certain`) and leaves the others to getattr."""
        if node.kind is Kind.DIR:
            return
        if node.parent == self._probe:
            level = _Level.KINDS if kinds else _Level.ATTRIBUTES
            self._probe_asked = max(self._probe_asked, level)
        nodes = self._deferred.pop(node.parent, None)
        if nodes and kinds:
            sure = [n for n in nodes if n.kind_certain]
            if sure:
                self._deferred[node.parent] = sure
            nodes = [n for n in nodes if not n.kind_certain]
        if nodes:
            self._start(nodes)

    def _start(self, nodes: list[Node]) -> None:
        if self.nursery is None:
            return
        for node in nodes[:PREFETCH_ENTRIES]:
            if node.ino not in self._prefetching:
                self._prefetching[node.ino] = trio.Event()
                self.nursery.start_soon(self._prefetch, node)

    async def _prefetch(self, node: Node) -> None:
        """HEAD one listed node so that its metadata is there when the kernel asks."""
        try:
            async with self._limiter:
                await self._refresh(node)
        except BucketfsError as exc:
            log.debug("prefetch of %s failed: %s", node.key, exc)
        except Exception:
            log.exception("prefetch of %s failed", node.key)
        finally:
            event = self._prefetching.pop(node.ino, None)
            if event is not None:
                event.set()
