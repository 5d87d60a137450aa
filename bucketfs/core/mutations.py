"""Changes to names and attributes: mkdir, rmdir, symlink, mknod, unlink, rename, setattr.

Owns what each change sends to the server and in which order, and how the namespace learns of
it (`Namespace.changed`). File contents (pending uploads that move, go or carry new
attributes) are contents.py's; the creation of a regular file is handles.py's (`create`);
sending a new directory's marker is cache/markers.py's (`Markers`).

Invariants: a method either completes its server-side change (or journals it, for a deferred
one) or raises a `BucketfsError` and leaves the table as it was; every change made through this
mount is told to the namespace, so its listings stay in step; unlink's DELETE is deferred
(cache/deletes.py: sent in batches, and every later request on the key waits for it), and so is
mkdir's marker PUT (cache/markers.py: journaled, sent in the background; an rmdir before it went
sends nothing; a bucket is still created at once); a directory's marker is deleted after its
contents, deepest first; a file renamed or unlinked while its upload is in flight is touched
only once that upload landed; nothing in `.versions/` is ever changed (EROFS).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

import trio

from bucketfs.concurrency import for_each
from bucketfs.core.attrs import check_new_name, rdev_metadata, special_kind
from bucketfs.core.contents import write_options
from bucketfs.core.handles import Handles
from bucketfs.core.namespace import Namespace
from bucketfs.core.nodes import Kind, Node
from bucketfs.errors import (
    CrossDevice,
    DirectoryNotEmpty,
    FileExists,
    FileTooLarge,
    InvalidArgument,
    IsADirectory,
    NoEntry,
    NotADirectory,
    NotPermitted,
    NotSupported,
)
from bucketfs.types import ObjectInfo, WriteOptions

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Mutations:
    def __init__(
        self,
        namespace: Namespace,
        handles: Handles,
        *,
        max_parallel: int,
        sync_path: Callable[[int], Awaitable[None]],
    ) -> None:
        """`handles` makes regular files (mknod); `sync_path` uploads everything pending
        under a directory before it is renamed (control.py)."""
        self._ns = namespace
        self._handles = handles
        self._sync_path = sync_path
        self._limiter = trio.CapacityLimiter(max_parallel)

    # --- directories ---------------------------------------------------------------------------

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        ns = self._ns
        ns.writable()
        parent = ns.dir(parent_ino)
        ns.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        if ns.table.child(parent, name) is not None:
            raise FileExists()
        now = time.time()
        if parent.bucket is None:
            await ns.backend.create_bucket(name)
            node = ns.new_node(parent, name, Kind.DIR, mode=mode & 0o7777, uid=uid, gid=gid)
        else:
            node = ns.new_node(
                parent, name, Kind.DIR, mode=mode & 0o7777, uid=uid, gid=gid, mtime=now
            )
            assert node.bucket is not None
            opts = write_options(node)
            try:
                # journaled (or, outside `run`, PUT at once): sent in the background
                await ns.markers.add(node.bucket, node.key, opts)
            except BaseException:
                ns.table.detach(node)
                raise
            self._marker_written(node, opts)
        ns.changed(parent, name, Kind.DIR)
        ns.made_empty(node)
        ns.table.remember(node)
        return node

    async def _put_marker(self, node: Node) -> None:
        """Write the marker of a directory that has none pending, with its attributes."""
        assert node.bucket is not None
        opts = write_options(node)
        await self._ns.backend.put(node.bucket, node.key, b"", opts)
        self._marker_written(node, opts)

    def _marker_written(self, node: Node, opts: WriteOptions) -> None:
        """The node's marker is (or will be, once sent) `opts`: its attributes are known."""
        node.has_marker = True
        node.full = True
        node.metadata = dict(opts.metadata)
        node.attr_expiry = time.monotonic() + self._ns.opts.attr_timeout
        self._ns.marker_seen(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        ns = self._ns
        ns.writable()
        parent = ns.dir(parent_ino)
        ns.versions.refuse(parent, name)  # hook: EROFS in .versions/
        node = await ns.find(parent, name)
        if node.kind is not Kind.DIR:
            raise NotADirectory()
        await self._check_empty(node)
        if node.bucket is not None and node.is_bucket and parent.bucket is None:
            await ns.backend.delete_bucket(node.bucket)
        elif node.bucket is not None and not await ns.markers.remove(node.bucket, node.key):
            await ns.backend.defer_delete(node.bucket, node.key)  # its marker, if any
        ns.table.detach(node)
        ns.changed(parent, name)
        ns.drop_listing(node)

    async def _check_empty(self, node: Node) -> None:
        ns = self._ns
        for child in ns.table.known_children(node):
            if child.pinned and not child.unlinked:
                raise DirectoryNotEmpty()
        if node.bucket is None:
            return
        if ns.markers.children(node.bucket, node.key):  # directories made here, not sent yet
            raise DirectoryNotEmpty()
        if ns.markers.pending(node.bucket, node.key) and ns.listed_empty(node):
            # made here and not on the server yet: its listing, kept in step with every change
            # made here, is all there is to ask (rmdir before the marker went sends nothing)
            return
        page = await ns.backend.list_page(node.bucket, node.key, delimiter="/", max_keys=2)
        if page.prefixes or any(info.key != node.key for info in page.objects):
            raise DirectoryNotEmpty()

    # --- symlinks and special files ------------------------------------------------------------

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Node:
        ns = self._ns
        ns.writable()
        parent = ns.dir(parent_ino)
        ns.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        bucket = ns.bucket_of(parent)
        now = time.time()
        node = ns.new_node(
            parent, name, Kind.LINK, mode=0o777, uid=uid, gid=gid, mtime=now, bucket=bucket
        )
        await self._store_new(parent, node, target.encode("utf-8", "surrogateescape"))
        node.link_target = target
        return node

    async def _store_new(self, parent: Node, node: Node, data: bytes) -> None:
        """Upload a new symlink's or special file's object at once (the node leaves the table
        if that fails), then record it as made through this mount."""
        assert node.bucket is not None
        ns = self._ns
        opts = write_options(node)
        try:
            result = await ns.backend.put(node.bucket, node.key, data, opts)
        except BaseException:
            ns.table.detach(node)
            raise
        node.etag, node.version_id, node.size = result.etag, result.version_id, len(data)
        node.metadata = dict(opts.metadata)
        node.attr_expiry = time.monotonic() + ns.opts.attr_timeout
        # to a listing, a special file is an object like any other
        ns.changed(parent, node.name, Kind.LINK if node.kind is Kind.LINK else Kind.FILE)
        ns.table.remember(node)

    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int
    ) -> Node:
        """A fifo, socket or device: an empty object whose `mode` metadata carries the type
        (and `rdev` a device's number); the kernel serves its opens. A regular file is a
        create."""
        kind = special_kind(mode)
        if kind is None:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
            fh, node = await self._handles.create(parent_ino, name, mode, flags, uid, gid)
            await self._handles.release(fh)
            return node
        ns = self._ns
        ns.writable()
        parent = ns.dir(parent_ino)
        ns.versions.refuse(parent, name)  # hook: EROFS in .versions/
        check_new_name(name)
        bucket = ns.bucket_of(parent)
        if ns.table.child(parent, name) is not None:
            raise FileExists()
        now = time.time()
        node = ns.new_node(
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

    # --- unlink --------------------------------------------------------------------------------

    async def unlink(self, parent_ino: int, name: str) -> None:
        ns = self._ns
        ns.writable()
        parent = ns.dir(parent_ino)
        ns.versions.refuse(parent, name)  # hook: EROFS in .versions/
        # the kernel looked the name up within entry_timeout, or holds a listed entry of a
        # sure kind: a listed file needs no HEAD to be deleted (rm -rf after readdir)
        node = ns.table.child(parent, name)
        if node is None or node.kind is Kind.DIR:
            node = await ns.find(parent, name)
        if node.kind is Kind.DIR:
            raise IsADirectory()
        assert node.bucket is not None
        async with ns.data.lock(node):
            stored = await ns.data.drop(node)
            if node.etag is not None or stored:
                await ns.backend.defer_delete(node.bucket, node.key)
        node.unlinked = True
        ns.table.detach(node)
        ns.changed(parent, name)

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
        ns = self._ns
        ns.writable()
        node = ns.node(ino)
        ns.versions.refuse(node)  # hook: EROFS in .versions/
        if size is not None and size > ns.backend.max_object_size:
            raise FileTooLarge(f"{size} bytes is more than the store's largest object")
        # the object's metadata must be known before we write it back
        await ns.load_metadata(node)
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
            await self.persist_attrs(node)
        return node

    async def _truncate(self, node: Node, size: int) -> None:
        data = self._ns.data
        async with data.lock(node):
            node.mtime = time.time()
            await data.truncate(node, size)
            if node.writers == 0:
                data.closed(node)  # no writable handle will close it: upload now

    async def persist_attrs(self, node: Node) -> None:
        """The node's attributes (and user metadata) go to the server: with its pending
        upload, by a marker written again, or by a copy of the object onto itself."""
        ns = self._ns
        if node.dirty:
            ns.data.refresh_meta(node)  # the pending upload carries them
            return
        if node.pinned or node.unlinked or node.bucket is None:
            return
        if node.kind is Kind.DIR:
            if node.is_bucket or node.key == "":
                log.debug("attributes of a bucket root are kept in memory only")
                return
            opts = write_options(node)
            if ns.markers.update(node.bucket, node.key, opts):
                self._marker_written(node, opts)  # the pending marker carries them
                return
            # a marker cannot always be copied onto itself (SeaweedFS): write it again
            await self._put_marker(node)
            return
        async with ns.data.lock(node):
            opts = write_options(node)
            result = await ns.data.copy_object(
                node.bucket, node.key, node.key, node.size, opts, etag=node.etag
            )
            node.etag, node.version_id = result.etag, result.version_id
            node.metadata = dict(opts.metadata)
            node.kernel_etag = result.etag if node.kernel_etag else None
            ns.data.rebased(node, result.etag)
            node.attr_expiry = time.monotonic() + ns.opts.attr_timeout

    # --- rename --------------------------------------------------------------------------------

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int
    ) -> None:
        ns = self._ns
        ns.writable()
        if flags & RENAME_EXCHANGE:
            raise NotSupported("RENAME_EXCHANGE is not supported on an object store")
        src_dir, dst_dir = ns.dir(old_parent), ns.dir(new_parent)
        ns.versions.refuse(src_dir, old_name)  # hook: EROFS in .versions/
        ns.versions.refuse(dst_dir, new_name)
        check_new_name(new_name)
        node = await ns.find(src_dir, old_name)
        if node.is_bucket and src_dir.bucket is None:
            raise NotPermitted("buckets cannot be renamed")
        if src_dir.bucket != dst_dir.bucket or dst_dir.bucket is None:
            raise CrossDevice()
        try:
            target: Node | None = await ns.find(dst_dir, new_name)
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
            if target is not None:  # an empty directory replaced: its pending marker must
                await ns.markers.remove(dst_dir.bucket, new_prefix)  # not land over ours
            await self._rename_dir(node, new_prefix)
        else:
            if target is not None:
                # the target's own pending upload must not land after (over) ours
                async with ns.data.lock(target):
                    await ns.data.drop(target)
                target.unlinked = True
            # pending content is uploaded under the old name, then copied and deleted
            await ns.data.rename(node, new_key, replaces=target is not None)
        ns.table.move(node, dst_dir, new_name)
        if node.kind is Kind.FILE:
            # a pending upload goes up with the type guessed from the name it lands under
            # (rsync writes `.NAME.XXXXXX` and renames it), not the temporary one's
            ns.data.refresh_meta(node)
        ns.changed(src_dir, old_name)
        ns.changed(dst_dir, new_name, node.kind)

    async def _rename_dir(self, node: Node, new_prefix: str) -> None:
        assert node.bucket is not None
        backend = self._ns.backend
        bucket, old_prefix = node.bucket, node.key
        # before a directory moves, everything pending under it reaches the server
        await self._sync_path(node.ino)
        self._ns.data.forget_clean_under(node.bucket, node.key)
        keys: list[ObjectInfo] = []
        token: str | None = None
        while True:
            page = await backend.list_page(bucket, old_prefix, delimiter=None, token=token)
            keys.extend(page.objects)
            token = page.next_token
            if token is None:
                break

        async def move_one(info: ObjectInfo) -> None:
            dst = new_prefix + info.key[len(old_prefix) :]
            if info.key.endswith("/"):
                marker = await backend.head(bucket, info.key)
                opts = WriteOptions(marker.metadata, marker.content_type, dict(marker.system))
                await backend.put(bucket, dst, b"", opts)
            else:
                await self._ns.data.copy_object(bucket, info.key, dst, info.size, None)

        await for_each(keys, move_one, self._limiter)
        # contents first, then markers deepest first: SeaweedFS keeps a marker whose
        # "directory" still had children when the marker was deleted
        contents = [info.key for info in keys if not info.key.endswith("/")]
        markers = sorted((info.key for info in keys if info.key.endswith("/")), reverse=True)
        await backend.delete_many(bucket, contents)
        for marker in markers:
            await backend.delete(bucket, marker)
