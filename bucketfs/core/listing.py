"""What listings say a directory holds, and subtree listings that refresh many at once.

Owns `Entry` (a name as a listing shows it), reading one LIST page into a directory's entries,
listing one directory (`list_children`), `Listings`: each directory's last listing, its size,
the changes this mount made there and whether a lookup should list it (`worth_listing`), by
inode (namespace.py says how they are used), and
`Subtrees`: listings of every directory under an ancestor, made from one recursive
(undelimited) LIST of that ancestor.

Why subtrees: a lookup of a name that is not in a fresh listing must ask the server (one LIST
of the directory, `resolve.Resolver.relist`). A writer spreading new files over many directories
(`cp -r` of a wide tree, a build, the bench's 2,000 files in 200 directories) finds every
directory's listing older than `dir_timeout` at its next create there, so it waited for one
LIST per file. When directories under a common ancestor are relisted within a few seconds of
each other, one recursive LIST of that ancestor (at most `PAGES` pages) lists them all; each
lookup after it answers from that listing until it is `dir_timeout` old, as fresh as a listing
of the directory alone (goofys "slurps" a subtree the same way). A single busy directory is
still relisted alone: an ancestor is only listed once another directory under it needed it.

A subtree listing also says which directories under the ancestor have nothing on the server:
those it does not show. Without that, a writer filling a fresh tree (every file still waiting
for its upload, `tar x`, the bench's small files) found no directory in the recursive listing
and sent it again plus one LIST of the directory for every new name (one run: 2,382 LISTs for
2,000 files, 2 per file once the tree's listings had expired).

Invariants: a listing (a directory's own or a subtree's) is used for `dir_timeout` after it
came; every change made through this mount is applied to it (`changed`); a directory's own
listing that overlapped such a change is not kept (`Listings.keep`), a subtree listing gets
the changes made while it was under way applied (`Subtrees.refresh`); an ancestor whose
subtree does not fit in `PAGES` pages is not listed that way again for `TOO_BIG_FOR` seconds,
nor is one that listings already show larger (`FileNames.estimate`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from cachetools import LRUCache, TTLCache

from bucketfs.backends.base import Backend
from bucketfs.cache.attrstore import Rows
from bucketfs.cache.markers import split_key
from bucketfs.core.attrs import valid_name
from bucketfs.core.nodes import Kind, Node
from bucketfs.types import EMPTY, ListPage, ObjectInfo, slot_setter

#: pages (of PAGE_KEYS keys) a subtree listing may take; a larger subtree is not listed so
PAGES = 3
PAGE_KEYS = 1000
#: how far above a relisted directory an ancestor to list may be
LEVELS = 3
#: an ancestor is listed once another directory under it was relisted within this many
#: seconds (and at least 5 `dir_timeout`s); a directory never listed is listed at the
#: second lookup there within as long (`Listings.worth_listing`)
WINDOW = 5.0
#: seconds an ancestor too large to list recursively is not tried again
TOO_BIG_FOR = 600.0
#: a LIST request's own CPU (signing, sending, the response's headers) in listed entries
#: parsed (~7-10 us each): a subtree listing pays if it parses fewer than this many keys
#: per relisting of one directory it saves (`Subtrees.ancestor_to_list`)
PER_RELIST = 50
#: changes made while a subtree listing is under way that are applied to it (more: dropped)
REPLAY = 1024
#: names of files kept from expired listings (`FileNames`), all directories together
FILE_NAMES = 65536
#: directories relisted one by one lately that `Subtrees` keeps (over its window)
RELISTED = 1024


@dataclass(frozen=True, slots=True, init=False)
class Listed:
    """What a listing says of one object, all a listed file's entry keeps: the `ObjectInfo`
    a page is parsed into also holds the whole key and ten more fields, ~200 bytes an entry
    more (a 100,000-entry listing is held whole while it is read: docs/core.md). Reads like
    the `ObjectInfo` of a listing (no version, no metadata) where `Namespace.apply` and
    revalidation read it."""

    size: int
    etag: str
    last_modified: float
    version_id: ClassVar[None] = None
    metadata: ClassVar[Mapping[str, str]] = EMPTY

    # hand-written: a frozen dataclass's own stores each field through `object.__setattr__`;
    # the slots' setters take half the time (one `Listed` and one `Entry` per listed file)
    def __init__(self, size: int, etag: str, last_modified: float) -> None:
        _set_size(self, size)
        _set_etag(self, etag)
        _set_last_modified(self, last_modified)

    @classmethod
    def of(cls, info: ObjectInfo) -> Listed:
        return cls(info.size, info.etag, info.last_modified)


@dataclass(frozen=True, slots=True, init=False)
class Entry:
    kind: Kind
    #: the object as listed (`Listed`), or as a HEAD found it (a file's, a dir's marker)
    info: ObjectInfo | Listed | None
    head: bool = False  # `info` came from a HEAD (has the metadata), not from a listing

    def __init__(self, kind: Kind, info: ObjectInfo | Listed | None, head: bool = False) -> None:
        _set_kind(self, kind)
        _set_info(self, info)
        _set_head(self, head)

    def marker(self) -> ObjectInfo | None:
        """A directory's marker as its HEAD found it (a listing shows none)."""
        return self.info if isinstance(self.info, ObjectInfo) else None


