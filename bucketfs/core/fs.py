"""BucketFS: the filesystem in plain terms, without FUSE: a facade over the parts of the core.

Owns the assembly of one mount's core and its lifetime (`run`, `drain`); every operation is one
call to the part that owns it:

- namespace.py: lookup, getattr, readdir snapshots, and every cache of what the server said
  (with its freshness rules), the inode table; prefetch.py: metadata HEADs after a listing;
- mutations.py: mkdir, rmdir, symlink, mknod, unlink, rename, setattr;
- handles.py: open, create, read, write, flush, fsync, release, and the handle table;
- control.py: the control attributes (pid, status, upload state, flush); xattrs.py: every
  other extended attribute; versions.py: the read-only `.versions/` tree; storeinfo.py: `df`
  figures and the attributes of bucket directories;
- contents.py: file contents, the only door into the cache; the backend is wrapped in
  cache/deletes.py's `DeferredDeletes`, through which every request of the mount is sent;
  cache/markers.py's `Markers` sends mkdir's markers in the background (journaled in the
  cache's index like deferred deletes).

`fuse/ops.py` adapts pyfuse3 calls to these methods; tests can call them directly.

Invariants: the facade adds no behaviour of its own; a part never calls the facade, only the
parts it was given (handles before mutations; control and xattrs reach the others through
callbacks); file contents are served only between `run`'s `started()` and its end (`data`
raises before).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import trio

from bucketfs.backends.base import Backend
from bucketfs.cache.deletes import DeferredDeletes
from bucketfs.cache.markers import Markers
from bucketfs.concurrency import Foreground
from bucketfs.core import control
from bucketfs.core.contents import DataOptions, FileData
from bucketfs.core.handles import Handle, Handles
from bucketfs.core.mutations import Mutations
from bucketfs.core.namespace import Namespace
from bucketfs.core.nodes import Nameless, Node
from bucketfs.core.options import FsOptions
from bucketfs.core.storeinfo import StatFs, StoreInfo
from bucketfs.core.xattrs import Xattrs
from bucketfs.errors import BucketfsError

__all__ = ["BucketFS", "FsOptions", "StatFs"]

log = logging.getLogger(__name__)


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
        self._cache_dir = cache_dir
        #: the kernel requests under way, told by the FUSE adapter; uploads yield to them
        self.foreground = Foreground()
        # hook: mkdir's markers go up in the background, after the same quiet period as files
        self.markers = Markers(
            self.backend, delay=options.writeback_delay, max_parallel=options.max_parallel
        )
        self.namespace = Namespace(
            self.backend, self.markers, bucket=bucket, prefix=prefix, options=options
        )
        self.table = self.namespace.table
        self.defaults = self.namespace.defaults
        self.versions = self.namespace.versions
        self.handles = Handles(self.namespace)
        self.mutations = Mutations(
            self.namespace,
            self.handles,
            max_parallel=options.max_parallel,
            sync_path=self.sync_path,
        )
        # hook: df figures and bucket attributes (storeinfo.py)
        self.store_info = StoreInfo(self.backend, bucket=bucket)
        # hook: object metadata as xattrs (xattrs.py)
        self.xattrs = Xattrs(
            self.backend,
            url_ttl=options.url_ttl,
            persist=self.mutations.persist_attrs,
            flush=self.sync_path,
            refresh=self.getattr,
            send_markers=self.markers.flush,
            read_only=options.read_only,
            store=self.store_info,
        )
        self.control = control.Control(
            self.namespace, self.xattrs, cache_dir, self.foreground.requests
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the cache, the uploads and readahead until cancelled.

        Dirty files left by an earlier run are queued for upload before `started()`, so before
        the mount becomes visible."""
        opts = self.opts
        data: FileData | None = None
        try:
            async with trio.open_nursery() as nursery:
                ns = self.namespace
                data = FileData(
                    self.backend,
                    self._cache_dir,
                    nursery,
                    DataOptions(
                        max_parallel=opts.max_parallel,
                        max_dirty=opts.max_dirty,
                        transfers=opts.transfers,
                        upload_parts=opts.upload_parts,
                        meta_cache_size=opts.meta_cache_size,
                        block_size=opts.block_size,
                        cache_size=opts.cache_size,
                        writeback_delay=opts.writeback_delay,
                        upload_defer=opts.upload_defer,
                        part_size=opts.part_size,
                        early_parts=opts.early_parts,
                    ),
                    node_at=ns.node_at,
                    saved=ns.saved,
                    conflicted=ns.conflicted,
                    foreground=self.foreground,
                )
                ns.attach(data, nursery)
                self.store_info.attach(nursery)
                await data.start(nursery)
                # journaled in the cache's index, after deferred deletes (a marker's PUT waits
                # for the queued deletes of its name, those of an earlier run included)
                self.markers.attach(data.cache.index)
                await nursery.start(self.markers.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            # only once every task that used it is gone (threads finish before cancelling)
            if data is not None:
                data.close()

    @property
    def ready(self) -> bool:
        return self.namespace.ready

    @property
    def data(self) -> FileData:
        return self.namespace.data

    async def drain(self) -> list[str]:
        """Upload every dirty file and pending marker; returns what could not be uploaded (it
        stays in the cache's index and is uploaded by the next mount of this cache directory)."""
        if not self.ready:
            return []
        try:
            await self.backend.flush()
        except BucketfsError as exc:
            log.error("could not delete %d unlinked objects: %s", self.backend.queued, exc)
        try:
            await self.markers.flush()
        except BucketfsError as exc:
            log.error("could not send %d directory markers: %s", self.markers.queued, exc)
        return [*self.markers.names(), *await self.data.drain()]

    # --- names and attributes (namespace.py) -------------------------------------------------

    def node(self, ino: int) -> Node:
        return self.namespace.node(ino)

    async def lookup(self, parent_ino: int, name: str) -> Node:
        return await self.namespace.lookup(parent_ino, name)

    def absent_for(self, parent_ino: int, name: str) -> float:
        return self.namespace.absent_for(parent_ino, name)

    async def getattr(self, ino: int) -> Node:
        return await self.namespace.getattr(ino)

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        for ino, count in items:
            self.table.forget(ino, count)

    def remember(self, node: Node) -> None:
        self.table.remember(node)

    def node_count(self) -> int:
        return len(self.table)

    def watch_nodes(self, limit: int, over: Callable[[], None]) -> None:
        """Have `over` called whenever a new node makes the table larger than `limit`."""
        self.table.limit = limit
        self.table.over = over

    def cold_entries(self, count: int) -> list[tuple[int, int, str]]:
        """(inode, parent, name) the kernel may be asked to forget (nodes.py `cold_entries`)."""
        return self.table.cold_entries(count)

    async def readlink(self, ino: int) -> str:
        return await self.namespace.readlink(ino)

    # --- directories (handles.py) ------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        return self.handles.opendir(ino)

    def releasedir(self, fh: int) -> None:
        self.handles.releasedir(fh)

    async def readdir(self, fh: int, offset: int) -> Iterator[tuple[str, Node | Nameless, int]]:
        return await self.handles.readdir(fh, offset)

    async def fsyncdir(self) -> None:
        await self.handles.fsyncdir()

    # --- files (handles.py) ------------------------------------------------------------------

    def handle(self, fh: int) -> Handle:
        return self.handles.handle(fh)

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        return await self.handles.create(parent_ino, name, mode, flags, uid, gid)

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        return await self.handles.open(ino, flags)

    async def read(
        self, fh: int, offset: int, size: int, *, lend: bool = False
    ) -> bytes | memoryview:
        return await self.handles.read(fh, offset, size, lend=lend)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self.handles.write(fh, offset, data)

    async def flush(self, fh: int) -> None:
        await self.handles.flush(fh)

    async def fsync(self, fh: int) -> None:
        await self.handles.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.handles.release(fh)

    # --- changes (mutations.py) --------------------------------------------------------------

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        return await self.mutations.mkdir(parent_ino, name, mode, uid, gid)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        await self.mutations.rmdir(parent_ino, name)

    async def symlink(self, parent_ino: int, name: str, target: str, uid: int, gid: int) -> Node:
        return await self.mutations.symlink(parent_ino, name, target, uid, gid)

    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int
    ) -> Node:
        return await self.mutations.mknod(parent_ino, name, mode, rdev, uid, gid)

    async def unlink(self, parent_ino: int, name: str) -> None:
        await self.mutations.unlink(parent_ino, name)

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int
    ) -> None:
        await self.mutations.rename(old_parent, old_name, new_parent, new_name, flags)

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
        return await self.mutations.setattr(
            ino, mode=mode, uid=uid, gid=gid, mtime=mtime, size=size, atime=atime
        )

    # --- the mount as a whole, and extended attributes (control.py, xattrs.py) ---------------

    async def statfs(self) -> StatFs:
        # hook: what the store says, cached; never waits long on the server (storeinfo.py)
        return await self.store_info.statfs()

    def status(self) -> dict[str, object]:
        """What `bucketfs status` prints: where the data is."""
        return self.control.status()

    async def sync_path(self, ino: int) -> None:
        """`bucketfs flush PATH`: upload a file, or everything under a directory, now."""
        await control.sync_path(self.namespace, ino)

    async def getxattr(self, ino: int, name: str) -> bytes:
        return await self.control.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[str]:
        return await self.control.listxattr(ino)

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        await self.control.setxattr(ino, name, value)

    async def removexattr(self, ino: int, name: str) -> None:
        await self.control.removexattr(ino, name)
