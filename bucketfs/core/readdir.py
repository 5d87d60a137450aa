"""Readdir snapshots: what a directory handle lists, built from the server's listing and what
only this mount has.

Owns the snapshots open on readdir handles (`Readdir.reading`; handles.py keeps each in its
handle and asks here for the node of each name it hands out) and how one is made
(`snapshot`): the directory's listing, kept for lookups too (`Listings.keep`), merged with
the files the cache holds unsaved, the directories whose marker is pending (cache/markers.py)
and the nodes this mount made that the server lacks (`Node.pinned`). Everything else it
uses is the namespace's (namespace.py), reached through `Names`, so this module never
imports it.

Invariants:
- what is only local is taken before the listing is asked for: an upload may land while the
  LIST is in flight, after the server made the listing without it, and the name must not
  drop out of the snapshot;
- a listed name with no node stays a listing `Entry` until readdir hands it to the kernel
  (`listed_node`): a directory of 100,000 names never has them all in the inode table;
- a name this mount removed after the snapshot was taken is not shown (`Snapshot.gone`,
  filled by `removed`); a node made since the listing came is shown as it is (it is newer);
- a node with local state the server lacks (`pinned`) is shown as it is, never from the
  listing; a directory made here is shown from its journaled marker;
- metadata HEADs of listed files wait until the kernel asks about one of them (prefetch.py,
  which queues the snapshot's entries); none with `-o attrs=listing`, where a listing's
  attributes are final;
- a listed file whose kind the listing leaves unsure (small: it may be a symlink) is shown
  without a node (`Nameless`): the kernel would look it up before any use anyway (its entry
  is not cached, `Node.kind_certain`), and that lookup takes what the prefetch found for the
  name (prefetch.py `take`) or asks the server, and makes the node; `find` and `ls` then make
  no node per file. Its inode number is reserved per directory and given to the node a later
  lookup makes, so `d_ino` and `st_ino` agree; reservations are kept for the directories read
  last, about `RESERVED_MAX` names in all (a directory's whole set goes at once, never the one
  being read), and go with the directory's node: past that, as for a name the kernel forgot,
  the number may change (README);
- except while the kernel asks about listed files (`WALK_FOR` after it last did: ls -l, du,
  rm do, find does not): then a listed file whose HEAD is kept for the very version listed
  (cache/attrstore.py) is shown as a node with that HEAD's attributes (`_kept_node`), and
  each reply first waits for the prefetch HEADs of the next `WALK_BATCH` other such files
  and shows them as nodes with what those found (`ahead`, `_found_node`); either spares
  the kernel's lookup of each (docs/core.md, sessions 20 and 21). A reply waits
  `WALK_WAIT` at most; a name whose HEAD has not answered by then goes without a node.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Protocol

import trio

from bucketfs.core.attrs import valid_name
from bucketfs.core.earlylist import EarlyListings
from bucketfs.core.listing import Entry, Listed, Listings, Snapshot, list_children
from bucketfs.core.nodes import KIND_BITS, SYMLINK_MAX, InodeTable, Kind, Nameless, Node

if TYPE_CHECKING:
    from bucketfs.cache.attrstore import Rows
    from bucketfs.cache.deletes import DeferredDeletes
    from bucketfs.cache.markers import Markers, PendingMarker
    from bucketfs.core.contents import FileData, Unsaved
    from bucketfs.core.prefetch import Prefetch
    from bucketfs.core.resolve import Resolver
    from bucketfs.core.revalidate import Revalidation
    from bucketfs.types import ObjectInfo


class Names(Protocol):
    """What a snapshot needs of the namespace (namespace.py's `Namespace`)."""

    backend: DeferredDeletes
    markers: Markers
    table: InodeTable
    listings: Listings
    resolver: Resolver
    revalidation: Revalidation
    prefetch: Prefetch
    listing_attrs: bool

    @property
    def ready(self) -> bool: ...

    @property
    def data(self) -> FileData: ...

    def new_node(self, parent: Node, name: str, kind: Kind, **attrs: object) -> Node: ...

    def apply(self, node: Node, info: ObjectInfo | Listed, *, full: bool) -> None: ...

    def node_from_cache(self, parent: Node, name: str, unsaved: Unsaved) -> Node: ...

    def node_from_marker(self, parent: Node, name: str, marker: PendingMarker) -> Node: ...

    def node_from_found(self, parent: Node, name: str, found: tuple[Entry, float]) -> Node: ...


#: the st_mode of a name shown without a node (a file: the kind readdir can show so)
FILE_BITS = KIND_BITS[Kind.FILE]
#: inode numbers kept reserved for names shown without a node, all directories together
#: (~100 bytes each: the name is the listing's)
RESERVED_MAX = 65536
#: for this long after the kernel asked about a listed file (`asked`), a listed file whose
#: HEAD is kept (cache/attrstore.py) is shown as a node with that HEAD's attributes
WALK_FOR = 5.0
#: entries whose kept HEADs are read at once
KEPT_AHEAD = 1000
#: while the kernel walks a tree (`WALK_FOR`), a readdir reply hands out at most this many
#: listed files of unsure kind, each with what its HEAD found, waited for at most `WALK_WAIT`
#: (past it, a name goes without a node as before); and looks at most `WALK_SCAN` entries
#: ahead (a reply is never longer than fuse/ops.py's READDIR_MAX_ENTRIES anyway)
WALK_BATCH = 256
WALK_WAIT = 2.0
WALK_SCAN = 1024


class Readdir:
    def __init__(self, names: Names) -> None:
        self._ns = names
        #: readdir snapshots still open (handles.py): told the names this mount removes
        self._reading: weakref.WeakSet[Snapshot] = weakref.WeakSet()
        names.table.reserved = self._reserved
        #: directory inode -> {name: inode number} shown without a node, least recent first
        self._reservations: dict[int, dict[str, int]] = {}
        self._reserved_count = 0
        #: the directory last moved to the end of `_reservations` (its most recent)
        self._recent = 0
        #: whether the kernel adapter can show a name without a node (fuse/nameless.py)
        self.nameless = False
        #: until when (time.monotonic) kept HEADs make nodes (`WALK_FOR`, `_kept_node`)
        self._walk_until = 0.0
        #: and until when getattr asked too (`asked`)
        self._attributes_until = 0.0
        self.kept_nodes = 0  # nodes made so (tests, status)
        self.found_nodes = 0  # nodes made from a prefetch HEAD's answer (tests, status)
        #: the next directory of a walk, listed while it reads this one
        self.early = EarlyListings(names.backend, names.listings, lambda: names.prefetch.nursery)

    def removed(self, directory: Node, name: str) -> None:
        """This mount removed `name` from `directory`: open snapshots stop showing it."""
        for snapshot in self._reading:
            if snapshot.directory is directory:
                snapshot.gone.add(name)

    async def snapshot(self, directory: Node) -> list[tuple[str, Node | Entry]]:
        """The entries of `directory` now: its listing, with what only this mount has. A
        listed name with no node yet stays an `Entry` until readdir hands it out (`reading`,
        `listed_node`)."""
        ns = self._ns
        # what is only local must be taken before the listing is asked for: an upload may land
        # while we wait, after the server made the listing without it
        local = [n for n in ns.table.known_children(directory) if n.pinned and not n.unlinked]
        cached: dict[str, Unsaved] = {}
        markers = ns.markers.children(directory.bucket, directory.key)
        if directory.bucket is not None and ns.ready:
            for unsaved in ns.data.unsaved_under(directory.bucket, directory.key):
                assert unsaved.key is not None
                cached[unsaved.key[len(directory.key) :]] = unsaved
        changes = ns.listings.changes(directory.ino)
        listed = await self.early.take(directory)
        if listed is None:
            listed = await list_children(ns.backend, directory.bucket, directory.key)
        assert listed is not None
        self.early.seen(directory, listed)
        ns.listings.keep(directory.ino, listed, changes, readdir=True)  # not if it lacks one
        if directory.bucket is not None:
            ns.resolver.file_names.listed(directory.bucket, directory.key, listed)
        if not markers and not cached and not ns.table.children.get(directory.ino):
            # nothing of this directory is local (no node, nothing unsaved, no marker: a large
            # directory read the first time): the listing as it is, without a turn per name
            entries: list[tuple[str, Node | Entry]] = list(listed.items())
        else:
            entries = self._merged(directory, listed, local, cached, markers)
        # metadata of listed files is fetched only once the kernel asks for one of them (ls -l,
        # du, rsync do; find and plain ls do not)
        if not ns.listing_attrs:
            ns.prefetch.defer(directory.ino, entries, len(listed))
        return entries

    def _merged(
        self,
        directory: Node,
        listed: dict[str, Entry],
        local: list[Node],
        cached: dict[str, Unsaved],
        markers: dict[str, PendingMarker],
    ) -> list[tuple[str, Node | Entry]]:
        """`listed` with what only this mount has (see `snapshot`)."""
        ns = self._ns
        entries: list[tuple[str, Node | Entry]] = []
        seen: set[str] = set()
        for name, entry in listed.items():
            seen.add(name)
            if name in markers:  # a directory made here: its attributes are ours
                entries.append((name, ns.node_from_marker(directory, name, markers[name])))
                continue
            node = ns.table.child(directory, name)
            if node is None and name in cached and entry.kind is not Kind.DIR:
                node = ns.node_from_cache(directory, name, cached[name])
            if node is None:
                entries.append((name, entry))  # made when served (`listed_node`)
            elif node.pinned:
                entries.append((name, node))
            else:
                entries.append((name, self._from_listing(directory, name, entry, node)))
        for node in local:
            if node.name not in seen and not node.unlinked and node.parent == directory.ino:
                entries.append((node.name, node))
                seen.add(node.name)
        for name, unsaved in cached.items():
            if name not in seen and valid_name(name) and unsaved.key is not None:
                entries.append((name, ns.node_from_cache(directory, name, unsaved)))
                seen.add(name)
        for name, marker in markers.items():
            if name not in seen and valid_name(name):
                entries.append((name, ns.node_from_marker(directory, name, marker)))
        return entries

    def reading(self, directory: Node, entries: list[tuple[str, Node | Entry]]) -> Snapshot:
        """A readdir handle holds `entries` of `directory` from now on (see `Snapshot`)."""
        snapshot = Snapshot(directory, entries)
        self._reading.add(snapshot)
        return snapshot

    def shown(self, snapshot: Snapshot, name: str, entry: Entry) -> Node | Nameless | None:
        """What readdir hands the kernel for a listed name of `snapshot` that had no node: a
        file of unsure kind without one (see the module's invariants), else a node
        (`listed_node`); None if this mount removed the name since. Called once per name
        handed out: the checks go cheapest and most telling first."""
        if not self._unsure(snapshot, name, entry):
            return self.listed_node(snapshot, name, entry)
        # what a prefetch HEAD found first: the HEAD just answered, and taking it costs a
        # dict lookup where a kept row costs decoding what that HEAD's answer was encoded to
        # (a cold walk keeps its HEADs at once when the objects are older than 2 s)
        node = self._found_node(snapshot, name) or self._kept_node(snapshot, name, entry)
        if node is not None:
            return node
        directory = snapshot.directory.ino
        reservations = self._reservations
        names = reservations.get(directory)
        if names is None or directory != self._recent:
            # back in as the most recent (a dict keeps insertion order); once per directory
            # read in turn, not per name
            names = reservations[directory] = reservations.pop(directory, {})
            self._recent = directory
        ino = names.get(name)
        if ino is None:
            ino = names[name] = self._ns.table.reserve()
            self._reserved_count += 1
            while self._reserved_count > RESERVED_MAX and len(reservations) > 1:
                oldest = next(iter(reservations))
                self._reserved_count -= len(reservations.pop(oldest))
        return Nameless(ino, FILE_BITS)

    def _reserved(self, parent_ino: int, name: str) -> int | None:
        """The inode number `name` in directory `parent_ino` was shown with, taken (the table
        makes its node now)."""
        names = self._reservations.get(parent_ino)
        if names is None:
            return None
        ino = names.pop(name, None)
        if ino is not None:
            self._reserved_count -= 1
            self.asked()
        return ino

    def asked(self, *, attributes: bool = False) -> None:
        """The kernel asked about a listed file (a lookup of one shown without a node, or
        getattr of a listed file's node: ls -l, du, stat, rm do; find asks about directories
        only): answering the next directories' names from kept HEADs spares it those
        requests (`_kept_node`, `ahead`). `attributes`: getattr asked (ls -l, du, tar c do;
        rm, whose lookups need kinds only, does not), so files of sure kind need their HEAD
        too."""
        self._walk_until = time.monotonic() + WALK_FOR
        if attributes:
            self._attributes_until = self._walk_until

    def _unsure(self, snapshot: Snapshot, name: str, entry: Entry) -> bool:
        """Whether `shown` hands out the listed `name` without a node (a file of unsure kind:
        see the module's invariants) unless a HEAD of it is at hand. The checks go cheapest
        and most telling first."""
        info = entry.info
        return (
            info is not None
            and info.size <= SYMLINK_MAX
            and self.nameless
            and not self._ns.listing_attrs
            and self._listed_file(snapshot, name, entry)
        )

    def _sure_file(self, snapshot: Snapshot, name: str, entry: Entry) -> bool:
        """Whether the listed `name` is a file too large to be a symlink, without a node:
        readdir shows it as a node of the listing's attributes, whose metadata the kernel's
        getattr asks (a HEAD) unless the reply had them (`ahead`, with `attributes`)."""
        info = entry.info
        return (
            info is not None
            and info.size > SYMLINK_MAX
            and self._listed_file(snapshot, name, entry)
        )

    def _listed_file(self, snapshot: Snapshot, name: str, entry: Entry) -> bool:
        """Whether `name` is a file as the listing shows it (not from a HEAD), with no node
        yet, and this mount did not remove it since the snapshot."""
        return (
            entry.kind is Kind.FILE
            and not entry.head
            and name not in snapshot.gone
            and self._ns.table.child(snapshot.directory, name) is None
        )

    def _kept_node(self, snapshot: Snapshot, name: str, entry: Entry) -> Node | None:
        """A node with the attributes a kept HEAD of the listed file gives, if the kernel asks
        about listed files lately (`asked`) and one is kept (`_kept`); None otherwise.

        Why, and only while the kernel asks about listed names (`WALK_FOR`): after a remount,
        `ls -lR` of a tree whose HEADs were all kept sent one LOOKUP per file for the names
        readdir had shown without a node, each answered from a kept HEAD (10,000 of them,
        about half the walk's CPU); a node with its attributes in the READDIRPLUS entry needs
        none. `find` and plain `ls` never ask, so they make no node per file."""
        if self._walk_until <= time.monotonic():
            return None
        info = self._kept(snapshot, name, entry)
        if info is None:
            return None
        ns = self._ns
        node = ns.new_node(snapshot.directory, name, ns.resolver.file_entry(info).kind)
        ns.apply(node, info, full=True)
        self.kept_nodes += 1
        return node

    def _kept(self, snapshot: Snapshot, name: str, entry: Entry) -> ObjectInfo | None:
        """The HEAD kept for the listed file's very version (cache/attrstore.py: the same
        ETag, size and LastModified); None: not a listed file, none kept, or the directory is
        the bucket list."""
        asked = self._kept_rows(snapshot, name, entry)
        return None if asked is None else self._ns.data.attrs.match(*asked)

    def _is_kept(self, snapshot: Snapshot, name: str, entry: Entry) -> bool:
        """Whether `_kept` would find one (without decoding it: `ahead` asks first)."""
        asked = self._kept_rows(snapshot, name, entry)
        return asked is not None and self._ns.data.attrs.holds(*asked)

    def _kept_rows(
        self, snapshot: Snapshot, name: str, entry: Entry
    ) -> tuple[str, str, str, int, float, Rows] | None:
        """What the attribute store is asked for the listed file (`AttrStore.match`), with
        the rows of the next `KEPT_AHEAD` entries read in one go (names are handed out in
        turn); None: nothing to ask."""
        ns = self._ns
        listed = entry.info
        directory = snapshot.directory
        bucket = directory.bucket
        if (
            entry.kind is not Kind.FILE
            or entry.head
            or listed is None
            or not listed.etag
            or bucket is None
            or ns.listing_attrs
            or not ns.ready
        ):
            return None
        key = directory.key + name
        if key not in snapshot.kept_rows and snapshot.kept_at < len(snapshot.entries):
            entries = snapshot.entries
            start = snapshot.kept_at
            end = snapshot.kept_at = min(len(entries), start + KEPT_AHEAD)
            keys = [directory.key + n for n, item in entries[start:end] if isinstance(item, Entry)]
            snapshot.kept_rows = ns.data.attrs.load(bucket, keys)
        return bucket, key, listed.etag, listed.size, listed.last_modified, snapshot.kept_rows

    def _found_node(self, snapshot: Snapshot, name: str) -> Node | None:
        """A node with what a prefetch HEAD of the listed name found (`ahead` waited for
        it, or it came before), taken as the kernel's lookup of the name would take it."""
        directory = snapshot.directory
        found = self._ns.prefetch.take(directory.ino, name)
        if found is None:
            return None
        self.found_nodes += 1
        return self._ns.node_from_found(directory, name, found)

    async def ahead(self, snapshot: Snapshot, offset: int) -> int | None:
        """Before a reply from `offset`, while the kernel walks a tree (`asked` lately): the
        HEADs of the next `WALK_BATCH` listed files that `shown` would hand out without a
        node, waited for (`WALK_WAIT` at most), so that each goes as a node with its
        attributes and the kernel looks none up. Returns where the reply stops (the name
        after those), None: no limit (not walking).

        Why: `ls -lR`, `du`, `tar c` read a whole directory, then ask about each name; each
        name shown without a node cost a LOOKUP (a kernel round trip and a request through
        pyfuse3, ~0.1 ms of daemon CPU) that only waited for the HEAD the prefetch had sent
        anyway. The HEADs are the same ones: a walk looks every such name up, and that
        lookup needs the HEAD (the kind of a small file is unsure). What it can cost: a
        program that only reads names (`find`, `ls`) within `WALK_FOR` of a walk's last
        question gets HEADs it would not have sent, one directory's worth per question."""
        ns = self._ns
        directory = snapshot.directory
        now = time.monotonic()
        if (
            not self.nameless
            or self._walk_until <= now
            or ns.listing_attrs
            or directory.bucket is None
            or not ns.ready
        ):
            return None
        if offset == 0:
            self.early.start_next(directory)
        attributes = self._attributes_until > now
        entries = snapshot.entries
        names: list[str] = []
        count = 0
        end = min(len(entries), offset + WALK_SCAN)
        for index in range(offset, end):
            name, item = entries[index]
            if isinstance(item, Node) or not (
                self._unsure(snapshot, name, item)
                or (attributes and self._sure_file(snapshot, name, item))
            ):
                continue
            if count == WALK_BATCH:
                return await self._settle(directory, names, index, attributes)
            count += 1
            if not self._is_kept(snapshot, name, item):
                names.append(name)
        stop = end if end < len(entries) else None
        return await self._settle(directory, names, stop, attributes)

    async def _settle(
        self, directory: Node, names: list[str], stop: int | None, attributes: bool
    ) -> int | None:
        if names:
            with trio.move_on_after(WALK_WAIT):
                await self._ns.prefetch.settle(directory.ino, names, kinds=not attributes)
        return stop

    def dropped(self, directory_ino: int) -> None:
        """The directory's node is gone: so are the numbers reserved in it."""
        names = self._reservations.pop(directory_ino, None)
        if names is not None:
            self._reserved_count -= len(names)

    def listed_node(self, snapshot: Snapshot, name: str, entry: Entry) -> Node | None:
        """The node readdir hands the kernel for a name its snapshot listed without one: the
        table's if one was made since (newer than the listing), none if this mount removed
        the name since, else a new node from the listing (attributes as `snapshot` gives)."""
        ns = self._ns
        directory = snapshot.directory
        node = ns.table.child(directory, name)
        if node is not None or name in snapshot.gone:
            return node
        return (
            self._kept_node(snapshot, name, entry)
            or self._found_node(snapshot, name)
            or self._from_listing(directory, name, entry, None)
        )

    def _from_listing(self, directory: Node, name: str, entry: Entry, node: Node | None) -> Node:
        """`node` (None: a new one) as listed: a listing tells a directory from an object,
        not a symlink or a fifo from a file; the metadata known of the same object is kept (a
        listing lacks it; revalidate.py)."""
        ns = self._ns
        if node is None or (node.kind is not entry.kind and Kind.DIR in (node.kind, entry.kind)):
            node = ns.new_node(directory, name, entry.kind, full=False)
        if entry.kind is not Kind.DIR and entry.info is not None:
            if ns.listing_attrs or not ns.revalidation.listed(node, entry.info):
                ns.apply(node, entry.info, full=False)
        elif entry.kind is Kind.DIR and not node.full:
            node.attr_expiry = 0.0
        return node
