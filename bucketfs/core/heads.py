"""HEADs of objects as the namespace sends them: reused by the next `open`, and handed on to
be kept across mounts.

Owns which HEAD was sent when (`_sent`): a HEAD that found a key serves the next `open` of it
within `OPEN_REUSES_HEAD`, and one open at most (`headed_just_now` takes it). Every answer is
also offered to `kept` (cache/attrstore.py through `FileData.attrs`: it keeps those the server
answered long enough after LastModified).

Invariant: a HEAD that found nothing forgets any earlier one of the same key, so an `open`
never reuses a HEAD older than the last answer about that key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cachetools import TTLCache

from bucketfs.core.nodes import Node
from bucketfs.errors import NotFound
from bucketfs.types import ObjectInfo

if TYPE_CHECKING:
    from bucketfs.cache.deletes import DeferredDeletes

#: `open` reuses a HEAD of the same key sent at most this long before it instead of sending
#: another: the kernel looks a name up (one HEAD) right before it opens it, within one
#: syscall. A HEAD serves one `open` at most, so two opens never share one.
OPEN_REUSES_HEAD = 0.01


class Heads:
    def __init__(self, backend: DeferredDeletes) -> None:
        self.backend = backend
        #: when the last HEAD that found each key was sent, and the ETag it saw
        self._sent: TTLCache[tuple[str, str], tuple[float, str]] = TTLCache(
            maxsize=4096, ttl=OPEN_REUSES_HEAD
        )
        #: told of every answer (bucket, info); set once the cache is there
        self.kept: Callable[[str, ObjectInfo], None] = lambda _bucket, _info: None

    async def head_or_none(
        self, bucket: str, key: str, *, reusable: bool = True
    ) -> ObjectInfo | None:
        """The object's metadata, or None; a HEAD that found it may serve the next `open`
        (OPEN_REUSES_HEAD) unless not `reusable`."""
        sent = time.monotonic()
        try:
            info = await self.backend.head(bucket, key)
        except NotFound:
            self._sent.pop((bucket, key), None)
            return None
        if reusable:
            self._sent[(bucket, key)] = (sent, info.etag)
        if info.key == key:
            self.kept(bucket, info)  # for later listings, in this mount and later ones
        return info

    def headed_just_now(self, node: Node) -> bool:
        """Whether a HEAD of `node`'s key was sent within OPEN_REUSES_HEAD and applied (and
        no other open used it)."""
        assert node.bucket is not None
        head = self._sent.pop((node.bucket, node.key), None)
        return (
            head is not None
            and node.full
            and node.etag == head[1]
            and time.monotonic() - head[0] <= OPEN_REUSES_HEAD
        )
