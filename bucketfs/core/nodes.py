"""The inode table: which inode is which object, and what we know about it.

Owns `Node` (one file, symlink, directory or special file (fifo, socket, device) the kernel
may hold an inode number for), `InodeTable` (inode -> node, and (bucket, path) -> inode for the
nodes still reachable by name), and the kinds a node may be: `Kind`, and `Virtual`/`VKind` for
the nodes of the `.versions/` tree (versions.py; kept here so that nodes.py imports no other
core module, and no module of core/ imports in a circle). The cache's `CachedFile` is a type
here only (`Node.cached`): contents.py is what reads and changes it.

Invariants:
- inode numbers are never reused while the daemon runs; ROOT (1) is never forgotten; a number
  `reserve` handed out goes to at most one node (the one `reserved` names it for);
- a node is in `by_path` only while it is reachable by its name; an unlinked or replaced node
  leaves `by_path` but stays in `by_ino` until the kernel forgot it (lookups == 0) and no handle
  is open on it (opens == 0);
- a directory's `key` is its prefix: "" (bucket root) or a string ending in "/"; a file's or a
  symlink's `key` is the object key; `path` is the key without the trailing "/";
- `full` is False when the attributes came from a listing (no user metadata seen): getattr then
  asks the server once before answering;
- `held` lists exactly the nodes other than the root that the kernel refers to (lookups > 0),
  least recently looked up first: `cold_entries` picks from its front the names the kernel
  may be asked to forget (fuse/session.py bounds the table so);
- `children` has an entry only for a directory with at least one reachable child we know of:
  a dict that empties is dropped, because a Python dict never gives back the room it grew to
  (a walk that once knew a directory's 1,000 children kept ~29 KiB for it after the kernel
  forgot them all: 28 MiB over a 1,000-directory `find`);
- a node's `cached` file counts it in `CachedFile.holders` (the setter keeps the count), so the
  cache knows which files no node refers to; a dropped node holds none, and `on_drop` hears
  of every drop (the file data drops what it kept per inode, the cache a file nothing holds).
"""

from __future__ import annotations

import enum
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from bucketfs.types import EMPTY

if TYPE_CHECKING:
    from bucketfs.cache.store import CachedFile
    from bucketfs.types import ObjectInfo

ROOT_INO = 1
#: the longest symlink target (PATH_MAX - 1): a symlink's object holds its target, so a listed
#: object larger than this is a regular file whatever its metadata says
SYMLINK_MAX = 4095


def _empty() -> Mapping[str, str]:
    return EMPTY


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    LINK = "link"
    # special files: an empty object whose `mode` metadata says which (attrs.py)
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR = "char"  # a character device (its number in `rdev` metadata)
    BLOCK = "block"  # a block device (likewise)


#: the file type bits of st_mode for each kind
KIND_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.LINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.SOCKET: stat.S_IFSOCK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
}
SPECIAL_KINDS = frozenset({Kind.FIFO, Kind.SOCKET, Kind.CHAR, Kind.BLOCK})


class VKind(enum.Enum):
    INDEX = "index"  # d/.versions/: a directory per name in d with versions
    KEY = "key"  # d/.versions/name/: a file per version of d/name
    VERSION = "version"  # one version (under KEY, or a file in a point-in-time view)
    AT = "at"  # d/.versions/@T/ and every directory below it: a prefix as it was at T


@dataclass(frozen=True, slots=True)
class Virtual:
    """What a node of the `.versions/` tree shows. `path` is a directory prefix ("" or ending
    in "/") for INDEX and AT, an object key for KEY and VERSION."""

    kind: VKind
    bucket: str
    path: str
    at_ms: int | None = None  # AT and files in it: the instant, ms since the epoch (UTC)
    version: ObjectInfo | None = None  # VERSION: the version shown

    @property
    def ident(self) -> tuple[object, ...]:
        v = self.version
        vid = (v.version_id, v.is_delete_marker, v.etag) if v is not None else None
        return (self.kind, self.bucket, self.path, self.at_ms, vid)


class Nameless(NamedTuple):
    """A name readdir shows without a node (readdir.py `Readdir.nameless`): the kernel gets its
    type and inode number, makes no inode for it, and looks the name up if it needs more. `ino`
    is reserved for the node a lookup of the name makes while the readdir is open, so that
    `d_ino` and `st_ino` agree. A named tuple: one is made per name handed out (100,000 for an
    `ls` of a large directory), at about half a frozen dataclass's cost."""

    ino: int
    st_mode: int