_set_size = slot_setter(Listed, "size")
_set_etag = slot_setter(Listed, "etag")
_set_last_modified = slot_setter(Listed, "last_modified")
_set_kind = slot_setter(Entry, "kind")
_set_info = slot_setter(Entry, "info")
_set_head = slot_setter(Entry, "head")

#: every listed directory's entry (a listing says nothing more of one)
DIR_ENTRY = Entry(Kind.DIR, None)


@dataclass(slots=True, weakref_slot=True, eq=False)
class Snapshot:
    """What one readdir handle shows of `directory`, in order: a node, or for a name that had
    none when the listing came, the listing's entry, made a node only when readdir hands it to
    the kernel (`readdir.Readdir.listed_node`). So a directory of 100,000 names never has them
    all in the inode table at once, and `max_nodes` holds while it is read (every node made at
    opendir: 100,000 nodes, 100 MiB, until the handle closed). `gone`: names this mount
    removed from the directory since the listing; they are not shown (POSIX leaves open
    whether readdir shows a name removed after opendir; a node made for it would be a
    name that is not there)."""

    directory: Node
    entries: list[tuple[str, Node | Entry]]
    gone: set[str] = field(default_factory=set)
    #: the entries before this one had their kept HEADs read (readdir.py `_kept_node`)
    kept_at: int = 0
    #: the rows read last
    kept_rows: Rows = field(default_factory=dict)


def add_page(prefix: str, page: ListPage, files: dict[str, Entry], dirs: dict[str, Entry]) -> None:
    """The entries of one delimited LIST page of directory `prefix` (its own marker skipped)."""
    for sub in page.prefixes:
        name = sub[len(prefix) : -1]
        if valid_name(name, where=sub):
            dirs[name] = DIR_ENTRY
    for info in page.objects:
        name = info.key[len(prefix) :]
        if name and valid_name(name, where=info.key):
            files[name] = Entry(Kind.FILE, Listed.of(info))


async def list_children(
    backend: Backend, bucket: str | None, prefix: str, *, max_pages: int | None = None
) -> dict[str, Entry] | None:
    """Every child of directory `prefix` on the server, by name (a directory wins over a
    file; with `bucket` None the buckets); None if that takes more than `max_pages` pages."""
    if bucket is None:
        buckets = await backend.list_buckets()
        return {b.name: DIR_ENTRY for b in buckets if valid_name(b.name)}
    files: dict[str, Entry] = {}
    dirs: dict[str, Entry] = {}
    token: str | None = None
    while True:
        page = await backend.list_page(bucket, prefix, delimiter="/", token=token)
        add_page(prefix, page, files, dirs)
        token = page.next_token
        if token is None:
            break
        if max_pages is not None:
            max_pages -= 1
            if max_pages <= 0:
                return None
    if not dirs and _ascending(files):  # as listed (keys come in order): no sorted copy
        return files
    files.update(dirs)
    return dict(sorted(files.items()))


def _ascending(names: Iterable[str]) -> bool:
    previous = ""
    for name in names:
        if name <= previous:
            return False
        previous = name
    return True


def apply_change(listing: dict[str, Entry], name: str, kind: Kind | None) -> None:
    """A change made through this mount, applied to a listing that holds `name`'s directory:
    `kind` None means `name` is gone (a symlink is listed as a file)."""
    if kind is None:
        listing.pop(name, None)
    else:
        kind = Kind.FILE if kind is Kind.LINK else kind
        listing[name] = DIR_ENTRY if kind is Kind.DIR else Entry(kind, None)


