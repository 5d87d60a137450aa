"""The namespace: what is known about names and attributes, and for how long it holds.

Owns the inode table of one mount and every store of what the server said about names:
lookups, getattr, and these caches with their freshness rules (readdir snapshots are made
from them by readdir.py):

- a node's attributes (`InodeTable`, nodes.py): fresh until `attr_expiry`, `attr_timeout`
  after the HEAD (or our own upload) that set them, `max(attr_timeout, dir_timeout)` after a
  prefetch made for a listing, `attr_timeout` after the listing of its directory that showed
  a file's ETag, size and LastModified unchanged since its HEAD (revalidate.py: one LIST, not
  a HEAD per file); `full` False (from a listing, no user metadata) means getattr
  asks the server once before answering; nodes with local state the server lacks
  (`Node.pinned`) are never replaced by what a listing or HEAD says;
- a directory's marker (or that it has none): reused until `marker_expiry`,
  `max(attr_timeout, dir_attr_timeout)` after it was read; a directory known so is only asked
  whether it still exists (one LIST), not for its marker again;
- negative entries (`_negative`): a name found absent stays so for `negative_timeout`, unless
  this mount creates it; the kernel keeps it for the time left on it (`absent_for`,
  fuse/ops.py), and replaces it itself when a program makes the name;
- listings of a directory (`listings`, listing.py's `Listings`): used for `dir_timeout`, and
  kept in step with every change made through this mount (`changed`), not dropped; an
  exclusive create (O_EXCL) trusts a fresh one where the upload's `If-None-Match: *` holds
  (handles.py), else it and an rmdir drop them (`drop_listing`); a conflict drops all; a
  listing (a readdir's or a relisting) that overlapped a change made here is not kept; a
  directory made here counts as changed again when its marker reaches the server
  (`marker_sent`): listings made while it was pending lack it;
- subtree listings (`listing.Subtrees`): the same rules, for many directories at once;
- the size of each directory's last listing (no expiry) decides whether a lookup it does not
  answer lists the directory again (resolve.py, at most `RELIST_ENTRIES`, the name's HEAD
  sent beside it); one never listed is listed at the second such lookup within
  `dir_timeout`, trusted for the names it holds (listing.py);
- the names each directory's last listing showed as files (`listing.FileNames`, no expiry,
  a bounded number): such a name with no fresh listing is asked with its HEAD alone
  (resolve.py);
- HEADs kept for reuse (heads.py): a HEAD that found a key serves the next `open` of it
  within `OPEN_REUSES_HEAD`, and one open at most;
- HEADs kept across mounts (`cache/attrstore.py`, through `FileData.attrs`): a listed file
  whose listing ETag, size and LastModified equal what an earlier HEAD said (kept only when
  the server answered it 2 s or more after LastModified) gets its metadata without a HEAD;
  `open` still asks the server (close-to-open);
- listed nodes waiting for a prefetch of their metadata (prefetch.py; a lookup needs the kind
  only, which a listed entry of a sure kind gives until `attr_expiry`); none with `-o
  attrs=listing`, where a listing's attributes are final (`apply`) and objects are files;
- on the node itself: a symlink's target (until its ETag changes), the ETag the kernel's page
  cache holds (`kernel_etag`, handles.py), the last HEAD for xattrs (`head_info`, xattrs.py).

What stays elsewhere: the `.versions/` tree keeps its own listings (versions.py: read-only
history, never in the key namespace); file contents and what awaits upload live in the cache,
seen through contents.py (`Unsaved`); directories whose marker awaits upload live in
cache/markers.py (`Markers`): lookups, getattr and readdir show them, from their journaled
attributes, whatever a listing from the server says (like unsaved files).

Namespace rules (README "How bucketfs maps keys"): a key `a/b/c` is file `c` in directory
`a/b`; directories come from common prefixes and from `dir/` marker objects; when a key is both
a file and a prefix the directory wins (the object stays reachable with other S3 tools); keys
whose segments cannot be file names are skipped and logged once.

Invariants: inode numbers are never reused, so nothing kept per inode outlives its node
(`_node_dropped`); every cache here is invalidated by every change made through this mount.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from cachetools import TTLCache

from bucketfs.core.attrs import NAME_MAX, Defaults, parse_posix, valid_name
from bucketfs.core.contents import FileData, Unsaved
from bucketfs.core.heads import Heads
from bucketfs.core.listing import Entry, Listed, Listings, Subtrees
from bucketfs.core.nodes import ROOT_INO, InodeTable, Kind, Node
from bucketfs.core.options import FsOptions
from bucketfs.core.prefetch import Prefetch
from bucketfs.core.readdir import Readdir
from bucketfs.core.resolve import Resolver
from bucketfs.core.revalidate import Revalidation
from bucketfs.core.versions import Versions
from bucketfs.errors import (
    InvalidArgument,
    NameTooLong,
    NoEntry,
    NotADirectory,
    NotPermitted,
    ReadOnly,
)
from bucketfs.types import ObjectInfo

if TYPE_CHECKING:  # types only: file contents are reached through contents.py alone
    import trio

    from bucketfs.cache.deletes import DeferredDeletes
    from bucketfs.cache.markers import Markers, PendingMarker
    from bucketfs.cache.store import CachedFile

log = logging.getLogger(__name__)


class Namespace:
    def __init__(
        self,
        backend: DeferredDeletes,
        markers: Markers,
        *,
        bucket: str | None,
        prefix: str,
        options: FsOptions,
    ) -> None:
        self.backend = backend
        self.markers = markers
        markers.watch(self.marker_sent)
        self.opts = options
        self.defaults = Defaults(options.uid, options.gid, options.file_mode, options.dir_mode)
        #: `-o attrs=listing`: a listing's attributes are final (see `apply`, README)
        self.listing_attrs = options.attrs == "listing"
        self._mounted = time.time()  # attrs=listing: the mtime of directories
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
        #: (directory, name) -> when (time.monotonic) the absence stops being trusted
        self._negative: TTLCache[tuple[int, str], float] = TTLCache(
            maxsize=65536, ttl=max(options.negative_timeout, 1e-6)
        )
        #: each directory's own listing, its size, the changes made there (listing.py)
        self.listings = Listings(options.dir_timeout)
        #: HEADs sent, for reuse by `open` and kept across mounts (heads.py)
        self.heads = Heads(backend)
        self._data: FileData | None = None
        self.prefetch = Prefetch(
            self._prefetched,
            self._prefetched_name,
            self._child,
            fresh_for=max(options.attr_timeout, options.dir_timeout),
        )
        #: listings of many directories from one recursive LIST of an ancestor (listing.py)
        self.subtrees = Subtrees(options.dir_timeout)
        #: what a name is on the server when nothing here answers (resolve.py)
        self.resolver = Resolver(
            backend,
            self.table,
            self.listings,
            self.subtrees,
            self.heads,
            listing_attrs=self.listing_attrs,
        )
        self.resolver.kept = self._kept
        self.revalidation = Revalidation(
            self.table, self.listings, self.subtrees, self.resolver.relist, options.attr_timeout
        )
        #: readdir snapshots: what directory handles list (readdir.py)
        self.readdir = Readdir(self)
        # hook: the .versions/ tree (versions.py)
        self.versions = Versions(
            backend,
            self.table,
            self.defaults,
            enabled=not options.noversions,
            ttl=options.dir_timeout,
        )

    def attach(self, data: FileData, nursery: trio.Nursery) -> None:
        """`BucketFS.run` started: file contents and prefetches are served from now on."""
        self._data = data
        self.heads.kept = data.attrs.remember
        self.prefetch.nursery = nursery
        self.revalidation.nursery = nursery
        self.resolver.nursery = nursery

    @property
    def ready(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> FileData:
        if self._data is None:
            raise RuntimeError("BucketFS.run() has not started")
        return self._data

    # --- helpers -------------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise NoEntry(f"inode {ino} is not known")
        return node

    def dir(self, ino: int) -> Node:
        node = self.node(ino)
        if node.kind is not Kind.DIR:
            raise NotADirectory()
        return node

    def writable(self) -> None:
        if self.opts.read_only:
            raise ReadOnly()

    def bucket_of(self, directory: Node) -> str:
        if directory.bucket is None:
            raise NotPermitted("only directories (buckets) can be made at the top of s3://")
        return directory.bucket

    def node_at(self, bucket: str, key: str | None) -> Node | None:
        """The node reachable under `key` in `bucket`, if the table has one."""
        ino = self.table.find(bucket, key) if key is not None else None
        return self.table.get(ino) if ino is not None else None

    def new_node(self, parent: Node, name: str, kind: Kind, **attrs: object) -> Node:
        mode = self.defaults.dir_mode if kind is Kind.DIR else self.defaults.file_mode
        base: dict[str, object] = {"mode": mode, "uid": self.defaults.uid, "gid": self.defaults.gid}
        if self.listing_attrs and kind not in (Kind.DIR, Kind.FILE):  # a listing shows none
            raise NotPermitted(f"attrs=listing shows no {kind.value}s: cannot make one")
        if self.listing_attrs and kind is Kind.DIR:  # a prefix has no date, a marker is unread
            base["mtime"] = self._mounted
        base.update(attrs)
        if parent.bucket is None:
            base.setdefault("bucket", name)
            base.setdefault("key", "")
            base.setdefault("is_bucket", True)
        return self.table.add(parent, name, kind, **base)

    # --- changes made through this mount -------------------------------------------------------

    def changed(self, directory: Node, name: str, kind: Kind | None = None) -> None:
        """A change made through this mount: a listing we hold is kept in step (not dropped),
        so lookups of new names need no request; `kind` None means `name` is gone."""
        self.listings.changed(directory.ino, name, kind)
        self.prefetch.changed(directory.ino, name)
        self._negative.pop((directory.ino, name), None)
        if kind is None:
            self.readdir.removed(directory, name)
        # POSIX: an entry made, removed or renamed changes its directory's mtime and ctime;
        # kept in memory (a marker PUT per create would double its cost), written with the
        # directory's next marker write (docs/core.md)
        now = time.time()
        directory.mtime = directory.ctime = directory.entries_changed = now
        if directory.bucket is not None:
            self.subtrees.changed(directory.bucket, directory.key, name, kind)

    def marker_sent(self, bucket: str, parent_key: str, name: str) -> None:
        """The marker of directory `name` made here reached the server: it is shown from
        listings from now on, no longer from the journal (Markers). A listing made while it
        was pending lacks it (the server had nothing of it yet): those held get it, and one
        in flight is not kept (as if this mount changed the directory then)."""
        self.subtrees.changed(bucket, parent_key, name, Kind.DIR)
        parent = self.node_at(bucket, parent_key[:-1] if parent_key.endswith("/") else parent_key)
        if parent is not None:  # else nothing is kept of it (`_node_dropped`)
            self.listings.changed(parent.ino, name, Kind.DIR)

    def drop_listing(self, directory: Node) -> None:
        """Forget what listings (its own or a subtree's) say `directory` holds."""
        self.listings.drop(directory.ino)
        if directory.bucket is not None:
            self.subtrees.forget(directory.bucket, directory.key)

    def absent_for(self, parent_ino: int, name: str) -> float:
        """Seconds the absence of `name` that a lookup just answered is still trusted (its
        negative entry), 0 if none: the kernel may keep that answer as long (fuse/ops.py)."""
        until = self._negative.get((parent_ino, name))
        return 0.0 if until is None else max(0.0, until - time.monotonic())

    def forget_absence(self, parent: Node, name: str) -> None:
        """Ask the server whether `name` exists, even if it was absent a moment ago."""
        self._negative.pop((parent.ino, name), None)

    def made_empty(self, directory: Node) -> None:
        """We just made `directory`: its listing is known, it is empty."""
        self.listings.made_empty(directory.ino)

    def listed_empty(self, directory: Node) -> bool:
        """Whether the directory's own listing is fresh and empty (kept in step with this
        mount's changes since it was listed or made)."""
        return self.listings.get(directory.ino) == {}

    def saved(self, node: Node) -> None:
        """Our upload of `node` was confirmed (contents.py set its fields from it). Until now
        it was shown from the cache; a listing made meanwhile lacks it (the server had nothing
        of it yet): those held get it, one in flight is not kept (as for `marker_sent`)."""
        node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        parent = self.table.get(node.parent)
        if parent is not None and node.bucket is not None and not node.unlinked:
            self.listings.changed(parent.ino, node.name, node.kind)
            self.subtrees.changed(node.bucket, parent.key, node.name, node.kind)
        self.table.settle(node)  # the kernel may have forgotten it while dirty

    def conflicted(self, node: Node | None) -> None:
        """Our version of a key went to a conflict name: the name shows the server's again."""
        if node is not None:
            node.attr_expiry = 0.0
            node.kernel_etag = None
        self._negative.clear()
        self.listings.clear()
        self.subtrees.clear()
        self.prefetch.clear()

    # --- what the server says applied to a node ------------------------------------------------

    def apply(self, node: Node, info: ObjectInfo | Listed, *, full: bool) -> None:
        """What a listing or (`full`) a HEAD says; attrs=listing shows no POSIX metadata."""
        posix = parse_posix(info.metadata) if full and not self.listing_attrs else None
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
        if posix is not None or self.listing_attrs:
            node.atime = posix.atime if posix is not None else None
        node.mode = posix.mode if posix and posix.mode is not None else default_mode
        node.uid = posix.uid if posix and posix.uid is not None else self.defaults.uid
        node.gid = posix.gid if posix and posix.gid is not None else self.defaults.gid
        # what only a HEAD has (a listing's `Listed` carries no metadata nor content type)
        head = info if full and isinstance(info, ObjectInfo) else None
        if head is not None:
            node.metadata = dict(head.metadata)
            node.content_type = head.content_type
            node.system = dict(head.system)
        node.full = full
        node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        self.revalidation.applied(node, head)
        if node.kind is Kind.DIR and full:
            self.marker_seen(node)

    def marker_seen(self, node: Node) -> None:
        """The directory's marker (or that it has none) was just read from the server."""
        node.marker_expiry = time.monotonic() + max(
            self.opts.attr_timeout, self.opts.dir_attr_timeout
        )

    def _apply_marker(self, node: Node, marker: ObjectInfo | None) -> None:
        """A directory's `dir/` marker as just read from the server (None: it has none)."""
        node.has_marker = marker is not None
        if marker is not None:
            self.apply(node, marker, full=True)
        else:
            node.full = True
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            self.marker_seen(node)

    def _marker_fresh(self, node: Node) -> bool:
        """A directory whose attributes (from its marker) may be reused without asking; with
        attrs=listing every directory (a marker is never read)."""
        fresh = self.listing_attrs or (node.full and node.marker_expiry > time.monotonic())
        return node.kind is Kind.DIR and fresh

    def _fresh(self, node: Node) -> bool:
        """Attributes that may be shown without asking (attrs=listing: a listing's too)."""
        return (node.full or self.listing_attrs) and node.attr_expiry > time.monotonic()

    # --- lookup and attributes -----------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Node:
        """Find `name` in the directory and count one kernel reference to it."""
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise NameTooLong()
        if not valid_name(name):
            raise NoEntry()
        parent = self.dir(parent_ino)
        # hook: .versions/ and everything below it (versions.py)
        node = await self.versions.lookup(parent, name) or await self.find(parent, name)
        self.table.remember(node)
        return node

    async def find(self, parent: Node, name: str, *, exact: bool = False) -> Node:
        """The node of `name`, asking the server unless known and fresh; `exact` (O_EXCL,
        which drops the cached listing first) asks about this directory alone, never with a
        subtree listing (one page, not up to listing.PAGES, for every exclusive create)."""
        node = self.table.child(parent, name)
        if node is not None and not node.full:
            if node.kind_certain and node.attr_expiry > time.monotonic():
                return node  # listed just now, of a sure kind: getattr asks the rest
            self.prefetch.kick(parent.ino, name, kinds=True)
            await self.prefetch.wait(node)
        if node is not None and (node.pinned or self._fresh(node)):
            return node
        marker = self.markers.pending(parent.bucket, parent.key + name + "/")
        if marker is not None:  # made here, its marker not on the server yet
            return self.node_from_marker(parent, name, marker)
        if node is None and parent.bucket is not None and self._data is not None:
            unsaved = self.data.unsaved(parent.bucket, parent.key + name)
            if unsaved is not None:
                return self.node_from_cache(parent, name, unsaved)
        if (parent.ino, name) in self._negative:
            log.debug("%s%s absent: a negative entry", parent.key, name)
            raise NoEntry()
        if node is None and not exact and parent.bucket is not None:
            prefetched = await self._from_prefetch(parent, name)
            if prefetched is not None:
                return prefetched
        if node is not None and node.kind is not Kind.DIR and node.bucket is not None:
            # revalidate a known file (a listing, or one HEAD); only if it is gone ask again
            if await self.revalidation.confirm(node):
                return node
            info = await self.heads.head_or_none(node.bucket, node.key)
            if info is not None and self.resolver.file_entry(info).kind is node.kind:
                self.apply(node, info, full=True)
                return node
        # a known directory's attributes outlive its entry: only ask whether it still exists
        known_dir = node is not None and self._marker_fresh(node)
        entry = await self.resolver.resolve(parent, name, marker=not known_dir, exact=exact)
        if entry is None:
            if node is not None:
                self.table.detach(node)
            self._negative[(parent.ino, name)] = time.monotonic() + self.opts.negative_timeout
            raise NoEntry()
        if node is not None and known_dir and entry.kind is Kind.DIR:
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            return node
        if node is None or node.kind is not entry.kind:
            node = self.new_node(parent, name, entry.kind)
        if entry.kind is Kind.DIR and self.listing_attrs:
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        elif entry.kind is Kind.DIR:
            self._apply_marker(node, entry.marker())
        elif entry.info is not None:
            self.apply(node, entry.info, full=entry.head)
        return node

    async def _from_prefetch(self, parent: Node, name: str) -> Node | None:
        """The node of a listed name readdir showed without one, from what the prefetch's
        HEAD of it found (waiting for it if under way; prefetch.py), if it found it."""
        self.prefetch.kick(parent.ino, name, kinds=True)
        await self.prefetch.wait_name(parent.ino, name)
        found = self.prefetch.take(parent.ino, name)
        if found is None or self.table.child(parent, name) is not None:
            return None
        return self.node_from_found(parent, name, found)

    def node_from_found(self, parent: Node, name: str, found: tuple[Entry, float]) -> Node:
        """A node of the name a prefetch HEAD found (`Prefetch.take`: what and until when)."""
        head, until = found
        assert head.info is not None
        node = self.new_node(parent, name, head.kind)
        self.apply(node, head.info, full=True)
        node.attr_expiry = until
        return node

    def node_from_cache(self, parent: Node, name: str, unsaved: Unsaved) -> Node:
        """A node for a file the cache holds but the server may not have yet (after a crash)."""
        metadata = unsaved.metadata
        posix = parse_posix(metadata)
        kind = Kind.LINK if posix.kind is Kind.LINK and not self.listing_attrs else Kind.FILE
        node = self._node_from_meta(
            parent,
            name,
            kind,
            metadata,
            size=unsaved.size,
            etag=unsaved.etag,
            content_type=unsaved.content_type,
            system=unsaved.system,
        )
        self.data.adopt(node, unsaved)
        return node

    def node_from_marker(self, parent: Node, name: str, marker: PendingMarker) -> Node:
        """The node of a directory made here whose marker the server may not have yet (made
        anew after a restart, or when the kernel forgot it); a listing lacking it is ignored."""
        node = self.table.child(parent, name)
        if node is None or node.kind is not Kind.DIR:
            opts = marker.opts
            node = self._node_from_meta(parent, name, Kind.DIR, dict(opts.metadata))
            node.content_type, node.system = opts.content_type, dict(opts.system)
            node.has_marker = True
            self.marker_seen(node)
        node.attr_expiry = time.monotonic() + self.opts.attr_timeout
        return node

    def _node_from_meta(
        self, parent: Node, name: str, kind: Kind, metadata: dict[str, str], **attrs: object
    ) -> Node:
        """A node whose attributes come from the metadata its pending upload will carry."""
        posix = parse_posix(metadata)
        known = {"mode": posix.mode, "uid": posix.uid, "gid": posix.gid, "mtime": posix.mtime}
        attrs.update({field: value for field, value in known.items() if value is not None})
        return self.new_node(parent, name, kind, atime=posix.atime, metadata=metadata, **attrs)

    async def _prefetched(self, node: Node) -> None:
        """The HEAD of one listed node, sent ahead of the kernel's question (prefetch.py)."""
        if not node.full and not node.pinned and node.bucket is not None:
            key = node.key
            # a listed file's etag, size and mtime are the listing's (apply, full=False)
            etag = node.etag if node.kind is not Kind.DIR else None
            info = await self._head_as_listed(node.bucket, key, etag, node.size, node.mtime)
            if node.pinned or node.full or node.key != key:
                return  # changed through this mount while we asked
            if node.kind is Kind.DIR:
                self._apply_marker(node, info)
            elif info is not None and self.resolver.file_entry(info).kind is node.kind:
                self.apply(node, info, full=True)
            # metadata read on behalf of a listing is as fresh as the listing
            node.attr_expiry = time.monotonic() + self.prefetch.fresh_for

    async def _prefetched_name(self, directory_ino: int, name: str, entry: Entry) -> Entry | None:
        """The HEAD of a listed file readdir showed without a node (prefetch.py): what a
        lookup of it will find (None: gone, or no longer a file)."""
        directory = self.table.get(directory_ino)
        if directory is None or directory.bucket is None or entry.info is None:
            return None
        listed = entry.info
        info = await self._head_as_listed(
            directory.bucket, directory.key + name, listed.etag, listed.size, listed.last_modified
        )
        return None if info is None else self.resolver.file_entry(info)

    async def _head_as_listed(
        self, bucket: str, key: str, etag: str | None, size: int, modified: float
    ) -> ObjectInfo | None:
        """The HEAD of an object a listing showed with `etag`, `size` and `modified` (None:
        a directory's marker): a HEAD of that very version, kept by this mount or an earlier
        one, answers without a request (cache/attrstore.py)."""
        kept = self._kept(bucket, key, etag, size, modified) if etag else None
        return kept or await self.heads.head_or_none(bucket, key)

    def _kept(
        self, bucket: str, key: str, etag: str, size: int, modified: float
    ) -> ObjectInfo | None:
        return (
            None
            if self._data is None
            else self._data.attrs.match(bucket, key, etag, size, modified)
        )

    def _child(self, directory_ino: int, name: str) -> Node | None:
        directory = self.table.get(directory_ino)
        return None if directory is None else self.table.child(directory, name)

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if node.virtual is not None:  # hook: versions never change (versions.py)
            return node
        if not node.full:
            if node.kind is not Kind.DIR:  # find stats directories, not files
                self.readdir.asked(attributes=True)
            self.prefetch.kick(node.parent, node.name)
            await self.prefetch.wait(node)
        if node.pinned or node.unlinked or node.ino == ROOT_INO or self._fresh(node):
            return node
        if node.bucket is None or node.is_bucket:
            return node
        if node.kind is Kind.DIR:
            if self._marker_fresh(node) or self.markers.pending(node.bucket, node.key):
                node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            else:
                self._apply_marker(node, await self.heads.head_or_none(node.bucket, node.key))
            return node
        if await self.revalidation.confirm(node):  # a listing instead of a HEAD
            return node
        info = await self.heads.head_or_none(node.bucket, node.key)
        if info is None:
            # gone on the server: keep answering with what we know until the kernel asks again
            node.attr_expiry = time.monotonic() + self.opts.attr_timeout
            return node
        if self.resolver.file_entry(info).kind is node.kind:
            self.apply(node, info, full=True)
        return node

    async def load_metadata(self, node: Node) -> None:
        """The object's user metadata, which a change writes back (setattr): a listing lacks
        it, and with attrs=listing getattr does not ask for it."""
        if self.listing_attrs and node.virtual is None:
            await self._prefetched(node)  # what a prefetch asks (nothing if `full`)
        elif not node.full:
            await self.getattr(node.ino)

    async def readlink(self, ino: int) -> str:
        node = self.node(ino)
        if node.kind is not Kind.LINK:
            raise InvalidArgument("not a symbolic link")
        if node.link_target is None:
            data = await self.data.read_all(node)
            node.link_target = data.decode("utf-8", "surrogateescape")
        return node.link_target

    def _node_dropped(self, node: Node, cf: CachedFile | None) -> None:
        """The table dropped a node: so go what was kept for it (here, contents.py, the cache);
        inode numbers are never reused, so nothing kept under its inode could serve again.
        Listings and the prefetch queue are kept per directory: a file's drop (the bound's
        FORGETs, thousands a second in a walk) skips their six caches."""
        ino = node.ino
        if node.kind is Kind.DIR:
            self.listings.dropped(ino)
            self.prefetch.dropped(ino)
            self.readdir.dropped(ino)
        self.revalidation.dropped(ino)
        if self._data is not None:
            self._data.dropped(ino, cf)
