"""The control channel: extended attributes on the mount itself that ask the daemon about its
state or tell it to upload now.

Owns the names of those attributes, the one list both sides read: the daemon answers them
(`Control` here, called by `fs.BucketFS`), the `bucketfs status`/`flush`/`unmount` commands
(`app/client.py`, `app/cli.py`) ask them. Also owns the daemon's answers: the pid, the `status`
report, a file's upload state, and `sync_path` (the flush attribute, and a directory's rename).
Every other attribute is passed on to xattrs.py (object metadata).

Invariants: a control attribute is never stored on an object, nor listed (listxattr lists what
a copy carries, xattrs.py: `rsync -X` would try to remove it, `cp -a` copy it); it is read-only
except `XATTR_FLUSH`, which only uploads; setting `XATTR_FLUSH` returns only once the file, or
everything below the directory (the markers of directories made there included), and every
delete queued before it, is on the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bucketfs.core.nodes import ROOT_INO, Kind
from bucketfs.errors import NotPermitted

if TYPE_CHECKING:  # types only: the status/flush client imports the names above, not the core
    from bucketfs.core.namespace import Namespace
    from bucketfs.core.xattrs import Xattrs

#: on the root: the daemon's process id (decimal)
XATTR_PID = "user.bucketfs.pid"
#: on the root: a JSON report of the mount (`bucketfs status`)
XATTR_STATUS = "user.bucketfs.status"
#: set on a file or directory: returns once everything below it is on the server
XATTR_FLUSH = "user.bucketfs.flush"
#: on a file: where its data is ("clean", "dirty", "uploading", ...)
XATTR_UPLOAD_STATE = "user.bucketfs.upload_state"

#: the control attributes, which no object's metadata may hold
CONTROL_XATTRS = frozenset({XATTR_PID, XATTR_STATUS, XATTR_FLUSH, XATTR_UPLOAD_STATE})


async def sync_path(namespace: Namespace, ino: int) -> None:
    """`bucketfs flush PATH`: upload a file, or everything under a directory, now."""
    node = namespace.node(ino)
    if node.kind is not Kind.DIR:
        await namespace.data.flush(node)
        return
    await namespace.backend.flush()  # unlinks first: what `flush` returns for is the server
    await namespace.markers.flush(node.bucket, node.key)  # the directory's own marker too
    await namespace.data.flush_under(node.bucket, node.key)


class Control:
    def __init__(
        self, namespace: Namespace, xattrs: Xattrs, cache_dir: Path, requests: Mapping[str, int]
    ) -> None:
        self._ns = namespace
        self._xattrs = xattrs
        self._cache_dir = cache_dir
        self._requests = requests

    def status(self) -> dict[str, object]:
        """What `bucketfs status` prints: where the data is."""
        data = self._ns.data.report()
        markers = self._ns.markers
        return {
            "dirty_files": data["dirty_files"],
            "dirty_bytes": data["dirty_bytes"],
            "dirty": data["dirty"],
            "uploading": data["uploading"],
            "deletes_queued": self._ns.backend.queued,
            # mkdir's markers not on the server yet (cache/markers.py); failing ones in `failed`
            "markers_queued": markers.queued,
            "failed": {**data["failed"], **markers.failed()},  # type: ignore[dict-item]
            "uploads": data["uploads"],
            "uploaded_bytes": data["uploaded_bytes"],
            "upload_rate": data["upload_rate"],
            "last_errors": data["last_errors"],
            # parts of large new files sent while written (cache/early.py; JSON only)
            "early_parts": data["early_parts"],
            "cache_dir": str(self._cache_dir),
            "cache_bytes": data["cache_bytes"],
            "cache_size": data["cache_size"],
            "hit_ratio": data["hit_ratio"],
            "subtree_listings": self._ns.subtrees.listed,  # listing.py (JSON only)
            # kernel requests answered, by operation (JSON only; FORGET has no answer)
            "kernel_requests": dict(self._requests),
            # what memory holds per file (JSON only): bounded by what is open and cached
            "nodes": len(self._ns.table),
            "nodes_peak": self._ns.table.peak,
            # lookups of names shown without a node answered by a prefetch HEAD (JSON only)
            "prefetched_names": self._ns.prefetch.taken,
            # listed files readdir showed with a kept HEAD's attributes (readdir.py; JSON only)
            "kept_nodes": self._ns.readdir.kept_nodes,
            # listed files readdir showed with a prefetch HEAD's attributes (readdir.py `ahead`)
            "found_nodes": self._ns.readdir.found_nodes,
            "early_listings": self._ns.readdir.early.sent,
            "early_listings_used": self._ns.readdir.early.used,
            "cached_files": data["cached_files"],
            "open_data_files": data["open_data_files"],
        }

    async def getxattr(self, ino: int, name: str) -> bytes:
        node = self._ns.node(ino)
        if ino == ROOT_INO and name == XATTR_PID:
            return str(os.getpid()).encode()
        if ino == ROOT_INO and name == XATTR_STATUS:
            return json.dumps(self.status(), indent=1).encode()
        if name == XATTR_UPLOAD_STATE and node.kind is not Kind.DIR and node.virtual is None:
            return self._ns.data.upload_state(node).encode()
        # hook: object metadata and fields (xattrs.py), with the object's metadata known
        return await self._xattrs.get(node, name)

    async def listxattr(self, ino: int) -> list[str]:
        # the control attributes are answered by name only: a copy must not carry them
        node = await self._ns.getattr(ino)
        return await self._xattrs.names(node)  # hook: xattrs.py

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        node = self._ns.node(ino)
        if name == XATTR_FLUSH:
            # `bucketfs flush`: returns once the file (or everything below the directory) is
            # on the server; the kernel waits for our answer
            await sync_path(self._ns, node.ino)
            return
        if name in CONTROL_XATTRS:  # all read-only but XATTR_FLUSH, handled above
            raise NotPermitted(f"{name} is read-only")
        await self._xattrs.set(node, name, value)  # hook: xattrs.py

    async def removexattr(self, ino: int, name: str) -> None:
        if name in CONTROL_XATTRS:
            raise NotPermitted(f"{name} is read-only")
        await self._xattrs.remove(self._ns.node(ino), name)  # hook: xattrs.py
