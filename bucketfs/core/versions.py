"""The read-only `.versions/` tree: old versions of objects, and the bucket as it was.

In every directory `d` of a bucket, `d/.versions/` (never listed by readdir of `d`) holds:

- `name/` for every key `d/name` that has versions, deleted ones too, holding one file per
  version named `<UTC last-modified>-<version id>` (`20261121T100000.123Z-3HL4k...`), so that
  `ls` sorts them oldest to newest; a delete marker is an empty file with a `.deleted` suffix;
- `@<ISO-8601 instant>/` (looked up, never listed): the subtree `d` as it was at that instant.

Every node here is a `Node` with `virtual` set, made by `InodeTable.add_virtual`: it has an inode
but no place in the key namespace (`by_path`, `children`), so nothing in namespace.py that walks
keys ever meets it; `Virtual` and `VKind` live in nodes.py (a node's field). See
docs/versions.md for the decisions and their reasons.

Invariants: nothing here writes to the store (every change is refused with EROFS by `refuse`);
a version's content never changes, so a version file's bytes may be cached freely (LRU buffer,
`keep_cache`); the same identity (bucket, key, version, instant) gets the same inode while the
kernel holds it; listings follow every page (`PAGE_SIZE` entries per request); versions of one
key are ordered by last-modified (milliseconds), ties by the store's own order (`is_latest`
last, then the listing, which is newest first) — never by the version id, which is opaque
(SeaweedFS's ids even sort newest first).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import trio
from cachetools import LRUCache, TTLCache

from bucketfs.backends.base import Backend
from bucketfs.concurrency import for_each
from bucketfs.core.attrs import Defaults, valid_name
from bucketfs.core.listing import Entry
from bucketfs.core.nodes import InodeTable, Kind, Node, Virtual, VKind
from bucketfs.errors import NoEntry, NotSupported, ReadOnly
from bucketfs.types import ObjectInfo

log = logging.getLogger(__name__)

VERSIONS = ".versions"
DELETED_SUFFIX = ".deleted"
NULL_VERSION = "null"
#: entries asked for per listing request (tests make it small to prove pagination)
PAGE_SIZE = 1000
#: bytes fetched per GET when reading a version (and kept for the next sequential read)
READ_CHUNK = 4 << 20
#: version files whose last chunk is kept in memory
READ_BUFFERS = 16
#: point-in-time listings check this many subdirectories at once
PARALLEL_CHECKS = 8

Entries = dict[str, tuple[Virtual, float]]  # name -> (what it is, mtime)


# --- names and instants ----------------------------------------------------------------------


def millis(seconds: float) -> int:
    return round(seconds * 1000)


def stamp(ms: int) -> str:
    """`20261121T100000.123Z`: fixed width, so names sort as times."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def iso(ms: int) -> str:
    """`2026-11-21T10:00:00.123Z` (the form `user.bucketfs.last_modified` shows)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_instant(text: str) -> int | None:
    """An ISO-8601 instant as ms since the epoch; without a zone it is UTC. None if invalid."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return millis(when.timestamp())
    except (OverflowError, ValueError):
        return None


def _quote_id(version_id: str) -> str:
    # S3 version ids may hold "/" (AWS does); "%" is escaped so the mapping stays reversible
    return version_id.replace("%", "%25").replace("/", "%2F")


def ordered(versions: list[tuple[int, ObjectInfo]]) -> list[ObjectInfo]:
    """The versions of one key (with their index in the listing), oldest first."""
    return [
        info
        for _, info in sorted(
            versions, key=lambda e: (millis(e[1].last_modified), e[1].is_latest, -e[0])
        )
    ]


def version_names(versions: list[ObjectInfo]) -> list[str]:
    """File names for the versions of one key, given oldest first. Versions that share a
    millisecond get a fixed-width sequence number after the time, so `ls` keeps their order."""
    names: list[str] = []
    i = 0
    while i < len(versions):
        ms = millis(versions[i].last_modified)
        j = i
        while j < len(versions) and millis(versions[j].last_modified) == ms:
            j += 1
        width = len(str(j - i))
        for n, info in enumerate(versions[i:j], start=1):
            seq = f"-{n:0{width}d}" if j - i > 1 else ""
            vid = _quote_id(info.version_id or NULL_VERSION)
            suffix = DELETED_SUFFIX if info.is_delete_marker else ""
            names.append(f"{stamp(ms)}{seq}-{vid}{suffix}")
        i = j
    return names


