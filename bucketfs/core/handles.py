"""Open files and directories: the handle table, and what opening, reading, writing and
closing a file mean on an object store.

Owns `Handle` and `DirHandle` (one number space, `fh`), close-to-open consistency and the
kernel's page cache (`keep`, `Node.kernel_etag`). File contents go through contents.py
(`FileData`), names and attributes through namespace.py.

Invariants: an `open` sees the object as it is now (one HEAD, or the one its own lookup sent
within `heads.OPEN_REUSES_HEAD`, or for a small file read one GET that brings its attributes
and its bytes); the kernel keeps its page cache only while the ETag it
was filled from is still the object's; a node counts its open handles (`opens`) and writable
ones (`writers`), and a handle is counted exactly once from open to release; a FLUSH never
starts an upload: the release of the last writable handle does (a shell's `>` closes a
duplicate descriptor first); after a FLUSH, what was written is in the cache's index; fsync
returns only once the content is on the server; a directory handle lists once (at offset 0)
and then answers from its snapshot, making the node of a listed name only when it hands the
name out (`listing.Snapshot`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from bucketfs.core.attrs import check_new_name
from bucketfs.core.contents import ReadState
from bucketfs.core.listing import Snapshot, held_listing
from bucketfs.core.namespace import Namespace
from bucketfs.core.nodes import Kind, Nameless, Node
from bucketfs.errors import (
    BadHandle,
    FileExists,
    FileTooLarge,
    IsADirectory,
    NoEntry,
    NotFound,
)


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
    snapshot: Snapshot | None = None


class Handles:
    def __init__(self, namespace: Namespace) -> None:
        self._ns = namespace
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1

    # --- the handle table ----------------------------------------------------------------------

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

    # --- directories -------------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self._ns.dir(ino)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_handles[fh] = DirHandle(fh, node)
        return fh

    def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def readdir(self, fh: int, offset: int) -> Iterator[tuple[str, Node | Nameless, int]]:
        """Entries from `offset` on as (name, node, next offset); a snapshot per handle. A
        listed small file comes without a node (`Nameless`: readdir.py).

        The nodes are not counted as kernel references: the adapter calls `remember` for each
        node entry the kernel accepted, and stops taking entries once its buffer is full (each
        node is made as it is taken: a name past the buffer costs nothing, and a call costs
        what the kernel takes, not the whole directory). "." and ".." come first (offsets 0
        and 1), as on every filesystem; the mount's root is its own parent.
        """
        handle = self._dir_handles.get(fh)
        if handle is None:
            raise BadHandle()
        if handle.snapshot is None or offset == 0:
            ns = self._ns
            # hook: the .versions/ tree lists itself; real listings never show it
            entries = await ns.versions.readdir(handle.node, ns.readdir.snapshot)
            up = ns.table.get(handle.node.parent) or ns.table.root
            handle.snapshot = ns.readdir.reading(
                handle.node, [(".", handle.node), ("..", up), *entries]
            )
        # while the kernel walks a tree, names go with their HEADs' attributes (readdir.py)
        stop = await self._ns.readdir.ahead(handle.snapshot, offset)
        return self._entries(handle.snapshot, offset, stop)

    def _entries(
        self, snapshot: Snapshot, offset: int, stop: int | None
    ) -> Iterator[tuple[str, Node | Nameless, int]]:
        entries = snapshot.entries
        for index in range(offset, len(entries) if stop is None else stop):
            name, item = entries[index]
            node = item if isinstance(item, Node) else self._ns.readdir.shown(snapshot, name, item)
            if node is not None:
                yield name, node, index + 1

    async def fsyncdir(self) -> None:
        """Names removed through this mount are gone from the server, and directories made
        through it are there, when this returns."""
        await self._ns.backend.flush()
        await self._ns.markers.flush()

    # --- files -------------------------------------------------------------------------------

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        ns = self._ns
        ns.writable()
        parent = ns.dir(parent_ino)
        ns.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        bucket = ns.bucket_of(parent)
        existing = ns.table.child(parent, name)
        if existing is None and flags & os.O_EXCL:
            existing = await self._exclusive(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise FileExists()
            if existing.kind is Kind.DIR:
                raise IsADirectory()
            fh, _keep = await self.open(existing.ino, flags | os.O_TRUNC)
            ns.table.remember(existing)
            return fh, existing
        now = time.time()
        node = ns.new_node(
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
        ns.data.create(node)
        ns.changed(parent, name, Kind.FILE)
        ns.table.remember(node)
        return self._handle(node, writable=True), node

    async def _exclusive(self, parent: Node, name: str) -> Node | None:
        """What O_EXCL (GNU tar's every file, lock files, mkstemp) must know: the node of
        `name` if it exists. On a store that refuses an upload over an existing key
        (`exclusive_put`), a fresh listing of `parent` answers (kept in step with this
        mount's changes; a directory made here has one, empty): the new file's upload
        carries `If-None-Match: *`, and if another client made the name meanwhile, the
        upload is refused and ours is kept under a conflict name (cache/writeback.py,
        docs/core.md). Otherwise the server is asked, never a cached listing."""
        ns = self._ns
        if ns.backend.exclusive_put and parent.bucket is not None:
            listed = held_listing(ns.listings, ns.subtrees, parent.ino, parent.bucket, parent.key)
            key = parent.key + name
            local = ns.markers.pending(parent.bucket, key + "/") or ns.data.unsaved(
                parent.bucket, key
            )
            if listed is not None and name not in listed and local is None:
                return None  # not on the server when listed, nor made here since
        ns.drop_listing(parent)
        ns.forget_absence(parent, name)
        try:
            return await ns.find(parent, name, exact=True)
        except NoEntry:
            return None

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A handle on the file; the bool says whether the kernel may keep its page cache."""
        ns = self._ns
        node = ns.node(ino)
        if node.kind is Kind.DIR:
            raise IsADirectory()
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if writable:
            ns.writable()
        if node.virtual is not None:  # hook: a version file is read-only and never changes
            if writable:
                ns.versions.refuse(node)
            return self._handle(node, writable=False), True
        if (
            not node.pinned
            and not node.unlinked
            and node.bucket is not None
            and not ns.heads.headed_just_now(node)
        ):
            # close-to-open consistency: see the object as it is now (a HEAD sent during
            # this open's own path lookup counts)
            await self._see_now(node, writable)
        if writable:
            await ns.data.previous_save(node)  # one version per save, even with O_TRUNC
        if writable and flags & os.O_TRUNC:
            async with ns.data.lock(node):
                await ns.data.truncate(node, 0)
                node.mtime = time.time()
        keep = not node.pinned and node.kernel_etag is not None and node.kernel_etag == node.etag
        node.kernel_etag = node.etag if not node.pinned else None
        return self._handle(node, writable), keep

    async def _see_now(self, node: Node, writable: bool) -> None:
        """The object as it is now, from one request. A small file opened to read whose
        object the cache does not hold gets it with its first bytes in one GET
        (`Backend.head_and_get`: `cat`, `tar c`, `grep -r` send no HEAD before the GET);
        else a HEAD, which serves this open only (`headed_just_now` took any older one)."""
        ns = self._ns
        assert node.bucket is not None
        got = None
        up_to = ns.opts.block_size
        if not writable and 0 < node.size <= up_to and not ns.data.holds(node):
            try:
                got = await ns.backend.head_and_get(node.bucket, node.key, up_to=up_to)
            except NotFound:
                raise NoEntry() from None
        if got is None:
            info = await ns.heads.head_or_none(node.bucket, node.key, reusable=False)
            if info is None:
                raise NoEntry()
            ns.apply(node, info, full=True)
            return
        info, data = got
        ns.heads.kept(node.bucket, info)  # as for a HEAD's answer
        ns.apply(node, info, full=True)
        await ns.data.prime(node, data)

    async def read(
        self, fh: int, offset: int, size: int, *, lend: bool = False
    ) -> bytes | memoryview:
        """With `lend`, possibly a view valid only until the caller's next checkpoint (for
        the FUSE reply: `cache.fetch.Fetcher.read`)."""
        handle = self.handle(fh)
        if handle.node.virtual is not None:  # hook: a version file (versions.py)
            return await self._ns.versions.read(handle.node, offset, size)
        return await self._ns.data.read(handle.node, offset, size, handle.read_state, lend=lend)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handle(fh)
        if not handle.writable:
            raise BadHandle("file not open for writing")
        node = handle.node
        if offset + len(data) > self._ns.backend.max_object_size:
            raise FileTooLarge("past the store's largest object")
        lock = self._ns.data.lock(node)
        try:  # nobody holds it (the rule): no turn of trio's loop, as `async with` would take
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            node.mtime = time.time()
            written = await self._ns.data.write(node, offset, data)
        finally:
            lock.release()
        return written

    async def flush(self, fh: int) -> None:
        """close() of one descriptor: what was written is in the cache's index when it
        returns (a new file gets its row now, one commit: `FileData.flushed`); the upload
        starts at the release of the last writable handle (a shell's `>` closes a duplicate
        descriptor first: uploading then would store the truncated file before the real
        one)."""
        handle = self.handle(fh)
        node = handle.node
        if handle.writable and not node.unlinked and node.virtual is None:
            self._ns.data.flushed(node)  # (a reader's close promises nothing of a writer's)

    async def fsync(self, fh: int) -> None:
        """Return only when the file's content is durable on the server."""
        node = self.handle(fh).node
        if not node.unlinked:
            await self._ns.data.flush(node)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        if handle.writable:
            node.writers = max(0, node.writers - 1)
            if node.writers == 0 and node.dirty and not node.unlinked:
                self._ns.data.closed(node)  # the last writer is gone: upload (write-back)
            elif node.writers == 0 and node.cached is not None:
                self._ns.data.released(node)  # a waiting worker ends
        if node.unlinked and node.opens == 1 and node.cached is not None:
            self._ns.data.forget(node)  # the last handle of a deleted file
        self._ns.table.release(node)
