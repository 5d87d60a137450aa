"""Revalidation by listing: a file's expired attributes confirmed by one LIST of its directory
instead of a HEAD per name.

Why: once `attr_timeout` ran out, every `stat` of a file sent a HEAD again (1,000 files, 1,000
HEADs), while one listing page answers for up to 1,000 entries at once. A listing carries no
user metadata (mode, owner, mtime), but it carries the ETag, size and LastModified, and any
change another client can make moves one of them: new content a new ETag or size, a
metadata-only change is a server-side copy onto itself, which sets a new LastModified
(tests/backends/test_lastmodified.py proves it on every store).

Owns, per inode, the `Basis` of a file's attributes: the ETag, size and LastModified (to the
second) of the HEAD they came from, and a digest of what the node showed right after it; and
the listings asked for on revalidation's behalf, one at a time per directory (concurrent
getattrs of one directory's files share one request).

Invariants:
- a node's attributes are confirmed by a listing only when the node still shows exactly what
  one HEAD said (a change through this mount, even one that failed to reach the server,
  changes the digest), that HEAD was answered `SETTLE` s or more after LastModified by the
  server's own `Date` (`cache/attrstore.settled`: a copy made after it has a LastModified in a
  later second), and the listing's entry has the same ETag, size and LastModified second;
  anything else is asked with a HEAD, as before;
- confirmed attributes are as fresh as the listing that confirmed them: fresh until
  `attr_timeout` after it came, never later, so another client's change shows within the same
  bounds as with a HEAD per file; an older listing (still good for names, `dir_timeout`) is
  not used, the directory is listed again;
- a directory is listed for this only if its last listing fitted one page (`LIST_ENTRIES`)
  or it was never listed (then one page at most is asked; a larger directory is remembered so,
  and its files are asked with a HEAD each from then on), and not while its files are asked
  for too far apart for a listing to pay (`MIN_CONFIRMED`, `SPARSE_FOR`: `stat` of a few
  files of each of many directories, in no order, HEADs them);
- a readdir's listing revalidates too (`listed`): it confirms the entries it shows unchanged,
  and a node whose HEAD it contradicts with the same ETag (another client's chmod: a later
  LastModified) no longer keeps its old metadata;
- with `attr_timeout` 0 nothing is confirmed so (a HEAD is cheaper than a LIST per stat);
- listings ahead (`_ahead`): once `AHEAD_AFTER` sibling directories (children of one parent)
  were listed to revalidate within `attr_timeout`, the next such listing also starts, in the
  background, those of up to `AHEAD_DIRS` more siblings, `AHEAD_PARALLEL` at a time: only
  directories that would be listed so anyway at their next file's question (no fresh listing
  held, one page, not sparse) and that hold `MIN_CONFIRMED` or more files the kernel knows
  whose attributes need confirming (a basis, expired). A lookup waits for a listing in flight
  rather than asking again. Why: `stat` of names spread over many directories (the bench's
  1,000 of 100) waited for 100 LISTs one after the other (6-7 ms each on SeaweedFS); the
  same LISTs sent together cost no more requests, and a directory whose listing ahead turned
  out not to pay becomes sparse like any other (its files are HEADed from then on).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from cachetools import LRUCache

from bucketfs.cache.attrstore import settled
from bucketfs.core.listing import PAGE_KEYS, Entry, Listed, Listings, Subtrees
from bucketfs.core.nodes import InodeTable, Kind, Node
from bucketfs.errors import BucketfsError
from bucketfs.types import ObjectInfo

log = logging.getLogger(__name__)

#: a directory whose last listing had more entries than this (more than one page) is not
#: listed to revalidate a file in it: a HEAD is cheaper
LIST_ENTRIES = PAGE_KEYS
#: a directory whose last listing made to revalidate confirmed fewer files than this (they
#: were asked for too far apart: a listing confirms for `attr_timeout` only) is not listed so
#: again for SPARSE_FOR x `attr_timeout`; its files are asked with a HEAD each meanwhile
MIN_CONFIRMED = 3
SPARSE_FOR = 10
#: sibling directories listed to revalidate within `attr_timeout` before listing ahead
AHEAD_AFTER = 2
#: sibling directories listed ahead at most per trigger, in flight at most, and the most
#: siblings (and files in each) looked at per trigger
AHEAD_DIRS = 32
AHEAD_PARALLEL = 8
AHEAD_SCAN = 1024


def _second(t: float) -> int:
    return int(t)


def shown(node: Node) -> int:
    """A digest of the attributes the node shows (what a local change would move)."""
    return hash(
        (
            node.kind,
            node.size,
            node.etag,
            node.version_id,
            node.mode,
            node.uid,
            node.gid,
            node.mtime,
            node.ctime,
            node.atime,
            node.content_type,
            frozenset(node.metadata.items()),
            frozenset(node.system.items()),
        )
    )


@dataclass(frozen=True, slots=True)
class Basis:
    """The HEAD a node's attributes came from."""

    etag: str
    size: int
    modified: int  # LastModified, to the second
    shown: int  # `shown(node)` right after

    def listed_as(self, info: ObjectInfo | Listed) -> bool:
        """Whether a listing's entry shows the very object that HEAD described."""
        return (info.etag, info.size, _second(info.last_modified)) == (
            self.etag,
            self.size,
            self.modified,
        )


