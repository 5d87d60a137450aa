"""BucketFS: the filesystem in plain terms, without FUSE.

Owns the namespace of one mount: lookups, attributes, directory listings, creating, renaming
and removing names, and the open handles. File contents are delegated to `files.FileData`.
`fuse_ops.py` adapts pyfuse3 calls to these methods; tests can call them directly.

Namespace rules (README "How bucketfs maps keys"): a key `a/b/c` is file `c` in directory
`a/b`; directories come from common prefixes and from `dir/` marker objects; when a key is both
a file and a prefix the directory wins (the object stays reachable with other S3 tools); keys
whose segments cannot be file names are skipped and logged once.

Invariants: a method either completes its server-side change or raises a `BucketfsError` and
leaves the table as it was; nodes with local state the server lacks (`Node.pinned`) are never
replaced by what a listing or HEAD says; listings of a directory are cached for `dir_timeout`
and invalidated by every change made through this mount.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cachetools import LRUCache, TTLCache

from bucketfs.backends.base import Backend
from bucketfs.cache.deletes import DeferredDeletes
from bucketfs.cache.store import BlockCache, CachedFile, ReadState
from bucketfs.cache.writeback import Uploaded, WriteBack
from bucketfs.concurrency import for_each, gather
from bucketfs.core.attrs import (
    NAME_MAX,
    Defaults,
    check_new_name,
    object_kind,
    parse_posix,
    rdev_metadata,
    special_kind,
    valid_name,
)
from bucketfs.core.contents import DataOptions, FileData, write_options
from bucketfs.core.control import (
    CONTROL_XATTRS,
    XATTR_FLUSH,
    XATTR_PID,
    XATTR_STATUS,
    XATTR_UPLOAD_STATE,
)
from bucketfs.core.listing import Entry, Subtrees, add_page, apply_change
from bucketfs.core.nodes import ROOT_INO, InodeTable, Kind, Node
from bucketfs.core.versions import Versions
from bucketfs.core.xattrs import Xattrs
from bucketfs.errors import (
    BadHandle,
    BucketfsError,
    BucketNotFound,
    CrossDevice,
    DirectoryNotEmpty,
    FileExists,
    FileTooLarge,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoEntry,
    NotADirectory,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
)
from bucketfs.types import ObjectInfo, WriteOptions

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: readdir asks for the metadata of at most this many listed entries ahead of the kernel
PREFETCH_ENTRIES = 4096
#: a directory whose last listing had at most this many entries is listed again (one page)
#: to answer a lookup once its listing expired, instead of a HEAD and a LIST per name
RELIST_ENTRIES = 1000
PREFETCH_PARALLEL = 32
#: `open` reuses a HEAD of the same key sent at most this long before it instead of sending
#: another: the kernel looks a name up (one HEAD) right before it opens it, within one
#: syscall. A HEAD serves one `open` at most, so two opens never share one.
OPEN_REUSES_HEAD = 0.01


@dataclass(frozen=True, slots=True)
class FsOptions:
    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    dir_timeout: float = 1.0
    dir_attr_timeout: float = 60.0
    negative_timeout: float = 1.0
    read_only: bool = False
    part_size: int = 16 << 20
    max_parallel: int = 16
    block_size: int = 1 << 20
    cache_size: int = 10 << 30
    writeback_delay: float = 0.0
    max_dirty: int = 2 << 30
    noversions: bool = False  # hide the .versions/ tree (versions.py)
    url_ttl: int = 3600  # seconds a user.bucketfs.url stays valid (xattrs.py)


@dataclass(frozen=True, slots=True)
class StatFs:
    bsize: int = 4096
    blocks: int = 1 << 38  # 1 PiB in 4 KiB blocks: object stores have no fixed size
    bfree: int = 1 << 38
    files: int = 1 << 32
    ffree: int = 1 << 32
    namemax: int = 255


@dataclass(slots=True)
class Handle:
    fh: int
    node: Node
    writable: bool
    read_state: ReadState = field(default_factory=ReadState)


@dataclass(slots=True)
class DirHandle:
    fh: int
    node: Node
    entries: list[tuple[str, Node]] | None = None


class BucketFS:
    def __init__(
        self,
        backend: Backend,
        *,
        bucket: str | None,
        prefix: str,
        options: FsOptions,
        cache_dir: Path,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        # hook: unlink's deletes leave in batches; every request keeps order with them
        self.backend = DeferredDeletes(backend)
        self.opts = options
        self.defaults = Defaults(options.uid, options.gid, options.file_mode, options.dir_mode)
        self._cache_dir = cache_dir
        root = Node(
            ino=ROOT_INO,
            kind=Kind.DIR,
            bucket=bucket,
            key=prefix,
            parent=ROOT_INO,
            name="",
            mode=options.dir_mode,
            uid=options.uid,
            gid=options.gid,
            is_bucket=bucket is not None and not prefix,
        )
        self.table = InodeTable(root, on_drop=self._node_dropped)
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._negative: TTLCache[tuple[int, str], bool] = TTLCache(
            maxsize=65536, ttl=max(options.negative_timeout, 1e-6)
        )
        self._listings: TTLCache[int, dict[str, Entry]] = TTLCache(
            maxsize=1024, ttl=max(options.dir_timeout, 1e-6)
        )
        self._limiter = trio.CapacityLimiter(options.max_parallel)
        #: when the last HEAD that found each key was sent, and the ETag it saw (for `open`,
        #: OPEN_REUSES_HEAD)
        self._heads_sent: TTLCache[tuple[str, str], tuple[float, str]] = TTLCache(
            maxsize=4096, ttl=OPEN_REUSES_HEAD
        )
        self._data: FileData | None = None
        self._nursery: trio.Nursery | None = None
        #: HEADs started by readdir for nodes known only from a listing, by inode
        self._prefetching: dict[int, trio.Event] = {}
        self._prefetch_limiter = trio.CapacityLimiter(PREFETCH_PARALLEL)
        self._deferred_prefetch: LRUCache[int, list[Node]] = LRUCache(maxsize=256)
        #: entries of each directory's last listing, by inode (to decide on relisting)
        self._listing_sizes: LRUCache[int, int] = LRUCache(maxsize=65536)
        #: changes made through this mount, per directory inode (a relisting of a directory
        #: that overlaps a change there is not kept)
        self._changes: LRUCache[int, int] = LRUCache(maxsize=65536)
        #: listings of many directories from one recursive LIST of an ancestor (listing.py)
        self._subtrees = Subtrees(options.dir_timeout)
        # hook: the .versions/ tree and object metadata as xattrs (versions.py, xattrs.py)
        self.versions = Versions(
            self.backend,
            self.table,
            self.defaults,
            enabled=not options.noversions,
            ttl=options.dir_timeout,
        )
        self.xattrs = Xattrs(
            self.backend,
            url_ttl=options.url_ttl,
            persist=self._persist_attrs,
            flush=self.sync_path,
            refresh=self.getattr,
            read_only=options.read_only,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the cache, the uploads and readahead until cancelled.

        Dirty files left by an earlier run are queued for upload before `started()`, so before
        the mount becomes visible."""
        opts = self.opts
        cache: BlockCache | None = None
        try:
            async with trio.open_nursery() as nursery:
                cache = BlockCache(
                    self._cache_dir,
                    self.backend,
                    nursery,
                    block_size=opts.block_size,
                    cache_size=opts.cache_size,
                )
                writeback = WriteBack(
                    cache,
                    self.backend,
                    delay=opts.writeback_delay,
                    part_size=opts.part_size,
                    on_uploaded=self._uploaded,
                    on_conflict=self._conflicted,
                    held=self._held,
                )
                self._data = FileData(
                    self.backend,
                    cache,
                    writeback,
                    DataOptions(
                        max_parallel=opts.max_parallel,
                        max_dirty=opts.max_dirty,
                    ),
                )
                self._nursery = nursery
                self.backend.attach(cache.index)
                await nursery.start(self.backend.run)
                await nursery.start(writeback.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            # only once every task that used it is gone (threads finish before cancelling)
            if cache is not None:
                cache.close()

    def _conflicted(self, cf: CachedFile, key: str) -> None:
        """Our version of `key` went to a conflict name: the name shows the server's again."""
        node = self._node_at(cf.bucket, key)
        if node is not None:
            node.cached = None
            node.attr_expiry = 0.0
            node.kernel_etag = None
        self._negative.clear()
        self._listings.clear()
        self._subtrees.clear()

    def _node_at(self, bucket: str, key: str | None) -> Node | None:
        """The node reachable under `key` in `bucket`, if the table has one."""
        ino = self.table.by_path.get((bucket, key)) if key is not None else None
        return self.table.get(ino) if ino is not None else None

    def _held(self, cf: CachedFile) -> bool:
        """Whether a handle has the file open for writing (its upload waits, WriteBack)."""
        node = self._node_at(cf.bucket, cf.key)
        return node is not None and node.writers > 0

    def _uploaded(self, done: Uploaded) -> None:
        """The write-back confirmed an upload: the node (if any) now matches the server."""
        cf = done.file
        if cf.key is not None:
            node = self._node_at(cf.bucket, cf.key)
            if node is not None and node.cached is cf:
                node.etag = done.result.etag
                node.version_id = done.result.version_id
                node.size = done.size
                node.metadata = dict(cf.meta.get("metadata", {}))
                node.content_type = cf.meta.get("content_type")
                node.kernel_etag = done.result.etag
                node.full = True
                node.attr_expiry = time.monotonic() + self.opts.attr_timeout
                self.table.settle(node)  # the kernel may have forgotten it while dirty
        self.data.uploaded()

    @property
    def ready(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> FileData:
        if self._data is None:
            raise RuntimeError("BucketFS.run() has not started")
        return self._data

    async def drain(self) -> list[str]:
        """Upload every dirty file; returns those that could not be uploaded (they stay in
        the cache's index and are uploaded by the next mount of this cache directory)."""
        if self._data is None:
            return []
        try:
            await self.backend.flush()
        except BucketfsError as exc:
            log.error("could not delete %d unlinked objects: %s", self.backend.queued, exc)
        failed = await self.data.writeback.drain()
        names = [f"{cf.bucket}/{cf.key}" for cf in failed]
        for cf in failed:
            log.error("could not upload %s/%s: %s", cf.bucket, cf.key, cf.error)
        return names

    # --- helpers -----------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise NoEntry(f"inode {ino} is not known")
        return node

    def _dir(self, ino: int) -> Node:
        node = self.node(ino)
        if node.kind is not Kind.DIR:
            raise NotADirectory()
        return node

    def _writable(self) -> None:
        if self.opts.read_only:
            raise ReadOnly()

    def _changed(self, directory: Node, name: str, kind: Kind | None = None) -> None:
        """A change made through this mount: a listing we hold is kept in step (not dropped),
        so lookups of new names need no request; `kind` None means `name` is gone."""
        self._changes[directory.ino] = self._changes.get(directory.ino, 0) + 1
        self._negative.pop((directory.ino, name), None)
        # POSIX: an entry made, removed or renamed changes its directory's mtime and ctime;
        # kept in memory (a marker PUT per create would double its cost), written with the
        # directory's next marker write (docs/core.md)
        now = time.time()
        directory.mtime = directory.ctime = directory.entries_changed = now
        if directory.bucket is not None:
            self._subtrees.changed(directory.bucket, directory.key, name, kind)
        listing = self._listings.get(directory.ino)
        if listing is not None:
            apply_change(listing, name, kind)

    def _drop_listing(self, directory: Node) -> None:
        """Forget what listings (its own or a subtree's) say `directory` holds."""
        self._listings.pop(directory.ino, None)
        if directory.bucket is not None:
            self._subtrees.forget(directory.bucket, directory.key)

    def _bucket_of(self, directory: Node) -> str:
        if directory.bucket is None:
            raise NotPermitted("only directories (buckets) can be made at the top of s3://")
        return directory.bucket

    def _apply(self, node: Node, info: ObjectInfo, *, full: bool) -> None:
        posix = parse_posix(info.metadata) if full else None
        default_mode = self.defaults.dir_mode if node.kind is Kind.DIR else self.defaults.file_mode
        if node.kind is not Kind.DIR:
            if node.etag != info.etag:
                node.link_target = None
            node.size = info.size
            node.etag = info.etag
            node.version_id = info.version_id
        node.mtime = (posix.mtime if posix and posix.mtime is not None else None) or (
            info.last_modified or node.mtime
        )
        # S3 has no ctime: it is when we last saw a change, and never goes backwards (tar
        # and rsync compare it before and after reading a file)
        derived = node.mtime if posix and posix.mtime is not None else info.last_modified
        node.ctime = max(node.ctime, derived) if node.full else derived
        if node.kind is Kind.DIR:  # entries changed here: until the marker says so too
            node.mtime = max(node.mtime, node.entries_changed)
            node.ctime = max(node.ctime, node.entries_changed)
        if posix is not None:
            node.atime = posix.atime
        node.mode = posix.mode if posix and posix.mode is not None else default_mode
        node.uid = posix.uid if posix and posix.uid is not None else self.defaults.uid
        node.gid = posix.gid if posix and posix.gid is not None else self.defaults.gid
        if full:
            node.metadata = dict(info.metadata)
            node.content_type = info.content_type
            node.system = dict(info.system)
        node.full = full
        node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        if node.kind is Kind.DIR and full:
            self._marker_seen(node)

    def _marker_seen(self, node: Node) -> None:
        """The directory's marker (or that it has none) was just read from the server."""
        node.marker_expiry = time.monotonic() + max(
            self.opts.attr_timeout, self.opts.dir_attr_timeout
        )

    def _apply_marker(self, node: Node, marker: ObjectInfo | None) -> None:
        """A directory's `dir/` marker as just read from the server (None: it has none)."""
        node.has_marker = marker is not None
        if marker is not None:
            self._apply(node, marker, full=True)
        else:
            node.full = True
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            self._marker_seen(node)

    @staticmethod
    def _marker_fresh(node: Node) -> bool:
        """A directory whose attributes (from its marker) may be reused without asking."""
        return node.kind is Kind.DIR and node.full and node.marker_expiry > time.monotonic()

    def _new_node(self, parent: Node, name: str, kind: Kind, **attrs: object) -> Node:
        mode = self.defaults.dir_mode if kind is Kind.DIR else self.defaults.file_mode
        base: dict[str, object] = {"mode": mode, "uid": self.defaults.uid, "gid": self.defaults.gid}
        base.update(attrs)
        if parent.bucket is None:
            base.setdefault("bucket", name)
            base.setdefault("key", "")
            base.setdefault("is_bucket", True)
        return self.table.add(parent, name, kind, **base)

    # --- lookup and attributes -----------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Node:
        """Find `name` in the directory and count one kernel reference to it."""
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise NameTooLong()
        if not valid_name(name):
            raise NoEntry()
        parent = self._dir(parent_ino)
        # hook: .versions/ and everything below it (versions.py)
        node = await self.versions.lookup(parent, name) or await self._find(parent, name)
        self.table.remember(node)
        return node

    async def _find(self, parent: Node, name: str, *, exact: bool = False) -> Node:
        """The node of `name`, asking the server unless known and fresh; `exact` (O_EXCL,
        which drops the cached listing first) asks about this directory alone, never with a
        subtree listing (one page, not up to listing.PAGES, for every exclusive create)."""
        node = self.table.child(parent, name)
        if node is not None and not node.full:
            self._kick_prefetch(node)
            await self._await_prefetch(node)
        if node is not None and (
            node.pinned or (node.full and node.attr_expiry > time.monotonic())
        ):
            return node
        if node is None and parent.bucket is not None and self._data is not None:
            cf = self.data.cache.find(parent.bucket, parent.key + name)
            if cf is not None and cf.dirty:
                return self._node_from_cache(parent, name, cf)
        if (parent.ino, name) in self._negative:
            raise NoEntry()
        if node is not None and node.kind is not Kind.DIR and node.bucket is not None:
            # revalidate a known file with one HEAD; only if it is gone ask what is there now
            info = await self._head_or_none(node.bucket, node.key)
            if info is not None and self._file_entry(info).kind is node.kind:
                self._apply(node, info, full=True)
                return node
        # a known directory's attributes outlive its entry: only ask whether it still exists
        known_dir = node is not None and self._marker_fresh(node)
        entry = await self._resolve(parent, name, marker=not known_dir, exact=exact)
        if entry is None:
            if node is not None:
                self.table.detach(node)
            self._negative[(parent.ino, name)] = True
            raise NoEntry()
        if node is not None and known_dir and entry.kind is Kind.DIR:
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            return node
        if node is None or node.kind is not entry.kind:
            node = self._new_node(parent, name, entry.kind)
        if entry.kind is Kind.DIR:
            self._apply_marker(node, entry.info)
        elif entry.info is not None:
            self._apply(node, entry.info, full=True)
        return node

    def _node_from_cache(self, parent: Node, name: str, cf: CachedFile) -> Node:
        """A node for a file the cache holds but the server may not have yet (after a crash)."""
        metadata = dict(cf.meta.get("metadata", {}))
        posix = parse_posix(metadata)
        kind = Kind.LINK if posix.kind is Kind.LINK else Kind.FILE
        node = self._new_node(
            parent,
            name,
            kind,
            mode=posix.mode if posix.mode is not None else self.defaults.file_mode,
            uid=posix.uid if posix.uid is not None else self.defaults.uid,
            gid=posix.gid if posix.gid is not None else self.defaults.gid,
            mtime=posix.mtime if posix.mtime is not None else time.time(),
            atime=posix.atime,
            size=cf.size,
            etag=cf.base_etag if cf.base_key == cf.key else None,
            metadata=metadata,
            content_type=cf.meta.get("content_type"),
            system=dict(cf.meta.get("system", {})),
        )
        node.cached = cf
        return node

    async def _resolve(
        self, parent: Node, name: str, *, marker: bool = True, exact: bool = False
    ) -> Entry | None:
        """What `name` in `parent` is on the server: a directory wins over a file. A
        directory's marker is read only if `marker` (else its entry has no info)."""
        if parent.bucket is None:
            try:
                await self.backend.head_bucket(name)
            except BucketNotFound:
                return None
            return Entry(Kind.DIR, None)
        bucket, key = parent.bucket, parent.key + name
        listed = self._listings.get(parent.ino)
        if listed is None:
            listed = self._subtrees.get(bucket, parent.key)
        size = self._listing_sizes.get(parent.ino)
        if listed is None and size is not None and size <= RELIST_ENTRIES:
            listed = await self._relist(parent, subtree=not exact)
        if listed is not None:
            entry = listed.get(name)
            if entry is None:
                return None
            if entry.kind is Kind.DIR:
                if not marker:
                    return entry
                return Entry(Kind.DIR, await self._head_or_none(bucket, key + "/"))
            info = await self._head_or_none(bucket, key)
            return None if info is None else self._file_entry(info)
        head: ObjectInfo | None = None
        is_dir = False

        async def do_head() -> None:
            nonlocal head
            head = await self._head_or_none(bucket, key)

        async def do_list() -> None:
            nonlocal is_dir
            page = await self.backend.list_page(bucket, key + "/", delimiter="/", max_keys=1)
            is_dir = bool(page.objects or page.prefixes)

        if marker:
            await gather(do_head, do_list)
        else:  # a known directory: a HEAD only if it is no longer one
            await do_list()
            if is_dir:
                return Entry(Kind.DIR, None)
            await do_head()
        if is_dir:
            return Entry(Kind.DIR, await self._head_or_none(bucket, key + "/"))
        return None if head is None else self._file_entry(head)

    async def _relist(self, directory: Node, *, subtree: bool = True) -> dict[str, Entry] | None:
        """List a small directory again (one page) for lookups after its listing expired:
        a loop creating files there then costs one LIST per `dir_timeout`, not two requests
        per name; when directories near it needed that too, list an ancestor's whole subtree
        instead (listing.py). None if it no longer fits one page or this mount changed
        something while the listing was made (the listing could lack that change)."""
        assert directory.bucket is not None
        bucket = directory.bucket
        ancestor = None
        if subtree:
            above = self._ancestors(directory)
            ancestor = self._subtrees.ancestor_to_list(bucket, directory.key, above)
        if ancestor is not None:
            listings = await self._subtrees.refresh(self.backend, bucket, ancestor)
            if listings is not None and directory.key in listings:
                return listings[directory.key]
        changes = self._changes.get(directory.ino, 0)
        listed = await self._list(directory, max_pages=1)
        if listed is None:
            self._listing_sizes[directory.ino] = RELIST_ENTRIES + 1
            return None
        if self._changes.get(directory.ino, 0) != changes:
            return None
        self._listings[directory.ino] = listed
        self._listing_sizes[directory.ino] = len(listed)
        return listed

    def _ancestors(self, directory: Node) -> list[str]:
        """The keys of the directories above `directory` in its bucket, nearest first."""
        keys: list[str] = []
        node = directory
        while node.ino != ROOT_INO and not node.is_bucket:
            parent = self.table.get(node.parent)
            if parent is None or parent.bucket != directory.bucket:
                break
            keys.append(parent.key)
            node = parent
        return keys

    @staticmethod
    def _file_entry(info: ObjectInfo) -> Entry:
        return Entry(object_kind(info.metadata), info)

    async def _head_or_none(
        self, bucket: str, key: str, *, reusable: bool = True
    ) -> ObjectInfo | None:
        """The object's metadata, or None; a HEAD that found it may serve the next `open`
        (OPEN_REUSES_HEAD) unless not `reusable`."""
        sent = time.monotonic()
        try:
            info = await self.backend.head(bucket, key)
        except NotFound:
            self._heads_sent.pop((bucket, key), None)
            return None
        if reusable:
            self._heads_sent[(bucket, key)] = (sent, info.etag)
        return info

    def _headed_just_now(self, node: Node) -> bool:
        """Whether a HEAD of `node`'s key was sent within OPEN_REUSES_HEAD and applied (and
        no other open used it)."""
        assert node.bucket is not None
        head = self._heads_sent.pop((node.bucket, node.key), None)
        return (
            head is not None
            and node.full
            and node.etag == head[1]
            and time.monotonic() - head[0] <= OPEN_REUSES_HEAD
        )

    async def _await_prefetch(self, node: Node) -> None:
        event = self._prefetching.get(node.ino)
        if event is not None:
            await event.wait()

    def _kick_prefetch(self, node: Node) -> None:
        """The kernel asks for a listed file: HEAD its siblings from that listing too."""
        if node.kind is not Kind.DIR:
            nodes = self._deferred_prefetch.pop(node.parent, None)
            if nodes:
                self._start_prefetch(nodes)

    def _start_prefetch(self, nodes: list[Node]) -> None:
        if self._nursery is None:
            return
        for node in nodes[:PREFETCH_ENTRIES]:
            if node.ino not in self._prefetching:
                self._prefetching[node.ino] = trio.Event()
                self._nursery.start_soon(self._prefetch, node)

    async def _prefetch(self, node: Node) -> None:
        """HEAD one listed node so that its metadata is there when the kernel asks."""
        try:
            async with self._prefetch_limiter:
                if not node.full and not node.pinned and node.bucket is not None:
                    key = node.key
                    info = await self._head_or_none(node.bucket, key)
                    if node.pinned or node.full or node.key != key:
                        return  # changed through this mount while we asked
                    if node.kind is Kind.DIR:
                        self._apply_marker(node, info)
                    elif info is not None and self._file_entry(info).kind is node.kind:
                        self._apply(node, info, full=True)
                    # metadata read on behalf of a listing is as fresh as the listing
                    node.attr_expiry = time.monotonic() + max(
                        self.opts.attr_timeout, self.opts.dir_timeout
                    )
        except BucketfsError as exc:
            log.debug("prefetch of %s failed: %s", node.key, exc)
        except Exception:
            log.exception("prefetch of %s failed", node.key)
        finally:
            event = self._prefetching.pop(node.ino, None)
            if event is not None:
                event.set()

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if node.virtual is not None:  # hook: versions never change (versions.py)
            return node
        if not node.full:
            self._kick_prefetch(node)
            await self._await_prefetch(node)
        if node.pinned or node.unlinked or node.ino == ROOT_INO:
            return node
        if node.full and node.attr_expiry > time.monotonic():
            return node
        if node.bucket is None or node.is_bucket:
            return node
        if node.kind is Kind.DIR:
            if self._marker_fresh(node):
                node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            else:
                self._apply_marker(node, await self._head_or_none(node.bucket, node.key))
            return node
        info = await self._head_or_none(node.bucket, node.key)
        if info is None:
            # gone on the server: keep answering with what we know until the kernel asks again
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            return node
        if self._file_entry(info).kind is node.kind:
            self._apply(node, info, full=True)
        return node

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        for ino, count in items:
            self.table.forget(ino, count)

    def _node_dropped(self, ino: int, cf: CachedFile | None) -> None:
        """The table dropped a node: so go what was kept for it (here, files.py, the cache);
        inode numbers are never reused, so nothing kept under `ino` could serve again."""
        for per_inode in (self._listings, self._listing_sizes, self._changes):
            per_inode.pop(ino, None)
        self._deferred_prefetch.pop(ino, None)
        if self._data is not None:
            self._data.dropped(ino, cf)

    def remember(self, node: Node) -> None:
        self.table.remember(node)

    # --- directories -----------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self._dir(ino)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_handles[fh] = DirHandle(fh, node)
        return fh

    def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def readdir(self, fh: int, offset: int) -> list[tuple[str, Node, int]]:
        """Entries from `offset` on as (name, node, next offset); a snapshot per handle.

        The nodes are not counted as kernel references: the adapter calls `remember` for each
        entry the kernel accepted. "." and ".." come first (offsets 0 and 1), as on every
        filesystem; the mount's root is its own parent.
        """
        handle = self._dir_handles.get(fh)
        if handle is None:
            raise BadHandle()
        if handle.entries is None or offset == 0:
            # hook: the .versions/ tree lists itself; real listings never show it
            entries = await self.versions.readdir(handle.node, self._snapshot)
            up = self.table.get(handle.node.parent) or self.table.root
            handle.entries = [(".", handle.node), ("..", up), *entries]
        return [
            (name, node, index + 1)
            for index, (name, node) in enumerate(handle.entries)
            if index >= offset
        ]

    async def _snapshot(self, directory: Node) -> list[tuple[str, Node]]:
        # what is only local must be taken before the listing is asked for: an upload may land
        # while we wait, after the server made the listing without it
        local = [n for n in self.table.known_children(directory) if n.pinned and not n.unlinked]
        cached: dict[str, CachedFile] = {}
        if directory.bucket is not None and self._data is not None:
            for cf in self.data.cache.dirty_children(directory.bucket, directory.key):
                assert cf.key is not None
                cached[cf.key[len(directory.key) :]] = cf
        listed = await self._list(directory)
        assert listed is not None
        self._listings[directory.ino] = listed
        self._listing_sizes[directory.ino] = len(listed)
        entries: list[tuple[str, Node]] = []
        seen: set[str] = set()
        for name, entry in listed.items():
            node = self.table.child(directory, name)
            if node is None and name in cached and entry.kind is not Kind.DIR:
                node = self._node_from_cache(directory, name, cached[name])
            if node is not None and node.pinned:
                entries.append((name, node))
                seen.add(name)
                continue
            if node is None or (
                # a listing tells a directory from an object, not a symlink or a fifo from a file
                node.kind is not entry.kind and Kind.DIR in (node.kind, entry.kind)
            ):
                node = self._new_node(directory, name, entry.kind, full=False)
            if entry.kind is not Kind.DIR and entry.info is not None:
                # same ETag: keep the metadata we know (a listing does not carry it)
                if not (node.full and node.etag == entry.info.etag):
                    self._apply(node, entry.info, full=False)
            elif entry.kind is Kind.DIR and not node.full:
                node.attr_expiry = 0.0
            entries.append((name, node))
            seen.add(name)
        for node in local:
            if node.name not in seen and not node.unlinked and node.parent == directory.ino:
                entries.append((node.name, node))
                seen.add(node.name)
        for name, cf in cached.items():
            if name not in seen and valid_name(name) and cf.key is not None:
                entries.append((name, self._node_from_cache(directory, name, cf)))
        # metadata of listed files is fetched only once the kernel asks for one of them (ls -l,
        # du, rsync do; find and plain ls do not)
        partial = [node for _, node in entries if not node.full]
        if partial:
            self._deferred_prefetch[directory.ino] = partial
        return entries

    async def _list(
        self, directory: Node, *, max_pages: int | None = None
    ) -> dict[str, Entry] | None:
        """Every child of `directory` on the server, by name (a directory wins over a file);
        None if that takes more than `max_pages` pages."""
        if directory.bucket is None:
            buckets = await self.backend.list_buckets()
            return {b.name: Entry(Kind.DIR, None) for b in buckets if valid_name(b.name)}
        bucket, prefix = directory.bucket, directory.key
        files: dict[str, Entry] = {}
        dirs: dict[str, Entry] = {}
        token: str | None = None
        while True:
            page = await self.backend.list_page(bucket, prefix, delimiter="/", token=token)
            add_page(prefix, page, files, dirs)
            token = page.next_token
            if token is None:
                break
            if max_pages is not None:
                max_pages -= 1
                if max_pages <= 0:
                    return None
        files.update(dirs)
        return dict(sorted(files.items()))

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        self._writable()
        parent = self._dir(parent_ino)
        self.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        if self.table.child(parent, name) is not None:
            raise FileExists()
        now = time.time()
        if parent.bucket is None:
            await self.backend.create_bucket(name)
            node = self._new_node(parent, name, Kind.DIR, mode=mode & 0o7777, uid=uid, gid=gid)
        else:
            node = self._new_node(
                parent, name, Kind.DIR, mode=mode & 0o7777, uid=uid, gid=gid, mtime=now
            )
            try:
                await self._put_marker(node)
            except BaseException:
                self.table.detach(node)
                raise
        self._changed(parent, name, Kind.DIR)
        self._listings[node.ino] = {}  # we just made it: it is empty
        self._listing_sizes[node.ino] = 0
        self.table.remember(node)
        return node

    async def _put_marker(self, node: Node) -> None:
        assert node.bucket is not None
        result = await self.backend.put(node.bucket, node.key, b"", write_options(node))
        node.has_marker = True
        node.full = True
        node.metadata = dict(write_options(node).metadata)
        node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        self._marker_seen(node)
        del result

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._writable()
        parent = self._dir(parent_ino)
        self.versions.refuse(parent, name)  # hook: EROFS in .versions/
        node = await self._find(parent, name)
        if node.kind is not Kind.DIR:
            raise NotADirectory()
        await self._check_empty(node)
        if node.bucket is not None and node.is_bucket and parent.bucket is None:
            await self.backend.delete_bucket(node.bucket)
        elif node.bucket is not None:
            await self.backend.defer_delete(node.bucket, node.key)
        self.table.detach(node)
        self._changed(parent, name)
        self._drop_listing(node)

    async def _check_empty(self, node: Node) -> None:
        for child in self.table.known_children(node):
            if child.pinned and not child.unlinked:
                raise DirectoryNotEmpty()
        if node.bucket is None:
            return
        page = await self.backend.list_page(node.bucket, node.key, delimiter="/", max_keys=2)
        if page.prefixes or any(info.key != node.key for info in page.objects):
            raise DirectoryNotEmpty()

    # --- files -------------------------------------------------------------------------------

    def _handle(self, node: Node, writable: bool) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(fh, node, writable)
        node.opens += 1
        if writable:
            node.writers += 1
        return fh

    def handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise BadHandle()
        return handle

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        self._writable()
        parent = self._dir(parent_ino)
        self.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        bucket = self._bucket_of(parent)
        existing = self.table.child(parent, name)
        if existing is None and flags & os.O_EXCL:
            # O_EXCL (lock files, mkstemp) asks the server, never a cached listing: another
            # client may have made the name since
            self._drop_listing(parent)
            self._negative.pop((parent.ino, name), None)
            try:
                existing = await self._find(parent, name, exact=True)
            except NoEntry:
                existing = None
        if existing is not None:
            if flags & os.O_EXCL:
                raise FileExists()
            if existing.kind is Kind.DIR:
                raise IsADirectory()
            fh, _keep = await self.open(existing.ino, flags | os.O_TRUNC)
            self.table.remember(existing)
            return fh, existing
        now = time.time()
        node = self._new_node(
            parent,
            name,
            Kind.FILE,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            mtime=now,
            ctime=now,
            atime=now,
            bucket=bucket,
        )
        self.data.create(node)
        self._changed(parent, name, Kind.FILE)
        self.table.remember(node)
        return self._handle(node, writable=True), node

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A handle on the file; the bool says whether the kernel may keep its page cache."""
        node = self.node(ino)
        if node.kind is Kind.DIR:
            raise IsADirectory()
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if writable:
            self._writable()
        if node.virtual is not None:  # hook: a version file is read-only and never changes
            if writable:
                self.versions.refuse(node)
            return self._handle(node, writable=False), True
        if (
            not node.pinned
            and not node.unlinked
            and node.bucket is not None
            and not self._headed_just_now(node)
        ):
            # close-to-open consistency: see the object as it is now (a HEAD sent during
            # this open's own path lookup counts)
            # this HEAD serves this open only (`_headed_just_now` took any older one)
            info = await self._head_or_none(node.bucket, node.key, reusable=False)
            if info is None:
                raise NoEntry()
            self._apply(node, info, full=True)
        if writable:
            await self.data.previous_save(node)  # one version per save, even with O_TRUNC
        if writable and flags & os.O_TRUNC:
            async with self.data.lock(node):
                await self.data.truncate(node, 0)
                node.mtime = time.time()
        keep = not node.pinned and node.kernel_etag is not None and node.kernel_etag == node.etag
        node.kernel_etag = node.etag if not node.pinned else None
        return self._handle(node, writable), keep

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handle(fh)
        if handle.node.virtual is not None:  # hook: a version file (versions.py)
            return await self.versions.read(handle.node, offset, size)
        return await self.data.read(handle.node, offset, size, handle.read_state)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handle(fh)
        if not handle.writable:
            raise BadHandle("file not open for writing")
        node = handle.node
        if offset + len(data) > self.backend.max_object_size:
            raise FileTooLarge("past the store's largest object")
        async with self.data.lock(node):
            node.mtime = time.time()
            written = await self.data.write(node, offset, data)
        return written

    async def flush(self, fh: int) -> None:
        """close() of one descriptor: nothing to do. Every write is in the cache's index
        before it returns; the upload starts at the release of the last writable handle
        (a shell's `>` closes a duplicate descriptor first: uploading then would store the
        truncated file before the real one)."""
        self.handle(fh)

    async def fsync(self, fh: int) -> None:
        """Return only when the file's content is durable on the server."""
        node = self.handle(fh).node
        if not node.unlinked:
            await self.data.flush(node)

    async def sync_path(self, ino: int) -> None:
        """`bucketfs flush PATH`: upload a file, or everything under a directory, now."""
        node = self.node(ino)
        if node.kind is not Kind.DIR:
            await self.data.flush(node)
            return
        await self.backend.flush()  # unlinks first: what `flush` returns for is the server
        prefix = node.key
        pending = [
            cf
            for cf in self.data.cache.dirty_files()
            if cf.key is not None
            and (node.bucket is None or cf.bucket == node.bucket)
            and cf.key.startswith(prefix)
        ]
        for cf in pending:
            await self.data.writeback.flush(cf)

    async def fsyncdir(self) -> None:
        """Names removed through this mount are gone from the server when this returns."""
        await self.backend.flush()

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        if handle.writable:
            node.writers = max(0, node.writers - 1)
            if node.writers == 0 and node.dirty and not node.unlinked:
                self.data.closed(node)  # the last writer is gone: upload (write-back)
            elif node.writers == 0 and node.cached is not None:
                self.data.writeback.released(node.cached)  # a waiting worker ends
        if node.unlinked and node.opens == 1 and node.cached is not None:
            self.data.cache.forget(node.cached)  # the last handle of a deleted file
            node.cached = None
        self.table.release(node)

    async def readlink(self, ino: int) -> str:
        node = self.node(ino)
        if node.kind is not Kind.LINK:
            raise InvalidArgument("not a symbolic link")
        if node.link_target is None:
            data = await self.data.read_all(node)
            node.link_target = data.decode("utf-8", "surrogateescape")
        return node.link_target

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Node:
        self._writable()
        parent = self._dir(parent_ino)
        self.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        bucket = self._bucket_of(parent)
        now = time.time()
        node = self._new_node(
            parent, name, Kind.LINK, mode=0o777, uid=uid, gid=gid, mtime=now, bucket=bucket
        )
        await self._store_new(parent, node, target.encode("utf-8", "surrogateescape"))
        node.link_target = target
        return node

    async def _store_new(self, parent: Node, node: Node, data: bytes) -> None:
        """Upload a new symlink's or special file's object at once (the node leaves the table
        if that fails), then record it as made through this mount."""
        assert node.bucket is not None
        opts = write_options(node)
        try:
            result = await self.backend.put(node.bucket, node.key, data, opts)
        except BaseException:
            self.table.detach(node)
            raise
        node.etag, node.version_id, node.size = result.etag, result.version_id, len(data)
        node.metadata = dict(opts.metadata)
        node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        # to a listing, a special file is an object like any other
        self._changed(parent, node.name, Kind.LINK if node.kind is Kind.LINK else Kind.FILE)
        self.table.remember(node)

    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int
    ) -> Node:
        """A fifo, socket or device: an empty object whose `mode` metadata carries the type
        (and `rdev` a device's number); the kernel serves its opens. A regular file is a
        create."""
        kind = special_kind(mode)
        if kind is None:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
            fh, node = await self.create(parent_ino, name, mode, flags, uid, gid)
            await self.release(fh)
            return node
        self._writable()
        parent = self._dir(parent_ino)
        self.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        bucket = self._bucket_of(parent)
        if self.table.child(parent, name) is not None:
            raise FileExists()
        now = time.time()
        node = self._new_node(
            parent,
            name,
            kind,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            mtime=now,
            ctime=now,
            bucket=bucket,
            metadata=rdev_metadata(kind, rdev),
        )
        await self._store_new(parent, node, b"")
        return node

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._writable()
        parent = self._dir(parent_ino)
        self.versions.refuse(parent, name)  # hook: EROFS in .versions/
        # the kernel looked the name up within entry_timeout, or holds a listed entry of a
        # sure kind: a listed file needs no HEAD to be deleted (rm -rf after readdir)
        node = self.table.child(parent, name)
        if node is None or node.kind is Kind.DIR:
            node = await self._find(parent, name)
        if node.kind is Kind.DIR:
            raise IsADirectory()
        assert node.bucket is not None
        async with self.data.lock(node):
            stored = await self._drop_content(node)
            if node.etag is not None or stored:
                await self.backend.defer_delete(node.bucket, node.key)
        node.unlinked = True
        self.table.detach(node)
        self._changed(parent, name)

    async def _drop_content(self, node: Node) -> bool:
        """The name goes away: cancel its upload; open handles keep reading a local copy.
        True if an upload of ours is on the server under the name even though the node has
        no ETag (an older generation that landed after the file changed again)."""
        assert node.bucket is not None
        cf = node.cached or self.data.cache.find(node.bucket, node.key)
        if cf is None and node.opens > 0 and node.etag is not None:
            cf = self.data.cached(node)  # never read yet: attach, to copy it locally below
        if cf is None:
            return False
        while cf.upload_scope is not None:  # let an upload in flight land, then delete it
            await cf.progress.wait()
        stored = cf.base_etag is not None and cf.base_key == node.key
        if node.opens > 0:
            node.cached = cf
            await self.data.cache.materialize(cf, 0, cf.size)
            self.data.cache.detach(cf)
        else:
            self.data.cache.forget(cf)
            node.cached = None
        return stored

    # --- attributes ----------------------------------------------------------------------------

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime: float | None = None,
        size: int | None = None,
        atime: float | None = None,
    ) -> Node:
        self._writable()
        node = self.node(ino)
        self.versions.refuse(node)  # hook: EROFS in .versions/
        if size is not None and size > self.backend.max_object_size:
            raise FileTooLarge(f"{size} bytes is more than the store's largest object")
        if not node.full:
            # the object's metadata must be known before we write it back
            await self.getattr(ino)
        if size is not None:
            if node.kind is Kind.DIR:
                raise IsADirectory()
            await self._truncate(node, size)
        if mode is not None:
            node.mode = mode & 0o7777
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if mtime is not None:
            node.mtime = mtime
            node.entries_changed = 0.0  # a set mtime wins (rsync -a sets directories' last)
        if atime is not None:
            node.atime = atime
        if (mode, uid, gid, mtime, atime) != (None, None, None, None, None):
            node.ctime = time.time()
            await self._persist_attrs(node)
        return node

    async def _truncate(self, node: Node, size: int) -> None:
        async with self.data.lock(node):
            node.mtime = time.time()
            await self.data.truncate(node, size)
            if node.writers == 0:
                self.data.closed(node)  # no writable handle will close it: upload now

    async def _persist_attrs(self, node: Node) -> None:
        if node.dirty:
            self.data.refresh_meta(node)  # the pending upload carries them
            return
        if node.pinned or node.unlinked or node.bucket is None:
            return
        if node.kind is Kind.DIR:
            if node.is_bucket or node.key == "":
                log.debug("attributes of a bucket root are kept in memory only")
                return
            # a marker cannot always be copied onto itself (SeaweedFS): write it again
            await self._put_marker(node)
            return
        async with self.data.lock(node):
            opts = write_options(node)
            result = await self.data.copy_object(
                node.bucket, node.key, node.key, node.size, opts, etag=node.etag
            )
            node.etag, node.version_id = result.etag, result.version_id
            node.metadata = dict(opts.metadata)
            node.kernel_etag = result.etag if node.kernel_etag else None
            if node.cached is not None and not node.cached.dirty:
                self.data.cache.rebase(node.cached, result.etag)  # same bytes, new ETag
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout

    # --- rename ------------------------------------------------------------------------------

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int
    ) -> None:
        self._writable()
        if flags & RENAME_EXCHANGE:
            raise NotSupported("RENAME_EXCHANGE is not supported on an object store")
        src_dir, dst_dir = self._dir(old_parent), self._dir(new_parent)
        self.versions.refuse(src_dir, old_name)  # hook: EROFS in .versions/
        self.versions.refuse(dst_dir, new_name)
        check_new_name(new_name)
        node = await self._find(src_dir, old_name)
        if node.is_bucket and src_dir.bucket is None:
            raise NotPermitted("buckets cannot be renamed")
        if src_dir.bucket != dst_dir.bucket or dst_dir.bucket is None:
            raise CrossDevice()
        try:
            target: Node | None = await self._find(dst_dir, new_name)
        except NoEntry:
            target = None
        if target is node:
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FileExists()
            if target.kind is Kind.DIR and node.kind is not Kind.DIR:
                raise IsADirectory()
            if target.kind is not Kind.DIR and node.kind is Kind.DIR:
                raise NotADirectory()
            if target.kind is Kind.DIR:
                await self._check_empty(target)
        new_key = dst_dir.key + new_name
        if node.kind is Kind.DIR:
            new_prefix = new_key + "/"
            if new_prefix.startswith(node.key):
                raise InvalidArgument("cannot move a directory into itself")
            await self._rename_dir(node, new_prefix)
        else:
            if target is not None:
                # the target's own pending upload must not land after (over) ours
                async with self.data.lock(target):
                    await self._drop_content(target)
                target.unlinked = True
            await self._rename_file(node, new_key, replaces=target is not None)
        self.table.move(node, dst_dir, new_name)
        self._changed(src_dir, old_name)
        self._changed(dst_dir, new_name, node.kind)

    async def _rename_file(self, node: Node, new_key: str, *, replaces: bool) -> None:
        """Upload pending content under the old name, then copy on the server and delete."""
        assert node.bucket is not None
        async with self.data.lock(node):
            cf = node.cached
            while cf is not None and cf.upload_scope is not None:
                await cf.progress.wait()  # an upload in flight lands under the old name first
            stored = cf is not None and cf.base_etag is not None and cf.base_key == node.key
            if node.etag is None and not stored:
                if cf is not None:  # nothing on the server yet: the pending upload moves
                    self.data.cache.move(cf, node.bucket, new_key)
                    if replaces:  # and knowingly replaces whatever the target's object is
                        cf.meta["replaces"] = True
                        self.data.cache.set_meta(cf, cf.meta)
                return
            # unchanged ranges of a modified object come from the old key: upload, then move
            await self.data.flush(node)
            etag = cf.base_etag if cf is not None and cf.base_key == node.key else node.etag
            result = await self.data.copy_object(
                node.bucket, node.key, new_key, node.size, None, etag=etag
            )
            await self.backend.defer_delete(node.bucket, node.key)
            node.etag, node.version_id = result.etag, result.version_id
            if cf is not None:
                self.data.cache.move(cf, node.bucket, new_key)
                self.data.cache.rebase(cf, result.etag)

    async def _rename_dir(self, node: Node, new_prefix: str) -> None:
        assert node.bucket is not None
        bucket, old_prefix = node.bucket, node.key
        await self._upload_dirty_under(node)
        keys: list[ObjectInfo] = []
        token: str | None = None
        while True:
            page = await self.backend.list_page(bucket, old_prefix, delimiter=None, token=token)
            keys.extend(page.objects)
            token = page.next_token
            if token is None:
                break

        async def move_one(info: ObjectInfo) -> None:
            dst = new_prefix + info.key[len(old_prefix) :]
            if info.key.endswith("/"):
                marker = await self.backend.head(bucket, info.key)
                opts = WriteOptions(marker.metadata, marker.content_type, dict(marker.system))
                await self.backend.put(bucket, dst, b"", opts)
            else:
                await self.data.copy_object(bucket, info.key, dst, info.size, None)

        await for_each(keys, move_one, self._limiter)
        # contents first, then markers deepest first: SeaweedFS keeps a marker whose
        # "directory" still had children when the marker was deleted
        contents = [info.key for info in keys if not info.key.endswith("/")]
        markers = sorted((info.key for info in keys if info.key.endswith("/")), reverse=True)
        await self.backend.delete_many(bucket, contents)
        for marker in markers:
            await self.backend.delete(bucket, marker)

    async def _upload_dirty_under(self, directory: Node) -> None:
        """Before a directory moves, everything pending under it reaches the server."""
        await self.sync_path(directory.ino)
        cache = self.data.cache
        for cf in list(cache.files.values()):
            under = cf.key is not None and cf.key.startswith(directory.key)
            if under and cf.bucket == directory.bucket and not cf.dirty:
                # its object moves: the blocks are dropped; an open handle fetches again
                # under the new key (`FileData.cached` attaches anew)
                cache.forget(cf)

    # --- misc ------------------------------------------------------------------------------------

    async def statfs(self) -> StatFs:
        # hook: bytes and objects used where the store says (xattrs.py); free stays "plenty"
        used = await self.xattrs.usage(self.table.root.bucket)
        if used is None:
            return StatFs()
        free = StatFs()
        blocks = free.blocks + (used[0] + free.bsize - 1) // free.bsize
        return StatFs(blocks=blocks, files=free.files + used[1])

    def status(self) -> dict[str, object]:
        """What `bucketfs status` prints: where the data is."""
        cache, writeback = self.data.cache, self.data.writeback
        dirty = cache.dirty_files()
        lookups = cache.hits + cache.misses
        return {
            "dirty_files": len([cf for cf in dirty if cf.key is not None]),
            "dirty_bytes": sum(
                min(len(cf.dirty_blocks) * cache.block_size, cf.size) for cf in dirty
            ),
            "dirty": sorted(f"{cf.bucket}/{cf.key}" for cf in dirty if cf.key is not None)[:100],
            "uploading": sum(1 for cf in dirty if cf.upload_scope is not None),
            "deletes_queued": self.backend.queued,
            "failed": {f"{cf.bucket}/{cf.key}": cf.error for cf in dirty if cf.state == "failed"},
            "uploads": writeback.uploads,
            "uploaded_bytes": writeback.uploaded_bytes,
            "upload_rate": round(writeback.upload_rate()),
            "last_errors": writeback.last_errors,
            "cache_dir": str(self._cache_dir),
            "cache_bytes": cache.clean_bytes + cache.dirty_bytes,
            "cache_size": cache.cache_size,
            "hit_ratio": round(cache.hits / lookups, 3) if lookups else None,
            "subtree_listings": self._subtrees.listed,  # listing.py (JSON only)
            # what memory holds per file (JSON only): bounded by what is open and cached
            "nodes": len(self.table),
            "cached_files": len(cache.files),
            "open_data_files": cache.data_files.open_count,
        }

    async def getxattr(self, ino: int, name: str) -> bytes:
        node = self.node(ino)
        if ino == ROOT_INO and name == XATTR_PID:
            return str(os.getpid()).encode()
        if ino == ROOT_INO and name == XATTR_STATUS:
            return json.dumps(self.status(), indent=1).encode()
        if name == XATTR_UPLOAD_STATE and node.kind is not Kind.DIR and node.virtual is None:
            cf = node.cached
            return (cf.upload_state if cf is not None else "clean").encode()
        # hook: object metadata and fields (xattrs.py), with the object's metadata known
        return await self.xattrs.get(node, name)

    async def listxattr(self, ino: int) -> list[str]:
        node = await self.getattr(ino)
        names = [XATTR_PID, XATTR_STATUS] if ino == ROOT_INO else []
        if node.kind is not Kind.DIR and node.virtual is None:
            names.append(XATTR_UPLOAD_STATE)
        return names + await self.xattrs.names(node)  # hook: xattrs.py

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        node = self.node(ino)
        if name == XATTR_FLUSH:
            # `bucketfs flush`: returns once the file (or everything below the directory) is
            # on the server; the kernel waits for our answer
            await self.sync_path(node.ino)
            return
        if name in CONTROL_XATTRS:  # all read-only but XATTR_FLUSH, handled above
            raise NotPermitted(f"{name} is read-only")
        await self.xattrs.set(node, name, value)  # hook: xattrs.py

    async def removexattr(self, ino: int, name: str) -> None:
        if name in CONTROL_XATTRS:
            raise NotPermitted(f"{name} is read-only")
        await self.xattrs.remove(self.node(ino), name)  # hook: xattrs.py