@dataclass(slots=True, eq=False)
class Node:
    ino: int
    kind: Kind
    bucket: str | None  # None only for the root of an all-buckets mount
    key: str
    parent: int
    name: str
    mode: int  # permission bits only
    uid: int
    gid: int
    size: int = 0
    mtime: float = field(default_factory=time.time)
    ctime: float = 0.0  # 0: not known yet (st_ctime shows mtime then)
    #: last access as set by utimensat or at create (metadata `atime`); None: not known,
    #: st_atime shows mtime. Reads never change it (a mount is noatime by nature).
    atime: float | None = None
    #: a directory: when this mount last created, removed or renamed an entry in it; its
    #: mtime/ctime are never shown older (the marker gets them only at its next write)
    entries_changed: float = 0.0
    etag: str | None = None  # None: not (yet) on the server
    version_id: str | None = None
    #: user metadata as last seen or to be written, POSIX keys included; replaced, never
    #: changed in place (a node without any shares `types.EMPTY`: 64 bytes a node)
    metadata: Mapping[str, str] = field(default_factory=_empty)
    content_type: str | None = None
    system: Mapping[str, str] = field(default_factory=_empty)
    full: bool = True
    attr_expiry: float = 0.0
    #: a directory's attributes from its marker (or their absence) are reused until then
    marker_expiry: float = 0.0
    lookups: int = 0
    opens: int = 0
    #: open handles that may write (its upload waits for the last one's release)
    writers: int = 0
    unlinked: bool = False
    is_bucket: bool = False
    has_marker: bool = False
    link_target: str | None = None
    #: ETag of the content the kernel's page cache holds for this inode (keep_cache)
    kernel_etag: str | None = None
    #: the cache's file for this node's content (`cached`)
    _cached: CachedFile | None = field(default=None, repr=False)
    #: a node of the read-only `.versions/` tree (versions.py); None for names of keys
    virtual: Virtual | None = None
    #: the last HEAD of the object for its xattrs (xattrs.py); stale once `etag` differs
    head_info: ObjectInfo | None = None

    @property
    def cached(self) -> CachedFile | None:
        return self._cached

    @cached.setter
    def cached(self, cf: CachedFile | None) -> None:
        old = self._cached
        if old is cf:
            return
        if old is not None:
            old.holders -= 1
        if cf is not None:
            cf.holders += 1
        self._cached = cf

    @property
    def path(self) -> str:
        return self.key[:-1] if self.key.endswith("/") else self.key

    @property
    def st_mode(self) -> int:
        return KIND_BITS[self.kind] | (self.mode & 0o7777)

    @property
    def dirty(self) -> bool:
        return self.cached is not None and self.cached.dirty

    @property
    def kind_certain(self) -> bool:
        """Whether the kind is sure without the object's metadata: a node known only from a
        listing is a directory (a prefix) or a file too large to be a symlink. The kernel may
        then keep its entry (an `unlinkat` after `readdir` needs no lookup); its attributes
        still expire at once until the metadata is read."""
        return self.full or self.kind is Kind.DIR or self.size > SYMLINK_MAX

    @property
    def pinned(self) -> bool:
        """Local state that the server does not have yet: never replace it from a listing."""
        return self.kind is not Kind.DIR and (self.etag is None or self.dirty)


def child_key(parent: Node, name: str, kind: Kind) -> str:
    base = parent.key + name
    return base + "/" if kind is Kind.DIR else base