def split_subtree(prefix: str, objects: Iterable[ObjectInfo]) -> dict[str, dict[str, Entry]]:
    """Every directory under `prefix` (itself included) -> its entries, from all the keys of
    a recursive listing of `prefix`. A directory wins over a file of the same name."""
    files: dict[str, dict[str, Entry]] = {prefix: {}}
    dirs: dict[str, dict[str, Entry]] = {prefix: {}}
    for info in objects:
        rel = info.key[len(prefix) :]
        parts = rel.split("/")
        directory = prefix
        for depth, name in enumerate(parts):
            if depth == len(parts) - 1:  # the last segment: a file, or "" for a marker
                if name and valid_name(name, where=info.key):
                    files[directory][name] = Entry(Kind.FILE, Listed.of(info))
                break
            if not valid_name(name, where=info.key):
                break  # nothing below a segment that cannot be a name is shown
            dirs[directory][name] = DIR_ENTRY
            directory += name + "/"
            files.setdefault(directory, {})
            dirs.setdefault(directory, {})
    out: dict[str, dict[str, Entry]] = {}
    for directory, entries in files.items():
        entries.update(dirs[directory])
        out[directory] = dict(sorted(entries.items()))
    return out


#: the size kept for a directory whose listing took more than a page
TOO_MANY = 1 << 31


class Listings:
    """Each directory's own last listing (valid `dir_timeout`) and when it came, the number of
    entries it had (no expiry), and how many changes this mount made there, by inode."""

    def __init__(self, dir_timeout: float) -> None:
        self._listings: TTLCache[int, dict[str, Entry]] = TTLCache(
            maxsize=1024, ttl=max(dir_timeout, 1e-6)
        )
        self._made: LRUCache[int, float] = LRUCache(maxsize=1024)
        self._sizes: LRUCache[int, int] = LRUCache(maxsize=65536)
        self._changes: LRUCache[int, int] = LRUCache(maxsize=65536)
        #: directories never listed where a lookup asked the server about a name lately
        self._asked: TTLCache[int, bool] = TTLCache(maxsize=1024, ttl=max(WINDOW, 5 * dir_timeout))
        #: directories listed for lookups only, never by a readdir or made here (`implicit`)
        self._implicit: LRUCache[int, bool] = LRUCache(maxsize=65536)
        #: grows with every change this mount makes to any directory (earlylist.py)
        self.generation = 0

    def get(self, ino: int) -> dict[str, Entry] | None:
        return self._listings.get(ino)

    def made(self, ino: int) -> float | None:
        """When the listing `get` holds came (time.monotonic), if known."""
        return self._made.get(ino)

    def size(self, ino: int) -> int | None:
        """Entries in the directory's last listing (more than one page: too big to relist)."""
        return self._sizes.get(ino)

    def worth_listing(self, ino: int, limit: int) -> bool:
        """Whether a lookup of a name that no fresh listing answers should list directory
        `ino` (one page) rather than ask about the name alone: its last listing had at most
        `limit` entries, or it was never listed and another lookup there asked the server
        less than `WINDOW` ago (`stat` of many names: one LIST, not one per name; within
        `dir_timeout` only, `stat` of names spread over 100 directories asked most of them
        by name twice or more before listing them)."""
        size = self._sizes.get(ino)
        if size is not None:
            return size <= limit
        if self._asked.pop(ino, False):
            self._implicit[ino] = True
            return True
        self._asked[ino] = True
        return False

    def for_lookups(self, ino: int) -> None:
        """The directory is being listed for lookups only, at its first one (resolve.py): as
        a listing `worth_listing` asked for."""
        self._asked.pop(ino, None)
        self._implicit[ino] = True

    def implicit(self, ino: int) -> bool:
        """Whether the directory's listings were made for lookups only (`worth_listing`): a
        name absent from them is still asked by name, so that a name another client just
        made is seen at once unless a readdir (or this mount) listed the directory."""
        return ino in self._implicit

    def changes(self, ino: int) -> int:
        """Changes made through this mount in directory `ino` so far (see `keep`)."""
        return self._changes.get(ino, 0)

    def changed(self, ino: int, name: str, kind: Kind | None) -> None:
        """A change through this mount in directory `ino`: `kind` None means `name` is gone."""
        self.generation += 1
        self._changes[ino] = self._changes.get(ino, 0) + 1
        listing = self._listings.get(ino)
        if listing is not None:
            apply_change(listing, name, kind)

    def keep(
        self, ino: int, listed: dict[str, Entry] | None, changes: int, *, readdir: bool = False
    ) -> bool:
        """A listing of `ino` asked for when it had seen `changes` (None: more than a page);
        kept unless this mount changed the directory meanwhile (it could lack that)."""
        self._sizes[ino] = len(listed) if listed is not None else TOO_MANY
        if readdir:
            self._implicit.pop(ino, None)
        if listed is None or self._changes.get(ino, 0) != changes:
            return False
        self._listings[ino] = listed
        self._made[ino] = time.monotonic()
        return True

    def made_empty(self, ino: int) -> None:
        self.generation += 1
        self._listings[ino] = {}
        self._sizes[ino] = 0
        self._implicit.pop(ino, None)

    def drop(self, ino: int) -> None:
        self.generation += 1
        self._listings.pop(ino, None)

    def clear(self) -> None:
        self.generation += 1
        self._listings.clear()

    def dropped(self, ino: int) -> None:
        """The node is gone for good (inode numbers are never reused)."""
        per = (self._listings, self._made, self._sizes, self._changes, self._asked, self._implicit)
        for per_inode in per:
            per_inode.pop(ino, None)


