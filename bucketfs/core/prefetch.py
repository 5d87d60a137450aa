"""Metadata prefetch after a listing: the HEADs readdir starts for files known only from it.

Owns which listed nodes wait for the kernel's first question about one of them (`defer`), and
the HEADs in flight (`kick`, `wait`). What a HEAD means for a node is the namespace's business
(`refresh`, namespace.py); this module only decides when they are sent and lets a caller wait.

Invariants: nothing is sent for a directory's listing until the kernel asks about one of its
listed non-directories (ls -l, du and rsync do; find and plain ls do not), nothing for an entry
of a sure kind until the kernel asks its attributes (a lookup only needs kinds: `rm -rf` of
large files sends no HEAD), and never with
`-o attrs=listing` (namespace.py defers nothing then); at most
`PREFETCH_ENTRIES` HEADs per listing and `PREFETCH_PARALLEL` in flight; one HEAD per node at a
time, and whoever waits for it is woken whether it succeeded or failed; a failed prefetch is
logged and forgotten (the next getattr asks again); without a nursery (before `run`) nothing is
prefetched.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Awaitable, Callable

import trio
from cachetools import LRUCache

from bucketfs.core.nodes import Kind, Node
from bucketfs.errors import BucketfsError

log = logging.getLogger(__name__)

#: readdir asks for the metadata of at most this many listed entries ahead of the kernel
PREFETCH_ENTRIES = 4096
PREFETCH_PARALLEL = 32


class Prefetch:
    def __init__(
        self, refresh: Callable[[Node], Awaitable[None]], node: Callable[[int], Node | None]
    ) -> None:
        """`refresh(node)` sends the HEAD of one listed node and applies what it says;
        `node(ino)` is the inode table's node of that number, if it still has one."""
        self._refresh = refresh
        self._node = node
        self.nursery: trio.Nursery | None = None
        #: HEADs started by readdir for nodes known only from a listing, by inode
        self._prefetching: dict[int, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(PREFETCH_PARALLEL)
        #: listed nodes of a directory whose metadata nobody asked for yet, by its inode: their
        #: inode numbers, not the nodes, so that a node the kernel forgot goes (`max_nodes`;
        #: a list of nodes kept all 100,000 of a directory alive)
        self._deferred: LRUCache[int, array[int]] = LRUCache(maxsize=256)

    def defer(self, directory_ino: int, nodes: list[Node]) -> None:
        """A listing of the directory left `nodes` without metadata: HEAD them on demand
        (`add` tells of more)."""
        self._deferred[directory_ino] = array("Q", [node.ino for node in nodes])

    def add(self, directory_ino: int, node: Node) -> None:
        """One more node of the directory's last listing without metadata."""
        deferred = self._deferred.get(directory_ino)
        if deferred is None:
            self._deferred[directory_ino] = array("Q", [node.ino])
        else:
            deferred.append(node.ino)

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
        inos = self._deferred.pop(node.parent, None)
        nodes = [n for ino in inos if (n := self._node(ino)) is not None] if inos else []
        if nodes and kinds:
            sure = [n for n in nodes if n.kind_certain]
            if sure:
                self._deferred[node.parent] = array("Q", [n.ino for n in sure])
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