class InodeTable:
    """inode -> Node, and (bucket, path) -> inode for reachable nodes.

    Memory per node is what bounds a mount's RSS (`max_nodes`), so the indexes hold no tuple
    nor ordered-dict link per node: `by_path` is a dict of paths per bucket and `held` a plain
    dict kept in order by popping and re-inserting."""

    def __init__(
        self, root: Node, on_drop: Callable[[Node, CachedFile | None], None] = lambda _n, _c: None
    ) -> None:
        assert root.ino == ROOT_INO
        #: told (the node, the file it held) whenever a node is dropped
        self._on_drop = on_drop
        root.lookups = 1
        self._next = ROOT_INO + 1
        self.by_ino: dict[int, Node] = {ROOT_INO: root}
        #: bucket -> {path: inode} for the reachable nodes (`find`)
        self.by_path: dict[str | None, dict[str, int]] = {root.bucket: {root.path: ROOT_INO}}
        #: parent ino -> {name: child ino} for reachable children we know of (never empty)
        self.children: dict[int, dict[str, int]] = {}
        #: the nodes the kernel refers to, least recently looked up first (not the root)
        self.held: dict[int, None] = {}
        #: above this many nodes (0: never) each new node calls `over` (fuse/session.py)
        self.limit = 0
        self.over: Callable[[], None] = lambda: None
        #: the most nodes the table held at once (`bucketfs status`)
        self.peak = 1
        #: the inode number readdir reserved for a name it showed without a node, if any
        self.reserved: Callable[[int, str], int | None] = lambda _p, _n: None

    def reserve(self) -> int:
        """A new inode number no node has (readdir shows a name without a node with it)."""
        ino = self._next
        self._next += 1
        return ino

    @property
    def root(self) -> Node:
        return self.by_ino[ROOT_INO]

    def get(self, ino: int) -> Node | None:
        return self.by_ino.get(ino)

    def find(self, bucket: str | None, path: str) -> int | None:
        """The inode reachable as `path` in `bucket`, if any."""
        paths = self.by_path.get(bucket)
        return None if paths is None else paths.get(path)

    def _reachable(self, node: Node) -> bool:
        paths = self.by_path.get(node.bucket)
        return paths is not None and paths.get(node.path) == node.ino

    def _unpath(self, bucket: str | None, path: str, ino: int) -> None:
        paths = self.by_path.get(bucket)
        if paths is not None and paths.get(path) == ino:
            del paths[path]

    def _unchild(self, node: Node) -> None:
        siblings = self.children.get(node.parent)
        if siblings is not None and siblings.get(node.name) == node.ino:
            del siblings[node.name]
            if not siblings:
                del self.children[node.parent]  # see the module's invariants

    def child(self, parent: Node, name: str) -> Node | None:
        siblings = self.children.get(parent.ino)  # (called per name readdir hands out)
        ino = None if siblings is None else siblings.get(name)
        return None if ino is None else self.by_ino.get(ino)

    def known_children(self, parent: Node) -> Iterator[Node]:
        for ino in list(self.children.get(parent.ino, {}).values()):
            node = self.by_ino.get(ino)
            if node is not None:
                yield node

    def ancestor_keys(self, directory: Node) -> list[str]:
        """The keys of the directories above `directory` in its bucket, nearest first."""
        keys: list[str] = []
        node = directory
        while node.ino != ROOT_INO and not node.is_bucket:
            parent = self.get(node.parent)
            if parent is None or parent.bucket != directory.bucket:
                break
            keys.append(parent.key)
            node = parent
        return keys

    def add(self, parent: Node, name: str, kind: Kind, **attrs: object) -> Node:
        """A new reachable node `name` in `parent`, replacing (detaching) any old one there."""
        old = self.child(parent, name)
        if old is not None:
            self.detach(old)
        bucket = attrs.pop("bucket", parent.bucket)
        key = attrs.pop("key", child_key(parent, name, kind))
        ino = self.reserved(parent.ino, name)
        if ino is None:
            ino = self._next
            self._next += 1
        node = Node(
            ino=ino,
            kind=kind,
            bucket=bucket,  # type: ignore[arg-type]
            key=key,  # type: ignore[arg-type]
            parent=parent.ino,
            name=name,
            **attrs,  # type: ignore[arg-type]
        )
        self.by_ino[node.ino] = node
        self._link(node)
        size = len(self.by_ino)
        if size > self.peak:
            self.peak = size
        if self.limit and size > self.limit:
            self.over()
        return node

    def add_virtual(self, parent: Node, name: str, kind: Kind, **attrs: object) -> Node:
        """A node outside the key namespace (the `.versions/` tree): in `by_ino` only, never
        found by `child()` or `by_path`, dropped like any node once forgotten and closed."""
        node = Node(
            ino=self._next,
            kind=kind,
            parent=parent.ino,
            name=name,
            **attrs,  # type: ignore[arg-type]
        )
        self._next += 1
        self.by_ino[node.ino] = node
        return node

    def _link(self, node: Node) -> None:
        paths = self.by_path.get(node.bucket)
        if paths is None:
            paths = self.by_path[node.bucket] = {}
        paths[node.path] = node.ino
        self.children.setdefault(node.parent, {})[node.name] = node.ino

    def detach(self, node: Node) -> None:
        """Make `node` unreachable by name (unlinked, or replaced by another node)."""
        self._unpath(node.bucket, node.path, node.ino)
        self._unchild(node)
        if node.kind is Kind.DIR:
            for child in list(self.known_children(node)):
                self.detach(child)
        self._maybe_drop(node)

    def move(self, node: Node, new_parent: Node, new_name: str) -> None:
        """Rename `node` (and, for a directory, every known descendant's key)."""
        target = self.child(new_parent, new_name)
        if target is not None and target is not node:
            self.detach(target)
        old_key = node.key
        self._unpath(node.bucket, node.path, node.ino)
        self._unchild(node)
        node.parent = new_parent.ino
        node.name = new_name
        node.bucket = new_parent.bucket
        node.key = child_key(new_parent, new_name, node.kind)
        self._link(node)
        if node.kind is Kind.DIR:
            self._rekey_descendants(node, old_key)

    def _rekey_descendants(self, directory: Node, old_prefix: str) -> None:
        for child in list(self.known_children(directory)):
            old_key = child.key
            self._unpath(child.bucket, child.path, child.ino)
            child.bucket = directory.bucket
            child.key = directory.key + old_key[len(old_prefix) :]
            paths = self.by_path.get(child.bucket)
            if paths is None:
                paths = self.by_path[child.bucket] = {}
            paths[child.path] = child.ino
            if child.kind is Kind.DIR:
                self._rekey_descendants(child, old_key)

    def remember(self, node: Node, count: int = 1) -> None:
        node.lookups += count
        if node.ino != ROOT_INO:
            self.held.pop(node.ino, None)  # to the back: a dict keeps insertion order
            self.held[node.ino] = None

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups = max(0, node.lookups - count)
        if node.lookups == 0:
            self.held.pop(ino, None)
        self._maybe_drop(node)

    def cold_entries(self, count: int) -> list[tuple[int, int, str]]:
        """Up to `count` (inode, parent inode, name) of the least recently looked up nodes that
        the kernel may forget without anything being lost: reachable by name, no open handle, no
        local state the server lacks, not a directory with known children (its children go
        first), not in `.versions/`. Those picked move to the back, so that the next call,
        made before the kernel's FORGETs arrived, picks others."""
        picked: list[int] = []
        for ino in self.held:
            if len(picked) >= count:
                break
            node = self.by_ino.get(ino)
            if (
                node is None
                or node.opens
                or node.pinned
                or node.virtual is not None
                or (node.kind is Kind.DIR and self.children.get(ino))
                or not self._reachable(node)
            ):
                continue
            picked.append(ino)
        for ino in picked:
            del self.held[ino]
            self.held[ino] = None
        return [(ino, self.by_ino[ino].parent, self.by_ino[ino].name) for ino in picked]

    def release(self, node: Node) -> None:
        node.opens = max(0, node.opens - 1)
        self._maybe_drop(node)

    def settle(self, node: Node) -> None:
        """Drop `node` if nothing needs it any more (say, its unsaved data was just saved)."""
        if self.by_ino.get(node.ino) is node:
            self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        """Drop a node nobody can reach: no kernel reference, no handle, no unsaved data."""
        if node.ino == ROOT_INO or node.lookups > 0 or node.opens > 0 or node.dirty:
            return
        reachable = self._reachable(node)
        if reachable:
            # keep the in-memory metadata of reachable nodes only while the kernel refers to
            # them; a later lookup re-reads the server anyway.
            self._unpath(node.bucket, node.path, node.ino)
            self._unchild(node)
        if node.kind is Kind.DIR and self.children.get(node.ino):
            # a directory with known children stays, so their keys remain consistent
            if reachable:
                self._link(node)
            return
        self.by_ino.pop(node.ino, None)
        self.children.pop(node.ino, None)
        self.held.pop(node.ino, None)
        cf, node.cached = node.cached, None
        self._on_drop(node, cf)

    def __len__(self) -> int:
        return len(self.by_ino)
