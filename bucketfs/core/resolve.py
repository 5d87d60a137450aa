"""What a name is on the server: the requests a lookup sends when nothing fresh answers it.

Owns `Resolver`, which namespace.py asks once its own caches (nodes, negative entries, pending
uploads and markers) could not answer: a fresh listing of the directory (its own or a
subtree's) where one is held, else the name's HEAD alone if the directory's last listing
(expired) showed it as a file, else one LIST of the directory again (`relist`) when that pays,
else a HEAD of the key beside a one-key LIST of `key/` (is it a directory?).

Why a HEAD may go out beside a relisting: in a tree being read (`stat`, `open`, `tar c` of
names whose directory listing expired) the names asked are files that exist, and a file's
attributes need its HEAD whatever the listing says. Sent one after the other, a `stat` of
1,000 files spread over 100 directories waited two round trips per name (one bench run: 633
LISTs and 1,103 HEADs in sequence, 11.2 s); sent together, one. In a tree being written the
names asked are new (the kernel's lookup before each create), and such a HEAD is a wasted 404.
So the HEAD is sent beside the relisting only while most recent relistings found the name as
a file (`_found`, a moving average over relistings, starting below `GUESS_FILE`): a reader
pays two round trips once, a writer sends no HEAD it does not need.

Why a HEAD alone for a name an expired listing showed as a file (`listing.FileNames`): a `stat`
of 1,000 files spread over 100 directories in no order comes back to each directory after its
listing expired (`dir_timeout`), and sent a LIST of the directory beside each file's HEAD even
so (the bench's shape through a counting proxy: 1,103 HEADs and 742 LISTs, 11.8 MiB down, 16 s;
parsing LISTs of 100 entries was most of the daemon's CPU). The file's HEAD is needed anyway and
says all that changed since the listing, except a prefix of the same name another client made
meanwhile (a key that is both is shown as the directory): that shows at the directory's next
listing, as for a file whose node the mount still holds (namespace.py asks a known file with a
HEAD).

Why a never-listed directory may be listed at its first lookup, in the background: the relisting
at the second lookup goes beside the name's HEAD, but the answer waits for both, and a LIST of
100 entries takes 6-7 ms on SeaweedFS against 1.3 ms for a HEAD (the bench's cold `stat` of 1,000
files in 100 directories: 99 such waits, ~0.5 s of 2.7 s). Once `BESIDE_AFTER` sibling
directories (children of one parent) were relisted by lookups that found the name a file,
within `listing.WINDOW` and while lookups find files (`_found`), the first lookup in another
never-listed sibling starts its listing in the mount's nursery and is answered as before (HEAD
and the one-key LIST of `key/`); the second lookup there waits for that listing if still under
way, and sends the name's HEAD alone. The same requests as before, sent earlier; what it can
cost: a directory of that pattern of which one name only is asked gets a LIST it would not
have had.

A file a fresh listing shows is answered from the HEAD kept for the version listed (same ETag,
size and LastModified: cache/attrstore.py), when one is, instead of a HEAD: `stat` of 30 names
of a directory after a remount sent 30 HEADs, now the first two lookups' (session 20).

Invariants: a directory wins over a file of the same name (within what the listings this mount
last made say, see above); a name whose HEAD found nothing is asked as if never listed, with no
second HEAD; a listing made for lookups only (`Listings.implicit`) answers only for the names it
holds; a name a listing shows absent but whose HEAD, sent at the same time, found it is a file
(the HEAD may be the later answer); `-o attrs=listing` never reads a directory's marker nor
HEADs a listed file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from cachetools import LRUCache

from bucketfs.backends.base import Backend
from bucketfs.concurrency import gather
from bucketfs.core import listing
from bucketfs.core.attrs import object_kind
from bucketfs.core.heads import Heads
from bucketfs.core.listing import (
    Entry,
    FileNames,
    Listings,
    Subtrees,
    held_listing,
    list_children,
)
from bucketfs.core.nodes import InodeTable, Kind, Node
from bucketfs.errors import BucketfsError, BucketNotFound
from bucketfs.types import ObjectInfo

#: a directory whose last listing had at most this many entries is listed again for lookups
RELIST_ENTRIES = 1000
#: a name's HEAD goes beside the relisting of its directory while `_found` is at least this
GUESS_FILE = 0.5
#: the weight of the newest relisting in `_found`, and where it starts (below `GUESS_FILE`:
#: one relisting that found a file is needed before any guess)
FOUND_WEIGHT = 0.25
FOUND_START = 0.4
#: a never-listed directory is listed at its first lookup (in the background) once this many
#: of its siblings were relisted within `listing.WINDOW` (see the module docstring)
BESIDE_AFTER = 3

log = logging.getLogger(__name__)


class Resolver:
    """The server's answer about one name (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        table: InodeTable,
        listings: Listings,
        subtrees: Subtrees,
        heads: Heads,
        *,
        listing_attrs: bool,
    ) -> None:
        self.backend = backend
        self.table = table
        self.listings = listings
        self.subtrees = subtrees
        self.heads = heads
        self.listing_attrs = listing_attrs
        #: the names expired listings showed as files (listing.py)
        self.file_names = FileNames()
        #: how often relistings lately found the name asked about as a file (see above)
        self._found = FOUND_START
        #: where listings at a first lookup run (set once the mount runs; None: not done)
        self.nursery: trio.Nursery | None = None
        #: such listings under way, by directory
        self._pending: dict[int, trio.Event] = {}
        #: by parent directory: when lookups relisted its children lately and found files
        self._relisted_in: LRUCache[int, list[float]] = LRUCache(maxsize=1024)
        self.listed_early = 0  # listings started at a first lookup (tests, status)
        #: what a HEAD of the very version a listing shows said, if kept (the namespace sets
        #: it: cache/attrstore.py through FileData); never a request
        self.kept: Callable[[str, str, str, int, float], ObjectInfo | None] | None = None

    def _kept(self, bucket: str, key: str, entry: Entry) -> ObjectInfo | None:
        """The kept HEAD of the object as `entry` (a fresh listing's) shows it: `stat` of the
        names of a listed directory after a remount sends no HEAD for unchanged objects."""
        info = entry.info
        if self.kept is None or info is None or not info.etag:
            return None
        return self.kept(bucket, key, info.etag, info.size, info.last_modified)

    def file_entry(self, info: ObjectInfo) -> Entry:
        kind = Kind.FILE if self.listing_attrs else object_kind(info.metadata)
        return Entry(kind, info, head=True)

    async def resolve(
        self, parent: Node, name: str, *, marker: bool = True, exact: bool = False
    ) -> Entry | None:
        """What `name` in `parent` is on the server. A directory's marker is read only if
        `marker` (else its entry has no info), never with attrs=listing; nor is a file listed
        there HEADed then."""
        if parent.bucket is None:
            try:
                await self.backend.head_bucket(name)
            except BucketNotFound:
                return None
            return Entry(Kind.DIR, None)
        bucket, key = parent.bucket, parent.key + name
        head: ObjectInfo | None = None
        headed = False
        pending = self._pending.get(parent.ino)
        if pending is not None:  # its listing, started at an earlier lookup, is under way
            await pending.wait()
        listed = held_listing(self.listings, self.subtrees, parent.ino, bucket, parent.key)
        asking = marker and not self.listing_attrs  # a file's HEAD may be sent
        if listed is None and asking and self.file_names.was_file(bucket, parent.key, name):
            # the directory's last listing showed a file: whether it still is one is its HEAD
            head = await self.heads.head_or_none(bucket, key)
            if head is not None:
                return self.file_entry(head)
            headed = True  # gone: asked again as if never listed
        if listed is None and self.listings.worth_listing(parent.ino, RELIST_ENTRIES):
            if asking and not headed and self._found >= GUESS_FILE:

                async def do_relist() -> None:
                    nonlocal listed
                    listed = await self.relist(parent, subtree=not exact)

                async def do_head() -> None:
                    nonlocal head
                    head = await self.heads.head_or_none(bucket, key)

                await gather(do_relist, do_head)
                headed = True
            else:
                listed = await self.relist(parent, subtree=not exact)
            if listed is not None:
                hit = (entry := listed.get(name)) is not None and entry.kind is Kind.FILE
                self._found = (1 - FOUND_WEIGHT) * self._found + FOUND_WEIGHT * hit
                if hit:
                    self._relisted_for_file(parent)
        elif listed is None and asking and not headed and not exact:
            self._list_early(parent)
        if listed is not None and (name in listed or not self.listings.implicit(parent.ino)):
            entry = listed.get(name)
            if entry is None:
                if head is None and log.isEnabledFor(logging.DEBUG):
                    self._log_absent(parent, name, listed)
                return self.file_entry(head) if head is not None else None
            if entry.kind is Kind.DIR:
                if not marker or self.listing_attrs:
                    return entry
                return Entry(Kind.DIR, await self.heads.head_or_none(bucket, key + "/"), head=True)
            if self.listing_attrs and entry.info is not None:
                return entry  # its attributes are all there is to show: no HEAD
            if not headed:
                head = self._kept(bucket, key, entry) or await self.heads.head_or_none(bucket, key)
            return None if head is None else self.file_entry(head)
        return await self._ask(bucket, key, marker=marker, head=head, headed=headed)

    def _relisted_for_file(self, directory: Node) -> None:
        """A lookup relisted `directory` and found the name it asked about a file."""
        now = time.monotonic()
        times = self._relisted_in.get(directory.parent)
        if times is None:
            times = self._relisted_in[directory.parent] = []
        times[:] = [t for t in times[-2 * BESIDE_AFTER :] if now - t < listing.WINDOW]
        times.append(now)

    def _list_early(self, directory: Node) -> None:
        """A first lookup in a never-listed directory: list it now, in the background, when
        its siblings were relisted lately while lookups found files (module docstring)."""
        if self.nursery is None or self._found < GUESS_FILE or directory.ino in self._pending:
            return
        if self.listings.size(directory.ino) is not None:
            return  # listed before: the next lookup relists it if it fits (worth_listing)
        now = time.monotonic()
        times = self._relisted_in.get(directory.parent)
        if times is None or sum(now - t < listing.WINDOW for t in times) < BESIDE_AFTER:
            return
        self.listings.for_lookups(directory.ino)
        done = self._pending[directory.ino] = trio.Event()
        self.listed_early += 1
        self.nursery.start_soon(self._relist_early, directory, done)

    async def _relist_early(self, directory: Node, done: trio.Event) -> None:
        try:
            await self.relist(directory)
        except BucketfsError as exc:  # the next lookup there asks as if it never started
            log.debug("listing %s at its first lookup failed: %s", directory.key, exc)
        except Exception:  # it runs in the mount's nursery: a bug must not end the mount
            log.exception("listing %s at its first lookup failed", directory.key)
        finally:
            del self._pending[directory.ino]
            done.set()

    def _log_absent(self, parent: Node, name: str, listed: dict[str, Entry]) -> None:
        """Which listing said `name` is absent, and how old it is (debugging lost names)."""
        assert parent.bucket is not None
        own = self.listings.get(parent.ino) is listed
        made = (
            self.listings.made(parent.ino) if own else self.subtrees.made(parent.bucket, parent.key)
        )
        age = time.monotonic() - made if made is not None else -1.0
        which = "own" if own else "subtree"
        log.debug("%s%s absent from the %s listing (%.3fs old)", parent.key, name, which, age)

    async def _ask(
        self, bucket: str, key: str, *, marker: bool, head: ObjectInfo | None, headed: bool
    ) -> Entry | None:
        """No listing answers: a HEAD of the key (unless `headed` already) and whether `key/`
        holds anything, together unless a known directory (`marker` False) is asked about."""
        is_dir = False

        async def do_head() -> None:
            nonlocal head
            if not headed:
                head = await self.heads.head_or_none(bucket, key)

        async def do_list() -> None:
            nonlocal is_dir
            page = await self.backend.list_page(bucket, key + "/", delimiter="/", max_keys=1)
            is_dir = bool(page.objects or page.prefixes)

        if marker:
            await gather(do_head, do_list)
        else:  # a known directory: a HEAD only if it is no longer one
            await do_list()
            if is_dir:
                return Entry(Kind.DIR, None)
            await do_head()
        if is_dir:
            info = None if self.listing_attrs else await self.heads.head_or_none(bucket, key + "/")
            return Entry(Kind.DIR, info, head=True)
        return None if head is None else self.file_entry(head)

    async def relist(self, directory: Node, *, subtree: bool = True) -> dict[str, Entry] | None:
        """List a small directory again (one page) for lookups after its listing expired:
        a loop creating files there then costs one LIST per `dir_timeout`, not two requests
        per name; when directories near it needed that too, list an ancestor's whole subtree
        instead (listing.py). None if it no longer fits one page or this mount changed
        something while the listing was made (the listing could lack that change)."""
        assert directory.bucket is not None
        bucket = directory.bucket
        ancestor = None
        if subtree:
            # not an ancestor that listings already show too large (the bench's tree of
            # 10,000 keys in 100 directories: 3 pages of the root's and of tree/'s wasted)
            most = listing.PAGES * listing.PAGE_KEYS
            above = self.table.ancestor_keys(directory)
            fits = []
            for above_key in above[: listing.LEVELS]:
                if self.subtrees.too_big(bucket, above_key):
                    break
                keys = self.file_names.estimate(bucket, above_key)
                if keys > most:
                    self.subtrees.seen_too_big(bucket, above_key)
                    break
                fits.append((above_key, keys))
            ancestor = self.subtrees.ancestor_to_list(bucket, directory.key, fits)
        below = None
        if ancestor is not None:
            below = await self.subtrees.refresh(self.backend, bucket, ancestor)
        if below is not None:
            for key, entries in below.items():
                self.file_names.listed(bucket, key, entries)
            return self.subtrees.get(bucket, directory.key)  # empty if not shown
        changes = self.listings.changes(directory.ino)
        listed = await list_children(self.backend, bucket, directory.key, max_pages=1)
        if listed is not None:
            self.file_names.listed(bucket, directory.key, listed)
        return listed if self.listings.keep(directory.ino, listed, changes) else None