@dataclass(slots=True)
class _Yield:
    """A listing made to revalidate, and how many files it confirmed."""

    listed: dict[str, Entry]
    confirmed: int = 0


@dataclass
class _Flight:
    """One listing asked for on revalidation's behalf; others wait for it."""

    done: trio.Event = field(default_factory=trio.Event)
    listed: dict[str, Entry] | None = None
    made: float = 0.0


class Revalidation:
    def __init__(
        self,
        table: InodeTable,
        listings: Listings,
        subtrees: Subtrees,
        relist: Callable[[Node], Awaitable[dict[str, Entry] | None]],
        attr_timeout: float,
    ) -> None:
        """`relist(directory)` lists a directory again (one page, or with a subtree listing)
        and keeps the listing; None if it did not fit or could lack a change made here."""
        self._table = table
        self._listings = listings
        self._subtrees = subtrees
        self._relist = relist
        self._attr_timeout = attr_timeout
        self._bases: dict[int, Basis] = {}
        self._flights: dict[int, _Flight] = {}
        #: by directory: the last listing made to revalidate, and until when it is not
        #: listed so again (its last listing confirmed too few files)
        self._yields: LRUCache[int, _Yield] = LRUCache(maxsize=4096)
        self._sparse: LRUCache[int, float] = LRUCache(maxsize=4096)
        self.confirmed = 0  # attributes confirmed by a listing (tests, status)
        #: where listings ahead run (set by the namespace once the mount runs; None: none)
        self.nursery: trio.Nursery | None = None
        self._ahead_limiter = trio.CapacityLimiter(AHEAD_PARALLEL)
        #: by parent directory: when each of its children was last listed to revalidate
        self._recent: LRUCache[int, dict[int, float]] = LRUCache(maxsize=1024)
        self.ahead = 0  # listings started ahead (tests, status)

    def applied(self, node: Node, info: ObjectInfo | None) -> None:
        """The node now shows what `info` (a HEAD, or a row kept from one) says; None: what a
        listing says, or nothing a listing could confirm."""
        if (
            info is not None
            and node.kind is not Kind.DIR
            and info.etag
            and info.key == node.key
            and settled(info)
        ):
            self._bases[node.ino] = Basis(
                info.etag, info.size, _second(info.last_modified), shown(node)
            )
        else:
            self._bases.pop(node.ino, None)

    def dropped(self, ino: int) -> None:
        for per_inode in (self._bases, self._yields, self._sparse, self._recent):
            per_inode.pop(ino, None)

    def _basis(self, node: Node) -> Basis | None:
        """The node's basis, if the node still shows what that HEAD said."""
        basis = self._bases.get(node.ino)
        return basis if basis is not None and basis.shown == shown(node) else None

    def listed(self, node: Node, info: ObjectInfo | Listed) -> bool:
        """A listing that just came shows the node's object as `info`: whether the node keeps
        its attributes (a full node with the same ETag, unless what it shows came from a
        HEAD of an object the listing shows changed since: a copy onto itself with new
        metadata). Attributes a listing confirms are fresh again."""
        if not (node.full and node.etag == info.etag):
            return False
        basis = self._basis(node)
        if basis is None:
            return True  # nothing to compare with: as before
        if not basis.listed_as(info):
            return False
        node.attr_expiry = max(node.attr_expiry, time.monotonic() + self._attr_timeout)
        self.confirmed += 1
        return True

    async def confirm(self, node: Node) -> bool:
        """Whether a listing of the node's directory confirms its expired attributes (their
        expiry moved then); False: ask the server with a HEAD."""
        if self._attr_timeout <= 0 or self._basis(node) is None:
            return False
        parent = self._table.get(node.parent)
        if parent is None or parent.bucket is None or node.unlinked:
            return False
        key = node.key
        listed, made = self._held(parent)
        if listed is None or made + self._attr_timeout <= time.monotonic():
            size = self._listings.size(parent.ino)
            if (size is not None and size > LIST_ENTRIES) or self._too_sparse(parent):
                return False
            if parent.ino not in self._flights:
                self._ahead(parent)
            listed, made = await self._list(parent)
        basis = self._basis(node)  # again: it may have changed while we waited
        entry = None if listed is None or node.key != key else listed.get(node.name)
        if basis is None or entry is None or entry.info is None or not basis.listed_as(entry.info):
            return False
        node.attr_expiry = made + self._attr_timeout
        self.confirmed += 1
        last = self._yields.get(parent.ino)
        if last is not None and last.listed is listed:
            last.confirmed += 1
        return True

    def _too_sparse(self, directory: Node) -> bool:
        """Whether the directory's files are asked for too far apart for a listing to pay."""
        now = time.monotonic()
        if self._sparse.get(directory.ino, 0.0) > now:
            return True
        last = self._yields.pop(directory.ino, None)
        if last is not None and last.confirmed < MIN_CONFIRMED:
            self._sparse[directory.ino] = now + SPARSE_FOR * self._attr_timeout
            return True
        return False

    def _would_list(self, directory: Node, now: float) -> bool:
        """Whether the next question about a file of `directory` would list it to revalidate
        (`confirm`), as far as that can be told without a file: no listing of it held fresh or
        in flight, one page at most, not sparse."""
        if directory.ino in self._flights or self._sparse.get(directory.ino, 0.0) > now:
            return False
        last = self._yields.get(directory.ino)
        if last is not None and last.confirmed < MIN_CONFIRMED:
            return False  # sparse at its next question
        size = self._listings.size(directory.ino)
        if size is not None and size > LIST_ENTRIES:
            return False
        listed, made = self._held(directory)
        return listed is None or made + self._attr_timeout <= now

    def _needing(self, directory: Node, now: float) -> bool:
        """Whether `directory` holds `MIN_CONFIRMED` files whose expired attributes a listing
        could confirm."""
        found = 0
        children = self._table.children.get(directory.ino, {})
        for ino in itertools.islice(children.values(), AHEAD_SCAN):
            node = self._table.get(ino) if ino in self._bases else None
            if node is None or node.kind is Kind.DIR or node.attr_expiry > now:
                continue
            if self._basis(node) is not None:
                found += 1
                if found >= MIN_CONFIRMED:
                    return True
        return False

    def _ahead(self, directory: Node) -> None:
        """`directory` is to be listed to revalidate: when siblings of it were too, lately,
        list those siblings that will need it ahead of the kernel's questions (see the module
        docstring)."""
        if self.nursery is None or directory.parent == directory.ino:
            return
        now = time.monotonic()
        recent = self._recent.get(directory.parent)
        if recent is None:
            recent = self._recent[directory.parent] = {}
        for ino, when in list(recent.items()):
            if when + self._attr_timeout <= now:
                del recent[ino]
        others = len(recent) - (directory.ino in recent)
        recent[directory.ino] = now
        if others < AHEAD_AFTER:
            return
        started = 0
        siblings = self._table.children.get(directory.parent, {})
        for ino in list(itertools.islice(siblings.values(), AHEAD_SCAN)):
            if started >= AHEAD_DIRS:
                break
            sibling = self._table.get(ino)
            if (
                sibling is None
                or ino == directory.ino
                or sibling.kind is not Kind.DIR
                or sibling.bucket is None
                or not self._would_list(sibling, now)
                or not self._needing(sibling, now)
            ):
                continue
            flight = self._flights[ino] = _Flight()
            recent[ino] = now
            self.nursery.start_soon(self._list_ahead, sibling, flight)
            started += 1
        if started:
            log.debug("listing %d directories beside %s ahead", started, directory.key)
        self.ahead += started

    async def _list_ahead(self, directory: Node, flight: _Flight) -> None:
        try:
            async with self._ahead_limiter:
                await self._fly(directory, flight)
        except Exception:  # it runs in the mount's nursery: a bug must not end the mount
            log.exception("listing %s ahead failed", directory.key)

    def _held(self, directory: Node) -> tuple[dict[str, Entry] | None, float]:
        """A listing of the directory held (its own, or a subtree's) and when it came."""
        assert directory.bucket is not None
        listed = self._listings.get(directory.ino)
        made = self._listings.made(directory.ino)
        if listed is None or made is None:
            listed = self._subtrees.get(directory.bucket, directory.key)
            made = self._subtrees.made(directory.bucket, directory.key)
        return (listed, made) if listed is not None and made is not None else (None, 0.0)

    async def _list(self, directory: Node) -> tuple[dict[str, Entry] | None, float]:
        """List the directory again, or wait for the listing already asked for."""
        flight = self._flights.get(directory.ino)
        if flight is not None:
            await flight.done.wait()
            return flight.listed, flight.made
        flight = self._flights[directory.ino] = _Flight()
        await self._fly(directory, flight)
        return flight.listed, flight.made

    async def _fly(self, directory: Node, flight: _Flight) -> None:
        """Make the listing `flight` stands for; whoever waits for it is woken in any case."""
        try:
            flight.listed = await self._relist(directory)
            flight.made = time.monotonic()
            if flight.listed is not None:
                self._yields[directory.ino] = _Yield(flight.listed)
        except BucketfsError as exc:  # the HEAD it was to replace will tell
            log.debug("listing %s to revalidate failed: %s", directory.key, exc)
        finally:
            if self._flights.get(directory.ino) is flight:
                del self._flights[directory.ino]
            flight.done.set()
