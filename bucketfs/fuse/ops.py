"""The pyfuse3 adapter: kernel requests in, `BucketFS` calls out.

Owns argument unpacking (bytes names, SetattrFields, flags) and the one place where errors
become errno: a `BucketfsError` becomes `FUSEError(exc.errno)`; any other exception is a bug,
logged with its traceback and answered with EIO, so the mount stays up. Invariants: no
filesystem logic lives here; every operation that answers goes through `_errors` (FORGET
has no answer: a failure is logged) and no other code raises `FUSEError`; entries the kernel did
not accept in readdir are not counted as references, nor are "." and ".." (readdirplus
creates no dentry for them, so no FORGET will come).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from bucketfs.core.attrs import parse_rdev
from bucketfs.core.fs import BucketFS
from bucketfs.core.nodes import Kind, Nameless, Node
from bucketfs.errors import (
    AccessDenied,
    BucketfsError,
    CacheError,
    InvalidArgument,
    NoEntry,
    NotPermitted,
    NotSupported,
    Transient,
)
from bucketfs.fuse import nameless

log = logging.getLogger(__name__)

#: entries in one READDIR(PLUS) reply at most. The kernel offers up to 1 MiB (about 6,000
#: entries with attributes, 0.4 s of making nodes) and holds the directory's lock meanwhile;
#: the trio loop (FORGETs, the node bound in session.py, every other request) waits for the
#: whole reply. A shorter reply is no error: the reader asks again from the next offset.
READDIR_MAX_ENTRIES = 1024

P = ParamSpec("P")
R = TypeVar("R")


def _errors(op: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    name = op.__name__.lstrip("_")  # `_getxattr` is counted as the getxattr it serves

    @functools.wraps(op)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _since = time.monotonic()  # taskdump shows how long a request runs
        # uploads yield to kernel requests (core/fs.py `foreground`, cache/writeback.py)
        foreground = args[0].fs.foreground if args and isinstance(args[0], FuseOps) else None
        if foreground is not None:
            foreground.begin(name)
        try:
            return await op(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except BucketfsError as exc:
            if isinstance(exc, Transient | AccessDenied | CacheError):
                _warn(name, exc)
            else:
                log.debug("%s: %s (errno %d)", name, exc, exc.errno)
            raise pyfuse3.FUSEError(exc.errno) from exc
        except trio.Cancelled:
            raise
        except Exception:  # a bug: keep the mount alive, make it loud
            log.exception("%s failed", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if foreground is not None:
                foreground.end()

    return wrapper


WARN_INTERVAL = 10.0
_last_warning = -WARN_INTERVAL
_suppressed = 0


def _warn(op: str, exc: BucketfsError) -> None:
    """Store and cache trouble is worth a WARNING, but at most one every WARN_INTERVAL s."""
    global _last_warning, _suppressed
    now = time.monotonic()
    if now - _last_warning < WARN_INTERVAL:
        _suppressed += 1
        return
    more = f" ({_suppressed} more failures since the last warning)" if _suppressed else ""
    log.warning("%s failed: %s%s", op, exc, more)
    _last_warning, _suppressed = now, 0


def _name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("file names must be valid UTF-8") from exc


class FuseOps(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    #: No FUSE_POSIX_ACL: bucketfs keeps no ACLs, so the kernel checks modes only and never
    #: asks for an ACL itself; a program's `system.posix_acl_*` get is answered EOPNOTSUPP
    #: (`getxattr` below). With it on, the kernel asked once per inode and kept "no ACL":
    #: a cold `ls -lR` still cost one request per file.
    enable_acl = False

    def __init__(
        self,
        fs: BucketFS,
        on_init: Callable[[], None] | None = None,
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.fs = fs
        fs.namespace.readdir.nameless = nameless.AVAILABLE
        self._on_init = on_init
        #: awaited before each readdir reply: the node bound's backpressure (session.py)
        self._room = room

    def init(self) -> None:
        """The kernel's INIT, answered as soon as this returns (it must not block)."""
        if self._on_init is not None:
            self._on_init()

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        opts = self.fs.opts
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.generation = 0
        # attributes from a listing lack the object's metadata: let the kernel ask again for
        # them, and for the entry too unless its kind is sure (a symlink looks like a file)
        # (with attrs=listing, a listing's attributes are all there is to show)
        final = opts.attrs == "listing"
        attrs.entry_timeout = opts.entry_timeout if node.kind_certain or final else 0
        attrs.attr_timeout = opts.attr_timeout if node.full or final else 0
        attrs.st_mode = node.st_mode
        # an unlinked file still open shows no link, as on a local disk
        attrs.st_nlink = 0 if node.unlinked else 2 if node.st_mode & 0o040000 else 1
        attrs.st_uid = node.uid
        attrs.st_gid = node.gid
        attrs.st_rdev = parse_rdev(node.metadata) if node.kind in (Kind.CHAR, Kind.BLOCK) else 0
        attrs.st_size = node.size
        attrs.st_blksize = 1 << 20
        attrs.st_blocks = (node.size + 511) // 512
        mtime_ns = int(node.mtime * 1e9)
        attrs.st_atime_ns = mtime_ns if node.atime is None else int(node.atime * 1e9)
        attrs.st_mtime_ns = mtime_ns
        attrs.st_ctime_ns = int(max(node.ctime, node.mtime) * 1e9)
        return attrs

    @_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        try:
            return self._attrs(await self.fs.lookup(parent_inode, text))
        except NoEntry:
            # an answer the daemon keeps (a negative entry) the kernel may keep as long: the
            # lookup a `stat` then `open(O_CREAT)` (cp, rsync, tar, an import path probe)
            # sends again is not sent (inode 0: a negative entry with a timeout, fuse(4))
            trusted = self.fs.absent_for(parent_inode, text)
            if trusted <= 0:
                raise
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = 0
            attrs.entry_timeout = trusted
            return attrs

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(await self.fs.getattr(inode))

    @_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime=attr.st_mtime_ns / 1e9 if fields.update_mtime else None,
            size=attr.st_size if fields.update_size else None,
            atime=attr.st_atime_ns / 1e9 if fields.update_atime else None,
        )
        return self._attrs(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.fs.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(await self.fs.readlink(inode))

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.fs.opendir(inode)

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if self._room is not None:
            await self._room()
        entries = await self.fs.readdir(fh, start_id)
        unnamed = nameless.Entries() if nameless.AVAILABLE else None
        reply = pyfuse3.readdir_reply
        for name, node, next_id in itertools.islice(entries, READDIR_MAX_ENTRIES):
            if isinstance(node, Nameless):  # no node: the kernel takes no reference for it
                assert unnamed is not None
                if not reply(token, name.encode("utf-8"), unnamed(node), next_id):
                    break
                continue
            if not reply(token, name.encode("utf-8"), self._attrs(node), next_id):
                break
            if name not in (".", ".."):  # none for these two
                self.fs.remember(node)

    @_errors
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.mkdir(parent_inode, _name(name), mode, ctx.uid, ctx.gid)
        return self._attrs(node)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, _name(name))

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, _name(name))

    @_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.rename(
            parent_inode_old, _name(name_old), parent_inode_new, _name(name_new), flags
        )

    @_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.symlink(
            parent_inode, _name(name), os.fsdecode(target), ctx.uid, ctx.gid
        )
        return self._attrs(node)

    @_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise NotPermitted("hard links cannot exist between objects")

    @_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.mknod(parent_inode, _name(name), mode, rdev, ctx.uid, ctx.gid)
        return self._attrs(node)

    @_errors
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = await self.fs.create(parent_inode, _name(name), mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh), self._attrs(node)

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        size = self.fs.node(inode).size
        fh, keep = await self.fs.open(inode, flags)
        if self.fs.handle(fh).node.size != size:
            # another client changed the object (close-to-open): the kernel would read up to
            # the size it holds; forget it (no writeback cache here, so this cannot block)
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError as exc:
                log.debug("could not invalidate the attributes of inode %d: %s", inode, exc)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # a lent view of the cache's data file: pyfuse3 replies from it as soon as this
        # returns, before any other task runs (`fuse_read_async` in its handlers.pxi takes
        # any buffer, though its stubs say bytes)
        return await self.fs.read(fh, off, size, lend=True)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @_errors
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.fs.fsyncdir()

    @_errors
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        figures = await self.fs.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = figures.bsize
        data.f_frsize = figures.bsize
        data.f_blocks = figures.blocks
        data.f_bfree = figures.bfree
        data.f_bavail = figures.bfree
        data.f_files = figures.files
        data.f_ffree = figures.ffree
        data.f_favail = figures.ffree
        data.f_namemax = figures.namemax
        return data

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # Names outside user.* are never kept (core/xattrs.py), and their namespaces are
            # not supported: EOPNOTSUPP, as setxattr says. `ls -l` asks security.selinux and
            # system.posix_acl_access of every file, every time, unless an answer says
            # "unsupported", which coreutils then remembers for the whole file system
            # (getfilecon_cache, file_has_acl_cache): two requests per `ls -lR`, not two per
            # file. Answered here without the rest of the request's path; still counted
            # (`bucketfs status`) and seen as activity (uploads yield).
            foreground = self.fs.foreground
            foreground.begin("getxattr")
            foreground.end()
            raise pyfuse3.FUSEError(NotSupported.errno)
        return await self._getxattr(inode, name)

    @_errors
    async def _getxattr(self, inode: int, name: bytes) -> bytes:
        return await self.fs.getxattr(inode, _name(name))

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [n.encode() for n in await self.fs.listxattr(inode)]

    @_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.setxattr(inode, _name(name), value)

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, _name(name))
