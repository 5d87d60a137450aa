"""What the store says about a bucket as a whole: `df` figures, and the bucket's settings and
metadata as extended attributes of its top directory.

Owns two things:

- `statfs`: the figures `df` shows, from `Backend.space` (Swift: a container or account HEAD;
  the local store: its index and the disk it lives on; S3: nothing, fixed figures). With a
  quota the total is the quota and free is quota - used; with a real size (local disk) free is
  that size's room; otherwise free is the fixed "plenty" of an object store.
- the attributes of a bucket directory (the top directory of a bucket in a whole-account
  mount, the mount root of a one-bucket mount): `user.K` is the bucket's own metadata
  (`X-Container-Meta-K` on Swift; read-write), `user.bucketfs.versioning` (read-write),
  `region`, `quota_bytes`, `quota_count`, `object_count`, `bytes_used` (read-only). The root
  of a mount of a prefix is a directory like any other (xattrs.py's) but for `versioning`
  and `region`, which are the bucket's.

Invariants: a bucket directory lists (listxattr) nothing, which is what a copy of the directory
carries (xattrs.py says why): the bucket's metadata belongs to the bucket (a `rsync -aX` onto the
mount root would remove what its source lacks, a Swift container's quota included),
`versioning` is a setting of the bucket, `region` and the figures are information; all are read
by name, so a listing asks the store nothing. The root of a whole-account mount lists nothing.
`statfs` never waits on a slow server for more than DF_WAIT seconds: figures older than DF_TTL
are answered at once and refreshed by one background task in the mount's nursery; without
figures yet it waits for that task at most DF_WAIT, then answers the defaults; a failed refresh
keeps the last figures (a failing `df` is worse than an old one). A refusal logs one INFO line
saying why, like xattrs.py's.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import trio

from bucketfs.backends.base import Backend, Space
from bucketfs.core.nodes import ROOT_INO, Node
from bucketfs.errors import (
    BucketfsError,
    InvalidArgument,
    InvalidRequest,
    NoAttribute,
    NotPermitted,
    NotSupported,
)

log = logging.getLogger(__name__)

USER = "user."
NS = "user.bucketfs."
VERSIONING = "versioning"
REGION = "region"
#: read-only figures of a bucket, from `Backend.space` (quota_* only when a quota is set)
FIGURES = ("quota_bytes", "quota_count", "object_count", "bytes_used")
#: seconds df figures are answered without asking the store again
DF_TTL = 10.0
#: the longest `statfs` waits for figures it does not have yet (then: the defaults)
DF_WAIT = 1.0

_KEY_RE = re.compile(r"^[a-z0-9._-]+$")


@dataclass(frozen=True, slots=True)
class StatFs:
    """What statfs(2) answers, in blocks of `bsize` bytes."""

    bsize: int = 4096
    blocks: int = 1 << 38  # 1 PiB in 4 KiB blocks: object stores have no fixed size
    bfree: int = 1 << 38
    files: int = 1 << 32
    ffree: int = 1 << 32
    namemax: int = 255


def statfs_of(space: Space | None) -> StatFs:
    """The df figures of what the store said (None: nothing, the fixed "plenty")."""
    plenty = StatFs()
    if space is None:
        return plenty
    bsize = plenty.bsize
    used = -(-space.bytes_used // bsize)
    if space.quota_bytes is not None:
        quota = -(-space.quota_bytes // bsize)
        blocks, bfree = max(quota, used), max(0, quota - used)
    elif space.free_bytes is not None:
        bfree = space.free_bytes // bsize
        blocks = used + bfree
    else:
        blocks, bfree = plenty.blocks + used, plenty.bfree
    objects = space.object_count
    if space.quota_count is not None:
        files, ffree = max(space.quota_count, objects), max(0, space.quota_count - objects)
    elif space.free_files is not None:
        files, ffree = objects + space.free_files, space.free_files
    else:
        files, ffree = plenty.files + objects, plenty.ffree
    return StatFs(blocks=blocks, bfree=bfree, files=files, ffree=ffree)


def _refuse(exc: BucketfsError, node: Node, name: str, why: str) -> BucketfsError:
    log.info("xattr %s of bucket %s: %s (%s)", name, node.bucket or "/", why, type(exc).__name__)
    return exc.__class__(why)


class StoreInfo:
    """df figures of the mount (cached, refreshed in the background) and the attributes of
    bucket directories."""

    def __init__(self, backend: Backend, *, bucket: str | None) -> None:
        self.backend = backend
        self.bucket = bucket
        self._nursery: trio.Nursery | None = None
        #: what the store said last (None: it has no figures), once `_known`
        self._space: Space | None = None
        self._known = False
        self._asked_at: float | None = None
        self._refreshing: trio.Event | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Refreshes run in `nursery` (the mount's), so none outlives the mount."""
        self._nursery = nursery

    # --- df ----------------------------------------------------------------------------------

    async def statfs(self) -> StatFs:
        """The mount's df figures: the cached ones at once (refreshed in the background when
        older than DF_TTL); without any yet, what one refresh gives within DF_WAIT."""
        now = trio.current_time()
        if self._asked_at is None or now - self._asked_at >= DF_TTL:
            self._asked_at = now
            self._start_refresh()
        if not self._known and self._refreshing is not None:
            with trio.move_on_after(DF_WAIT):
                await self._refreshing.wait()
        return statfs_of(self._space)

    def _start_refresh(self) -> None:
        if self._refreshing is not None:
            return  # one at a time: a slow server gets one request, not one per df
        done = self._refreshing = trio.Event()
        if self._nursery is not None:
            self._nursery.start_soon(self._refresh, done)
        else:  # not running yet (tests that call the core without `run`): nothing to ask
            self._refreshing = None
            done.set()

    async def _refresh(self, done: trio.Event) -> None:
        try:
            space = await self.backend.space(self.bucket)
        except BucketfsError as exc:
            log.debug("df figures of %s unknown: %s", self.bucket or "the account", exc)
        except Exception:  # a bug: the mount's nursery must not die of it; make it loud
            log.exception("df figures of %s", self.bucket or "the account")
        else:
            self._space, self._known = space, True
        finally:
            self._refreshing = None
            done.set()

    # --- attributes of a bucket directory ----------------------------------------------------

    @staticmethod
    def covers(node: Node, name: str | None = None) -> bool:
        """Whether attribute `name` of `node` (None: its list) is answered here: every
        attribute of a bucket directory and of the root of a whole-account mount; on the root
        of a mount of a prefix (an ordinary directory otherwise, its list too) the bucket's
        settings."""
        if node.is_bucket or (node.ino == ROOT_INO and node.bucket is None):
            return True
        return node.ino == ROOT_INO and name in (NS + VERSIONING, NS + REGION)

    async def names(self, node: Node) -> list[str]:
        """What a copy of a bucket directory carries: nothing. Its metadata (Swift's container
        metadata, such as `quota-bytes` that its middleware enforces) is the bucket's, not
        data of the directory's content: listed, `rsync -aX SRC/ /mnt/bucket/` would remove
        every key SRC lacks (a container's quota with it), and `cp -a` of a mount root into
        another bucket's would set them there. `versioning` is a setting, `region` and the
        figures information. All are read and written by name (xattrs.py says why)."""
        return []

    async def value(self, node: Node, name: str) -> str | None:
        """The value of `name` (a user.* name) on a bucket directory; None: it has none."""
        if not name.startswith(NS):
            if node.bucket is None or not node.is_bucket:
                return None
            metadata = await self.backend.bucket_metadata(node.bucket)
            return (metadata or {}).get(name[len(USER) :].lower())
        field = name[len(NS) :]
        if field == VERSIONING and node.bucket is not None:
            return await self.backend.get_versioning(node.bucket)
        if field == REGION:
            return self.backend.region or None
        if field in FIGURES and node.bucket is not None and node.is_bucket:
            figure = _figure(await self.backend.space(node.bucket), field)
            return None if figure is None else str(figure)
        return None

    async def set(self, node: Node, name: str, value: bytes | None) -> None:
        """setxattr (`value`) or removexattr (None) of a bucket directory."""
        if name.startswith(NS):
            field = name[len(NS) :]
            if field == VERSIONING and value is not None and node.bucket is not None:
                await self._set_versioning(node, name, value)
                return
            if field in (VERSIONING, REGION, *FIGURES):
                raise _refuse(NotPermitted(), node, name, "a read-only attribute")
            raise _refuse(NotSupported(), node, name, "a bucket has no object to hold metadata")
        if not name.startswith(USER):
            raise _refuse(NotSupported(), node, name, "only user.* attributes are kept")
        if node.bucket is None or not node.is_bucket:
            raise _refuse(NotSupported(), node, name, "the mount root is not a bucket")
        key = name[len(USER) :].lower()
        if not _KEY_RE.match(key):
            why = "a metadata name is letters, digits, '-', '_' and '.' (an HTTP header token)"
            raise _refuse(InvalidArgument(), node, name, why)
        metadata = await self.backend.bucket_metadata(node.bucket)
        if metadata is None:
            why = (
                "this store keeps no metadata on buckets (S3: bucket tags are not mapped to "
                "xattrs; set them with an S3 tool)"
            )
            raise _refuse(NotSupported(), node, name, why)
        if value is None and key not in metadata:
            raise NoAttribute()
        text = None if value is None else _text(node, name, value)
        try:
            await self.backend.set_bucket_metadata(node.bucket, {key: text})
        except InvalidRequest as exc:
            raise _refuse(InvalidArgument(), node, name, str(exc)) from None
        done = "removed" if text is None else "set"
        log.info("metadata %s of bucket %s %s", key, node.bucket, done)

    async def _set_versioning(self, node: Node, name: str, value: bytes) -> None:
        assert node.bucket is not None
        state = _text(node, name, value).capitalize()
        if state not in ("Enabled", "Suspended"):
            why = "versioning is Enabled or Suspended (it cannot be turned Off again)"
            raise _refuse(InvalidArgument(), node, name, why)
        await self.backend.set_versioning(node.bucket, state == "Enabled")
        log.info("versioning of bucket %s: %s", node.bucket, state)


def _figure(space: Space | None, field: str) -> int | None:
    if space is None:
        return None
    figures = {
        "quota_bytes": space.quota_bytes,
        "quota_count": space.quota_count,
        "object_count": space.object_count,
        "bytes_used": space.bytes_used,
    }
    return figures[field]


def _text(node: Node, name: str, value: bytes) -> str:
    """A value that a header carries as it is: UTF-8, no control characters, no outer blanks."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(InvalidArgument(), node, name, "the value is not UTF-8 text") from None
    if not text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise _refuse(InvalidArgument(), node, name, "an empty value or control characters")
    if text != text.strip(" \t"):
        raise _refuse(InvalidArgument(), node, name, "HTTP drops leading and trailing blanks")
    return text
