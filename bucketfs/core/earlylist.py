"""Listings ahead of a walk: the directory a walk reads next, listed while it reads this one.

Owns `EarlyListings`: the subdirectory names of the directories read lately (`seen`), the
guess of the directory a walk reads after one (`start_next`: its first subdirectory, else the
next sibling of it or of its nearest ancestor that has one, in listing order: the order in
which `ls -R`, `du` and `find` go down a tree),
the listings sent for those guesses, and handing one to that directory's readdir (`take`).
Why: a walk reads directories one after the other, and each readdir waited for its LIST
before its HEADs could start; listed ahead, that LIST overlaps the HEADs of the directory
before (docs/core.md, "Listings ahead of a walk").

Invariants: at most one early listing per directory and `EARLY_MAX` in all; one serves only
the first readdir of its directory within `EARLY_FOR` of being sent, and only if this mount
changed no directory since it was sent (`Listings.generation`); otherwise, or if it failed,
that readdir lists as it would have (a readdir never shows an older listing than it would
have got on its own by more than `EARLY_FOR`, and never one older than a change of ours); a
readdir that finds its listing still in flight waits for it, not for a second one; nothing
is listed ahead without a nursery (before `run`).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable

import trio
from cachetools import LRUCache

from bucketfs.backends.base import Backend
from bucketfs.core.listing import Entry, Listings, list_children
from bucketfs.core.nodes import Kind, Node
from bucketfs.errors import BucketfsError

log = logging.getLogger(__name__)

#: an early listing serves a readdir that comes at most this long after it was sent
EARLY_FOR = 2.0
#: early listings kept at most (a walk uses each within a directory's read)
EARLY_MAX = 8
#: directories whose subdirectory names are kept for the guess
SEEN_MAX = 4096


class _Early:
    __slots__ = ("done", "generation", "listed", "sent")

    def __init__(self, generation: int) -> None:
        self.done = trio.Event()
        self.generation = generation
        self.sent = time.monotonic()
        self.listed: dict[str, Entry] | None = None


class EarlyListings:
    """The next directories of walks, listed ahead (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        listings: Listings,
        nursery: Callable[[], trio.Nursery | None],
    ) -> None:
        self._backend = backend
        self._listings = listings
        self._nursery = nursery
        #: (bucket, directory key) -> its subdirectories' names in listing order
        self._subdirs: LRUCache[tuple[str, str], list[str]] = LRUCache(SEEN_MAX)
        self._early: dict[tuple[str, str], _Early] = {}
        self.sent = 0  # early listings sent (status, tests)
        self.used = 0  # and those a readdir took

    def seen(self, directory: Node, listed: dict[str, Entry]) -> None:
        """A readdir listed `directory`: remember its subdirectories for the guess."""
        if directory.bucket is not None:
            subdirs = [name for name, entry in listed.items() if entry.kind is Kind.DIR]
            self._subdirs[(directory.bucket, directory.key)] = subdirs

    def start_next(self, directory: Node) -> None:
        """A walk reads `directory`: list the one it will read next, if known and not yet."""
        bucket, key = directory.bucket, directory.key
        nursery = self._nursery()
        if bucket is None or nursery is None:
            return
        following = self._following(bucket, key)
        if following is None:
            return
        where = (bucket, following)
        if where in self._early:
            return
        now = time.monotonic()
        for stale in [k for k, e in self._early.items() if now - e.sent > EARLY_FOR]:
            del self._early[stale]
        if len(self._early) >= EARLY_MAX:
            return
        early = self._early[where] = _Early(self._listings.generation)
        self.sent += 1
        nursery.start_soon(self._list, bucket, following, early)

    def _following(self, bucket: str, key: str) -> str | None:
        """The directory a depth-first walk reads after `key`: its first subdirectory, else
        the next sibling of it or of its nearest ancestor that has one (None: not known)."""
        subdirs = self._subdirs.get((bucket, key))
        if subdirs:
            return key + subdirs[0] + "/"
        while key:
            parent, _, name = key[:-1].rpartition("/")
            parent = parent + "/" if parent else ""
            siblings = self._subdirs.get((bucket, parent))
            if siblings is None:
                return None
            index = bisect_right(siblings, name)
            if index < len(siblings):
                return parent + siblings[index] + "/"
            key = parent  # its parent's last: the walk goes on further up
        return None

    async def _list(self, bucket: str, key: str, early: _Early) -> None:
        try:
            early.listed = await list_children(self._backend, bucket, key)
        except BucketfsError as exc:
            log.debug("early listing of %s failed: %s", key, exc)
        except Exception:  # it runs in the mount's nursery: a bug must not end the mount
            log.exception("early listing of %s failed", key)
        finally:
            early.done.set()

    async def take(self, directory: Node) -> dict[str, Entry] | None:
        """The early listing of `directory` if one serves (waited for while in flight);
        None: list it now."""
        if directory.bucket is None:
            return None
        early = self._early.pop((directory.bucket, directory.key), None)
        if early is None:
            return None
        if time.monotonic() - early.sent > EARLY_FOR:
            return None
        await early.done.wait()
        if early.listed is None or early.generation != self._listings.generation:
            return None
        self.used += 1
        return early.listed