class FileNames:
    """The names each directory's last listing showed, files and directories apart, kept
    after the listing expired, by (bucket, directory key), at most `FILE_NAMES` names in all
    (the least recently listed directories go first).

    What they are for (resolve.py): a name that the last listing showed as a file is asked
    with its HEAD alone; the answer is as fresh as any, and a name that is now something else
    (gone: the HEAD finds nothing) is asked as if it had never been listed. The listing only
    said the name was not a directory too (a key that is both is shown as the directory):
    a prefix of that name another client makes later shows once a listing of the directory
    is asked for (readdir), as for a file the mount knows already (namespace.py). And how
    many keys a subtree holds, roughly (`estimate`): one too large for a recursive listing
    is not tried (`Subtrees`)."""

    def __init__(self) -> None:
        self._names: LRUCache[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = LRUCache(
            maxsize=FILE_NAMES, getsizeof=lambda both: len(both[0]) + len(both[1])
        )
        #: `estimate`'s answers by (bucket, key, levels), until a listing at or below `key`
        #: (within `LEVELS`) comes: a relisting asks for every ancestor's, and walking the
        #: subtree each time cost a writer filling 200 directories ~0.3 ms per relisting
        self._estimates: dict[tuple[str, str, int], int] = {}

    def listed(self, bucket: str, key: str, listing: dict[str, Entry]) -> None:
        """Directory `key` was listed just now (a readdir, a relisting for lookups)."""
        self._forget_estimates(bucket, key)
        if len(listing) > FILE_NAMES:
            self._names.pop((bucket, key), None)
            return
        files = frozenset(name for name, entry in listing.items() if entry.kind is Kind.FILE)
        dirs = frozenset(listing.keys() - files)
        self._names[(bucket, key)] = (files, dirs)

    def _forget_estimates(self, bucket: str, key: str) -> None:
        estimates = self._estimates
        if len(estimates) > FILE_NAMES:  # (a bound: stale ones are dropped only here)
            estimates.clear()
            return
        for depth, above in enumerate(upward(key)):
            if depth > LEVELS:
                break
            for levels in range(depth, LEVELS + 1):
                estimates.pop((bucket, above, levels), None)

    def was_file(self, bucket: str, key: str, name: str) -> bool:
        names = self._names.get((bucket, key))
        return names is not None and name in names[0]

    def estimate(self, bucket: str, key: str, levels: int = LEVELS) -> int:
        """How many keys directory `key` holds, as far as listings tell (0: never listed):
        its files, and for each subdirectory the mean of those listed (1 if none), down to
        `levels` below it."""
        cached = self._estimates.get((bucket, key, levels))
        if cached is not None:
            return cached
        names = self._names.get((bucket, key))
        if names is None:
            return 0
        files, dirs = names
        below = [f"{key}{name}/" for name in dirs] if levels > 0 else []
        known = [self.estimate(bucket, k, levels - 1) for k in below if (bucket, k) in self._names]
        each = max(1.0, sum(known) / len(known)) if known else 1.0
        keys = self._estimates[(bucket, key, levels)] = len(files) + round(len(dirs) * each)
        return keys


class Subtrees:
    """Listings from recursive LISTs, by (bucket, directory key), each valid `dir_timeout`."""

    def __init__(self, dir_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        ttl = max(dir_timeout, 1e-6)
        self._clock = clock
        self._listings: TTLCache[tuple[str, str], dict[str, Entry]] = TTLCache(
            maxsize=16384, ttl=ttl, timer=clock
        )
        #: directories relisted one by one lately (when an ancestor is worth listing)
        self._window = max(WINDOW, 5 * ttl)
        #: (by when, oldest first; a plain dict: a TTLCache's iteration is Python per key)
        self._relisted: dict[tuple[str, str], float] = {}
        self._too_big: TTLCache[tuple[str, str], bool] = TTLCache(
            maxsize=1024, ttl=TOO_BIG_FOR, timer=clock
        )
        #: when each listing came (`clock`), kept after the listing expired (`_empty`)
        self._made: LRUCache[tuple[str, str], float] = LRUCache(maxsize=65536)
        #: ancestors listed recursively and when: a directory under one that the listing did
        #: not show had nothing on the server then (`_empty`)
        self._complete: TTLCache[tuple[str, str], float] = TTLCache(
            maxsize=1024, ttl=ttl, timer=clock
        )
        self._ttl = ttl
        self._changes = 0  # changes made through this mount, ever
        #: the latest changes (numbered as `_changes` counts them), replayed onto a listing
        #: that was under way while they were made (`refresh`)
        self._recent: deque[tuple[int, str, str, str, Kind | None]] = deque(maxlen=REPLAY)
        self._resets = 0  # forgets and clears, ever: a listing under way meanwhile is dropped
        self.listed = 0  # recursive listings kept (for tests and status)

    def get(self, bucket: str, key: str) -> dict[str, Entry] | None:
        listed = self._listings.get((bucket, key))
        if listed is None:
            return self._empty(bucket, key)
        made = self._made.get((bucket, key))
        if made is not None and self._clock() - made > self._ttl:
            return None  # made empty (`_empty`) late in its ancestor's listing's life
        return listed

    def _empty(self, bucket: str, key: str) -> dict[str, Entry] | None:
        """Directory `key` under an ancestor listed recursively, absent from that listing: it
        had nothing on the server (a directory made here whose files and marker are not up
        yet, a writer's fresh tree). Its listing is empty, as fresh as the ancestor's, and kept
        like the others so that this mount's changes apply to it; None if no ancestor's.

        Not for a directory the ancestor's listing showed (`_made` no older than it): its own
        listing expired (or was evicted), it is not empty. Each cache times its entries from
        when they went in, so an ancestor's completeness, stored after the listings it made,
        outlived them by as long as storing them took: a lookup in that gap found a directory
        made here, holding files, "empty" and answered ENOENT (session 13's lost directories,
        under disk pressure)."""
        made = next(
            (m for p in upward(key) if (m := self._complete.get((bucket, p))) is not None), None
        )
        if made is None or self._clock() - made > self._ttl:
            return None
        shown = self._made.get((bucket, key))
        if shown is not None and shown >= made:
            return None
        entries: dict[str, Entry] = {}
        self._listings[(bucket, key)] = entries
        self._made[(bucket, key)] = made
        return entries

    def made(self, bucket: str, key: str) -> float | None:
        """When the listing `get` holds came (time.monotonic), if known."""
        return self._made.get((bucket, key))

    def changed(self, bucket: str, key: str, name: str, kind: Kind | None) -> None:
        """A change through this mount in directory `key`: `kind` None means `name` is gone."""
        self._changes += 1
        self._recent.append((self._changes, bucket, key, name, kind))
        listing = self._listings.get((bucket, key))
        if listing is None:  # (an empty listing is one: `or` here lost changes to it)
            listing = self._empty(bucket, key)
        if listing is not None:
            apply_change(listing, name, kind)

    def forget(self, bucket: str, key: str) -> None:
        """Directory `key`'s listing is not to be trusted: nor is an ancestor's emptiness."""
        self._changes += 1
        self._resets += 1
        self._listings.pop((bucket, key), None)
        for prefix in upward(key):
            self._complete.pop((bucket, prefix), None)

    def clear(self) -> None:
        self._changes += 1
        self._resets += 1
        self._listings.clear()
        self._complete.clear()

    def ancestor_to_list(
        self, bucket: str, key: str, ancestors: list[tuple[str, int]]
    ) -> str | None:
        """Directory `key` must be relisted; `ancestors` are the keys above it in this mount,
        nearest first, each with the keys it holds as far as listings tell (0: unknown). The
        highest one worth listing recursively, or None.

        Worth it: another directory under it was relisted lately, and its subtree is small
        for the relistings it would save. One recursive listing of K keys costs about as much
        CPU as `PER_RELIST` x K / (keys a relisting of one directory parses + `PER_RELIST`)
        relistings: parsing an entry is ~1/`PER_RELIST` of a request's own cost. The
        relistings it saves are those its `dir_timeout` would see at the pace of the last
        `WINDOW`. A reader walking a tree at 12 directories a second (`tar c` of the bench's
        3,000 files in 120 directories) saves ~12 relistings of ~25 keys with a listing of
        3,000 keys: 32 such listings parsed 96,000 keys, a fifth of the walk's CPU. A writer
        filling a fresh tree (nothing on the server yet) always lists it."""
        relisted = self._relisted
        now = self._clock()
        relisted.pop((bucket, key), None)
        relisted[(bucket, key)] = now
        while len(relisted) > RELISTED:  # (at most this many kept)
            del relisted[next(iter(relisted))]
        stale = []
        for relisted_key, when in relisted.items():
            if now - when < self._window:
                break
            stale.append(relisted_key)
        for relisted_key in stale:
            del relisted[relisted_key]
        others: list[str] | None = None  # (walking up to 1,024 keys: not for no ancestor)
        best = None
        for ancestor, keys in ancestors[:LEVELS]:
            if (bucket, ancestor) in self._too_big:
                break
            if others is None:
                others = [k for (b, k) in self._relisted if b == bucket and k != key]
            under = sum(1 for k in others if k.startswith(ancestor))
            if not under:
                continue
            saved = max(1.0, (under + 1) * self._ttl / self._window)
            if keys <= PER_RELIST * saved:
                best = ancestor
        return best

    def too_big(self, bucket: str, key: str) -> bool:
        """Whether directory `key` was found too large to list recursively lately."""
        return (bucket, key) in self._too_big

    def seen_too_big(self, bucket: str, key: str) -> None:
        """Listings show directory `key` too large to list recursively (`FileNames.estimate`):
        it is not tried, nor estimated again, for `TOO_BIG_FOR` s (an estimate walks every
        listed directory below it: 0.4 ms for the bench's tree, at every relisting there)."""
        self._too_big[(bucket, key)] = True

    async def refresh(
        self, backend: Backend, bucket: str, prefix: str
    ) -> dict[str, dict[str, Entry]] | None:
        """List everything under `prefix` (at most PAGES pages) and keep a listing of every
        directory there; returns them, or None if the subtree was too large. The changes this
        mount made while the listing was under way are applied to it (it may lack them: an
        upload that landed meanwhile, the next create of a writer); if more than `REPLAY`
        were made, or a listing was dropped meanwhile, None."""
        changes, resets = self._changes, self._resets
        objects: list[ObjectInfo] = []
        token: str | None = None
        for _ in range(PAGES):
            page = await backend.list_page(
                bucket, prefix, delimiter=None, token=token, max_keys=PAGE_KEYS
            )
            objects.extend(page.objects)
            token = page.next_token
            if token is None:
                break
        else:
            self._too_big[(bucket, prefix)] = True
            return None
        missed = [change for change in self._recent if change[0] > changes]
        if self._resets != resets or len(missed) != self._changes - changes:
            return None
        listings = split_subtree(prefix, objects)
        for _, in_bucket, key, name, kind in missed:
            if in_bucket == bucket and key.startswith(prefix):
                apply_change(listings.setdefault(key, {}), name, kind)
        now = self._clock()
        for key, entries in listings.items():
            self._listings[(bucket, key)] = entries
            self._made[(bucket, key)] = now
        self._complete[(bucket, prefix)] = now
        self.listed += 1
        return listings


def upward(key: str) -> Iterator[str]:
    """A directory's key and those of the directories above it: `a/b/`, `a/`, ``."""
    while True:
        yield key
        if not key:
            return
        key = split_key(key)[0]


def held_listing(
    listings: Listings, subtrees: Subtrees, ino: int, bucket: str, key: str
) -> dict[str, Entry] | None:
    """Directory `ino`'s (`bucket`, `key`) listing held and fresh: its own, else a subtree's."""
    listed = listings.get(ino)
    return listed if listed is not None else subtrees.get(bucket, key)