def state_at(versions: list[tuple[int, ObjectInfo]], at_ms: int) -> ObjectInfo | None:
    """The version of one key current at `at_ms`; None if it did not exist or was deleted."""
    before = [e for e in versions if millis(e[1].last_modified) <= at_ms]
    if not before:
        return None
    current = ordered(before)[-1]
    return None if current.is_delete_marker else current


# --- the tree --------------------------------------------------------------------------------


class Versions:
    """Lookups, listings and reads of the `.versions/` tree, for `BucketFS`."""

    def __init__(
        self,
        backend: Backend,
        table: InodeTable,
        defaults: Defaults,
        *,
        enabled: bool,
        ttl: float,
    ) -> None:
        self.backend = backend
        self.table = table
        self.defaults = defaults
        self.enabled = enabled
        self._inos: dict[tuple[object, ...], int] = {}
        self._listings: TTLCache[int, Entries] = TTLCache(maxsize=256, ttl=max(ttl, 1e-6))
        self._buffers: LRUCache[int, tuple[int, bytes]] = LRUCache(maxsize=READ_BUFFERS)
        self._limiter = trio.CapacityLimiter(PARALLEL_CHECKS)

    # --- hooks for BucketFS ------------------------------------------------------------------

    def refuse(self, node: Node, name: str | None = None) -> None:
        """EROFS for a change to a node of this tree, or to the name `.versions` itself."""
        if node.virtual is not None or (
            name == VERSIONS and self.enabled and node.bucket is not None
        ):
            log.debug("refused: %s is read-only (the .versions tree)", name or node.name)
            raise ReadOnly("the .versions tree is read-only")

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The node for `name` in `parent` if it belongs to this tree, else None."""
        pv = parent.virtual
        if pv is None:
            if name != VERSIONS or not self.enabled or parent.bucket is None:
                return None
            index = Virtual(VKind.INDEX, parent.bucket, parent.key)
            return self._node(parent, name, index, parent.mtime)
        at_ms = parse_instant(name[1:]) if name.startswith("@") else None
        if pv.kind is VKind.INDEX and at_ms is not None:  # an instant wins over a file "@..."
            return self._node(parent, name, Virtual(VKind.AT, pv.bucket, pv.path, at_ms), at_ms)
        if pv.kind is VKind.INDEX and parent.ino not in self._listings:
            return await self._lookup_key(parent, pv, name)  # one key: no need to list all
        found = (await self._entries(parent)).get(name)
        if found is None:
            raise NoEntry()
        return self._node(parent, name, *found)

    async def readdir(
        self, directory: Node, real: Callable[[Node], Awaitable[list[tuple[str, Node | Entry]]]]
    ) -> list[tuple[str, Node | Entry]]:
        """readdir's snapshot: this tree's entries, or the real ones without `.versions`."""
        if directory.virtual is None:
            entries = await real(directory)
            if self.enabled and directory.bucket is not None:
                entries = [entry for entry in entries if entry[0] != VERSIONS]
            return entries
        listing = await self._entries(directory)
        nodes: list[tuple[str, Node | Entry]] = [
            (name, self._node(directory, name, v, mt)) for name, (v, mt) in listing.items()
        ]
        return nodes

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes of a version file (a GET with its version id; chunks kept for the next read)."""
        v = node.virtual
        assert v is not None
        assert v.version is not None
        end = min(offset + size, node.size)
        if v.version.is_delete_marker or offset >= end:
            return b""
        buffered = self._buffers.get(node.ino)
        if buffered is not None:
            start, data = buffered
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        stop = min(node.size, offset + max(size, READ_CHUNK))
        version_id, if_match = get_args(v.version)
        data = await self.backend.get(
            v.bucket, v.path, offset, stop, version_id=version_id, if_match=if_match
        )
        self._buffers[node.ino] = (offset, data)
        return data[: end - offset]

    # --- listings ----------------------------------------------------------------------------

    async def _entries(self, directory: Node) -> Entries:
        cached = self._listings.get(directory.ino)
        if cached is not None:
            return cached
        v = directory.virtual
        assert v is not None
        if v.kind is VKind.INDEX:
            entries = await self._index(v)
        elif v.kind is VKind.KEY:
            entries = self._key_entries(v, await self._key_versions(v.bucket, v.path))
        elif v.kind is VKind.AT:
            entries = await self._at(v)
        else:
            raise NoEntry("not a directory")
        self._listings[directory.ino] = entries
        return entries

    async def _scan(
        self,
        bucket: str,
        prefix: str,
        *,
        delimiter: str | None,
        visit: Callable[[ObjectInfo], bool],
    ) -> list[str]:
        """Call `visit` for every version under `prefix` in listing order (keys ascending,
        each key's versions newest first), following every page, until it returns False.
        Returns the common prefixes seen. A store without version listings shows its current
        objects as their only versions."""
        prefixes: list[str] = []
        key_marker: str | None = None
        version_marker: str | None = None
        while True:
            try:
                page = await self.backend.list_versions_page(
                    bucket,
                    prefix,
                    delimiter=delimiter,
                    key_marker=key_marker,
                    version_marker=version_marker,
                    max_keys=PAGE_SIZE,
                )
            except NotSupported:
                if key_marker is not None:
                    raise
                return await self._scan_current(bucket, prefix, delimiter=delimiter, visit=visit)
            prefixes.extend(page.prefixes)
            for info in page.versions:
                if not visit(info):
                    return prefixes
            key_marker, version_marker = page.next_key_marker, page.next_version_marker
            if key_marker is None:
                return prefixes

    async def _scan_current(
        self,
        bucket: str,
        prefix: str,
        *,
        delimiter: str | None,
        visit: Callable[[ObjectInfo], bool],
    ) -> list[str]:
        prefixes: list[str] = []
        token: str | None = None
        while True:
            page = await self.backend.list_page(
                bucket, prefix, delimiter=delimiter, token=token, max_keys=PAGE_SIZE
            )
            prefixes.extend(page.prefixes)
            for info in page.objects:
                if not visit(info):
                    return prefixes
            token = page.next_token
            if token is None:
                return prefixes

    async def _list_all(
        self, bucket: str, prefix: str, *, delimiter: str | None, only: str | None = None
    ) -> tuple[list[tuple[int, ObjectInfo]], list[str]]:
        """Every version under `prefix` with its index in the listing, and the common
        prefixes. `only`: versions of that key alone (the listing stops after them)."""
        versions: list[tuple[int, ObjectInfo]] = []

        def visit(info: ObjectInfo) -> bool:
            if only is not None and info.key != only:
                return False
            versions.append((len(versions), info))
            return True

        prefixes = await self._scan(bucket, prefix, delimiter=delimiter, visit=visit)
        return versions, prefixes

    async def _key_versions(self, bucket: str, key: str) -> list[ObjectInfo]:
        """Every version of exactly `key`, oldest first."""
        # `key` sorts before every other key it is a prefix of, so its versions come first
        found, _ = await self._list_all(bucket, key, delimiter="/", only=key)
        return ordered(found)

    def _key_entries(self, v: Virtual, versions: list[ObjectInfo]) -> Entries:
        return {
            name: (Virtual(VKind.VERSION, v.bucket, v.path, version=info), info.last_modified)
            for name, info in zip(version_names(versions), versions, strict=True)
        }

    async def _lookup_key(self, parent: Node, index: Virtual, name: str) -> Node:
        if not valid_name(name):
            raise NoEntry()
        key = index.path + name
        versions = await self._key_versions(index.bucket, key)
        if not versions:
            raise NoEntry()
        v = Virtual(VKind.KEY, index.bucket, key)
        node = self._node(parent, name, v, versions[-1].last_modified)
        self._listings[node.ino] = self._key_entries(v, versions)
        return node

    async def _index(self, v: Virtual) -> Entries:
        found, _ = await self._list_all(v.bucket, v.path, delimiter="/")
        newest: dict[str, float] = {}
        for _, info in found:
            name = info.key[len(v.path) :]
            if name and valid_name(name, where=info.key):
                newest[name] = max(newest.get(name, 0.0), info.last_modified)
        return {
            name: (Virtual(VKind.KEY, v.bucket, v.path + name), mtime)
            for name, mtime in sorted(newest.items())
        }

    async def _at(self, v: Virtual) -> Entries:
        """The prefix `v.path` as it was at `v.at_ms`: files current then, and directories
        that held at least one such file (or marker)."""
        assert v.at_ms is not None
        at_ms = v.at_ms
        found, prefixes = await self._list_all(v.bucket, v.path, delimiter="/")
        by_key: dict[str, list[tuple[int, ObjectInfo]]] = {}
        for entry in found:
            by_key.setdefault(entry[1].key, []).append(entry)
        entries: Entries = {}
        for key, versions in sorted(by_key.items()):
            name = key[len(v.path) :]
            info = state_at(versions, at_ms)
            if info is not None and name and valid_name(name, where=key):
                file = Virtual(VKind.VERSION, v.bucket, key, at_ms, info)
                entries[name] = (file, info.last_modified)
        existed: set[str] = set()

        async def check(prefix: str) -> None:
            if await self._existed(v.bucket, prefix, at_ms):
                existed.add(prefix)

        await for_each(prefixes, check, self._limiter)
        for prefix in sorted(existed):
            name = prefix[len(v.path) : -1]
            if valid_name(name, where=prefix):  # a directory wins over a file, as in listing.py
                entries[name] = (Virtual(VKind.AT, v.bucket, prefix, at_ms), at_ms / 1000)
        return dict(sorted(entries.items()))

    async def _existed(self, bucket: str, prefix: str, at_ms: int) -> bool:
        """Whether any key under `prefix` was current at `at_ms` (stops at the first one)."""
        group: list[tuple[int, ObjectInfo]] = []
        found = False

        def visit(info: ObjectInfo) -> bool:
            nonlocal group, found
            if group and group[0][1].key != info.key:
                found = state_at(group, at_ms) is not None
                group = []
            group.append((len(group), info))
            return not found

        await self._scan(bucket, prefix, delimiter=None, visit=visit)
        return found or (bool(group) and state_at(group, at_ms) is not None)

    # --- nodes -------------------------------------------------------------------------------

    def _node(self, parent: Node, name: str, v: Virtual, mtime: float) -> Node:
        """The node for `v`: the one the kernel already knows, or a new one."""
        ident = v.ident
        ino = self._inos.get(ident)
        node = self.table.get(ino) if ino is not None else None
        if node is not None and node.virtual is not None and node.virtual.ident == ident:
            node.virtual = v  # a newer listing may say more (is_latest)
            return node
        d = self.defaults
        ro = ~0o222
        if v.kind is VKind.VERSION:
            info = v.version
            assert info is not None
            node = self.table.add_virtual(
                parent,
                name,
                Kind.FILE,
                bucket=v.bucket,
                key=parent.key + name,
                mode=d.file_mode & ro,
                uid=d.uid,
                gid=d.gid,
                size=0 if info.is_delete_marker else info.size,
                mtime=mtime,
                ctime=mtime,
                etag=info.etag or None,
                version_id=info.version_id,
                virtual=v,
            )
        else:
            if not math.isfinite(mtime) or mtime <= 0:
                mtime = time.time()
            node = self.table.add_virtual(
                parent,
                name,
                Kind.DIR,
                bucket=v.bucket,
                key=parent.key + name + "/",
                mode=d.dir_mode & ro,
                uid=d.uid,
                gid=d.gid,
                mtime=mtime,
                ctime=mtime,
                virtual=v,
            )
        self._inos[ident] = node.ino
        if len(self._inos) > 4 * len(self.table) + 1024:
            self._inos = {k: i for k, i in self._inos.items() if self.table.get(i) is not None}
        return node


def get_args(info: ObjectInfo) -> tuple[str | None, str | None]:
    """(version_id, if_match) for a GET (or a URL) of this version. The "null" version is the
    plain object while it is the latest (stores without versioning know no version ids)."""
    if info.version_id in (None, NULL_VERSION) and info.is_latest:
        return None, info.etag or None
    return info.version_id, None
