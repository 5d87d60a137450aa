"""Object metadata as extended attributes.

Owns the mapping between xattr names and what an object carries:

- `user.K`: user metadata key `K` (`x-amz-meta-K` on S3, `X-Object-Meta-K` on Swift). Names are
  case-insensitive like HTTP header names and listed in lower case. The POSIX keys kept in
  metadata (`mode`, `uid`, `gid`, `mtime`: what `stat` shows) and keys under `bucketfs.` are
  not xattrs.
- `user.bucketfs.F`: the object's own fields. Read-only: `etag`, `version_id`,
  `last_modified`, `storage_class`, `size` (and on version files `is_latest`,
  `delete_marker`); read-write: `content_type`, `cache_control`, `content_encoding`,
  `content_disposition`, `content_language`, `expires` (removing `content_type` goes back to
  the type guessed from the name, and succeeds, with no request, when it is that already;
  getxattr always answers one); computed: `url` (a presigned URL, never logged).
- on the mount root and bucket directories: what storeinfo.py answers (the bucket's own
  metadata as `user.K`, `versioning`, `region`, quota and usage figures).
- `user.bucketfs.delete_at` (files, stores with `Backend.expiry`: Swift's `X-Delete-At`):
  when the store deletes the object, ISO 8601 UTC; set as an ISO 8601 instant (an HTTP date
  works too) or `+SECONDS` from now, only in the future; removing it cancels the deletion.
  Carried as `system["delete_at"]` (`ObjectInfo.system`), so it travels with every write of
  the object's metadata like the headers above. Not `expires`: that is the HTTP `Expires`
  header, and reading a cache header as a deletion time would lose data.
- `user.bucketfs.upload_url` (a file) and `user.bucketfs.upload_url.NAME` (a directory, a
  bucket's too, asked before storeinfo.py: for its entry NAME, existing or not): a URL that
  plain HTTP PUT uploads the object's content to (`Backend.presign_upload`), valid for
  `url_ttl`; like `url` never listed, never logged, and refused on a read-only mount.
- `user.bucketfs.checksum.ALG` (read-only, clean files and versions): the checksums the store
  kept (`Backend.head_checksums`: S3's `x-amz-checksum-*`, Swift's MD5 ETag), hex; read by
  name only (one HEAD per ETag), ENODATA when the store kept none.

The mount's control attributes (`pid`, `status`, `flush`, `upload_state`) are `control.py`'s.

Listing (listxattr, `getfattr -d`) gives what a copy of the node carries and nothing else:
`user.K` and the writable fields when set (`content_type` when it is not the type guessed from
the name, which the copy's name gives again where it is copied in: so a second `rsync -aX` of
files without a type has nothing to do; `delete_at` on files); on a version under `.versions/`
its user metadata and fields, `content_type` always (read-only there, but what `cp -a` of an
old version out should keep: a version file's name says nothing of its type); on a
bucket directory nothing (its metadata is the bucket's: storeinfo.py); on links and special files
nothing (the kernel keeps user.* off them). Every other field (read-only ones, checksums, `url`,
`upload_url`, `versioning`, `region`, the figures, the control attributes) is answered by name
only. Why: `rsync -X` removes from its copy every listed name the source lacks, and `cp -a`,
`tar --xattrs` and `getfattr -d`/`--restore` copy every listed name, so a listed read-only
field fails a copy in (EPERM) and goes stale on a copy out; kernel file systems do not list
virtual attributes either (Ceph dropped them from listxattr for the same reason). Listing asks
the server nothing but a version's HEAD.

Invariants: a change is validated completely before anything is sent; it reaches the server
through `persist` (`Mutations.persist_attrs`: copy in place with the metadata replaced for a
clean file, the pending upload for a dirty one, a marker PUT for a directory) and, if that
fails, the node is left as it was; every refusal logs one INFO line that says why (a missing
attribute only at DEBUG: the kernel and `ls` ask for `security.*` names all the time). Names
outside `user.*` are EOPNOTSUPP, read or written, logged at DEBUG only (`cp -a` sets an ACL on
every file): their namespaces are not kept.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bucketfs.backends.base import Backend
from bucketfs.core.attrs import POSIX_KEYS, check_new_name
from bucketfs.core.contents import guessed_type, write_options
from bucketfs.core.nodes import Kind, Node, VKind
from bucketfs.core.storeinfo import StoreInfo
from bucketfs.core.versions import NULL_VERSION, get_args, iso, millis
from bucketfs.errors import (
    BucketfsError,
    InvalidArgument,
    MetadataTooLarge,
    NoAttribute,
    NotPermitted,
    NotSupported,
    ReadOnly,
)
from bucketfs.types import SYSTEM_HEADERS, ObjectInfo

log = logging.getLogger(__name__)

USER = "user."
NS = "user.bucketfs."
READ_ONLY = ("etag", "version_id", "last_modified", "storage_class", "size")
READ_WRITE = SYSTEM_HEADERS  # content_type, cache_control, content_encoding, ...
VERSION_FIELDS = ("is_latest", "delete_marker")
URL = "url"
UPLOAD_URL = "upload_url"
DELETE_AT = "delete_at"
CHECKSUM = "checksum."
VERSIONING = "versioning"
REGION = "region"
#: the default lifetime of a presigned URL (-o url_ttl=)
URL_TTL = 3600

_KEY_RE = re.compile(r"^[a-z0-9._-]+$")
_SECONDS_RE = re.compile(r"^\+[0-9]{1,10}$")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE_RE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;.*)?$")


@dataclass(frozen=True, slots=True)
class Change:
    """What a node's metadata becomes after one setxattr or removexattr."""

    metadata: dict[str, str]
    content_type: str | None
    system: dict[str, str]


Persist = Callable[[Node], Awaitable[None]]
Flush = Callable[[int], Awaitable[None]]
Refresh = Callable[[int], Awaitable[Node]]
#: send the pending markers (mkdir's, cache/markers.py) of a directory and those under it
SendMarkers = Callable[[str, str], Awaitable[None]]


def _refuse(exc: BucketfsError, node: Node, name: str, why: str) -> BucketfsError:
    log.info("xattr %s of %s: %s (%s)", name, node.key or "/", why, exc.__class__.__name__)
    return exc.__class__(why)


def _unsupported(node: Node, name: str) -> NotSupported:
    """A name outside user.*: its namespace is not kept. Expected all the time (`ls -l` reads
    security.selinux, `cp -a` sets an ACL on every file): logged at DEBUG only."""
    log.debug("xattr %s of %s: only user.* attributes are kept", name, node.key or "/")
    return NotSupported("only user.* attributes are kept")


def _own_type(node: Node) -> bool:
    """Whether `node` has a Content-Type other than the one guessed from its name."""
    guessed = guessed_type(node)
    return (node.content_type or guessed) != guessed


def _text(node: Node, name: str, value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(InvalidArgument(), node, name, "the value is not UTF-8 text") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise _refuse(InvalidArgument(), node, name, "control characters cannot be sent")
    if text != text.strip(" \t"):
        raise _refuse(InvalidArgument(), node, name, "HTTP drops leading and trailing blanks")
    return text


def _header_value(node: Node, field: str, name: str, value: bytes) -> str:
    """A system header's value, validated (and `expires` normalised to an HTTP date)."""
    text = _text(node, name, value)
    if not text or not text.isascii():
        raise _refuse(InvalidArgument(), node, name, "a header value must be non-empty ASCII")
    if field == "content_type" and not _MEDIA_TYPE_RE.match(text):
        raise _refuse(InvalidArgument(), node, name, f"{text!r} is not a media type (a/b)")
    if field == "expires":
        when = _parse_date(text)
        if when is None:
            raise _refuse(InvalidArgument(), node, name, "not an HTTP date or ISO-8601 instant")
        text = email.utils.format_datetime(when, usegmt=True)
    return text


def _parse_date(text: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _checksum(info: ObjectInfo | None, field: str) -> str | None:
    """`checksum.ALG` of the object the HEAD `info` describes, if the store kept it."""
    return info.checksums.get(field[len(CHECKSUM) :]) if info is not None else None


def metadata_bytes(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def user_keys(metadata: dict[str, str]) -> list[str]:
    """The metadata keys shown as `user.K`: not the POSIX ones, not `bucketfs.*`."""
    return sorted(
        k for k in metadata if k.lower() not in POSIX_KEYS and not k.lower().startswith("bucketfs.")
    )


class Xattrs:
    """getxattr/listxattr/setxattr/removexattr of files and directories (not the control
    attributes of control.py)."""

    def __init__(
        self,
        backend: Backend,
        *,
        url_ttl: int,
        persist: Persist,
        flush: Flush,
        refresh: Refresh,
        send_markers: SendMarkers,
        read_only: bool,
        store: StoreInfo,
    ) -> None:
        self.backend = backend
        self.store = store
        self._send_markers = send_markers
        self.url_ttl = url_ttl
        self._persist = persist
        self._refresh = refresh
        self._flush = flush
        self._read_only = read_only

    # --- reading -----------------------------------------------------------------------------

    async def names(self, node: Node) -> list[str]:
        """The attributes a copy of `node` carries (listxattr): its user metadata and the object
        fields that can be written, when set (`content_type` when not the guessed one).
        Read-only fields (`etag`, `size`, checksums, ...) and `url`/`upload_url` are never
        listed, only answered by name: `rsync -X` removes what it lists and the source lacks,
        and `cp -a`, `tar --xattrs` and `getfattr -d` copy every listed name, so a listed
        read-only field fails the copy in (EPERM) and goes stale in the copy out. A version's
        metadata needs one HEAD (also for its user metadata); a bucket directory lists nothing
        (storeinfo.py); nothing else asks the server."""
        v = node.virtual
        if v is not None:
            if v.kind is not VKind.VERSION or v.version is None or v.version.is_delete_marker:
                return []
            # what a copy of an old version (`cp -a` out of .versions/) carries; read-only here
            await self._head_version(node)
        if self.store.covers(node):  # hook: a bucket's attributes (storeinfo.py)
            return await self.store.names(node)
        if node.kind not in (Kind.FILE, Kind.DIR):
            return []  # the kernel keeps user.* off links and special files: none could be read
        names = [USER + k for k in user_keys(dict(node.metadata))]
        if node.kind is Kind.DIR and not node.has_marker:
            return names
        # a version file's name says nothing of its type (what HEAD said is listed); elsewhere
        # the guess is made again from the name of the copy, where it is copied in
        own_type = node.content_type is not None if v is not None else _own_type(node)
        fields = [*(["content_type"] if own_type else []), *self._system(node)]
        if v is None and node.kind is not Kind.DIR and DELETE_AT in node.system:
            fields.append(DELETE_AT)
        return names + [NS + f for f in fields]

    @staticmethod
    def _system(node: Node) -> list[str]:
        return [f for f in READ_WRITE if f != "content_type" and f in node.system]

    async def get(self, node: Node, name: str) -> bytes:
        if not name.startswith(USER):
            # security.*, trusted.*, system.* (ACLs): "unsupported" (which `ls` remembers for
            # the whole file system), not "no such attribute"
            raise _unsupported(node, name)
        node = await self._refresh(node.ino)
        value = await self._value(node, name)
        if value is None:
            log.debug("xattr %s of %s: no such attribute", name, node.key or "/")
            raise NoAttribute()
        return value.encode()

    async def _value(self, node: Node, name: str) -> str | None:
        if not name.startswith(USER):
            return None
        if name.startswith(NS + UPLOAD_URL):  # per object, also of a bucket directory's entries
            field = name[len(NS) :]
            if field == UPLOAD_URL or field.startswith(UPLOAD_URL + "."):
                return self._upload_url(node, name, field[len(UPLOAD_URL) + 1 :])
        if self.store.covers(node, name):  # hook: a bucket's attributes (storeinfo.py)
            return await self.store.value(node, name)
        if not name.startswith(NS):
            if node.virtual is not None and node.virtual.version is not None:
                await self._head_version(node)
            key = name[len(USER) :].lower()
            if key in POSIX_KEYS or key.startswith("bucketfs."):
                return None
            return node.metadata.get(key)
        field = name[len(NS) :]
        if field == URL:
            return await self._url(node, name)
        if node.virtual is not None:
            return await self._version_value(node, field)
        if field in READ_WRITE:
            if node.kind is Kind.DIR and not node.has_marker:
                return None
            if field == "content_type":
                return node.content_type or guessed_type(node)
            return node.system.get(field)
        if node.kind is Kind.DIR:
            return None
        if field == "size":
            return str(node.size)
        if field == DELETE_AT:
            return node.system.get(DELETE_AT)
        if node.etag is None:
            return None
        if field.startswith(CHECKSUM):
            return None if node.dirty else _checksum(await self._head(node), field)
        if field == "etag":
            return node.etag
        if field == "version_id":
            return node.version_id
        if field in ("last_modified", "storage_class"):
            info = await self._head(node)
            if info is None:
                return None
            if field == "last_modified":
                return iso(millis(info.last_modified))
            return info.storage_class or "STANDARD"
        return None

    async def _version_value(self, node: Node, field: str) -> str | None:
        v = node.virtual
        if v is None or v.version is None:
            return None
        info = v.version
        simple = {
            "etag": info.etag or None,
            "version_id": info.version_id or NULL_VERSION,
            "last_modified": iso(millis(info.last_modified)),
            "storage_class": info.storage_class or "STANDARD",
            "size": str(info.size),
            "is_latest": str(info.is_latest).lower(),
            "delete_marker": str(info.is_delete_marker).lower(),
        }
        if field in simple:
            return simple[field]
        if field.startswith(CHECKSUM) and not info.is_delete_marker:
            await self._head_version(node)
            return _checksum(node.head_info, field)
        if field in READ_WRITE and not info.is_delete_marker:
            await self._head_version(node)
            if field == "content_type":
                return node.content_type
            return node.system.get(field)
        return None

    async def _head(self, node: Node) -> ObjectInfo | None:
        """The object as the server has it, asked once per ETag."""
        if node.head_info is None or node.head_info.etag != node.etag:
            if node.bucket is None or node.etag is None:
                return None
            node.head_info = await self.backend.head_checksums(node.bucket, node.key)
        return node.head_info

    async def _head_version(self, node: Node) -> None:
        """A version's metadata (a version listing carries none), asked once."""
        v = node.virtual
        if v is None or v.version is None or node.head_info is not None:
            return
        if v.version.is_delete_marker:
            node.head_info = v.version
            return
        version_id, _ = get_args(v.version)
        info = await self.backend.head_checksums(v.bucket, v.path, version_id=version_id)
        node.head_info = info
        node.metadata = dict(info.metadata)
        node.content_type = info.content_type
        node.system = dict(info.system)

    async def _url(self, node: Node, name: str) -> str | None:
        """A presigned GET of the file (of that version under `.versions/`). Never logged."""
        if node.kind is not Kind.FILE or node.bucket is None:
            return None
        v = node.virtual
        if v is not None:
            if v.version is None or v.version.is_delete_marker:
                return None
            version_id, _ = get_args(v.version)
            key = v.path
        else:
            if node.dirty or node.etag is None:
                await self._flush(node.ino)  # the URL serves what was written
            version_id, key = None, node.key
        try:
            return self.backend.presign(node.bucket, key, self.url_ttl, version_id=version_id)
        except NotSupported:
            raise _refuse(NotSupported(), node, name, "this store has no URLs") from None

    def _upload_url(self, node: Node, name: str, entry: str) -> str | None:
        """A presigned PUT of the file (`entry` ""), or of the directory's entry `entry`.
        Never logged."""
        if node.virtual is not None or node.bucket is None:
            return None
        if entry:
            if node.kind is not Kind.DIR:
                return None
            try:
                check_new_name(entry)
            except BucketfsError as exc:
                raise _refuse(InvalidArgument(), node, name, f"not a file name: {exc}") from None
            key = node.key + entry
        elif node.kind is Kind.FILE:
            key = node.key
        else:
            return None
        if self._read_only:
            raise _refuse(ReadOnly(), node, name, "the mount is read-only")
        try:
            return self.backend.presign_upload(node.bucket, key, self.url_ttl)
        except NotSupported:
            raise _refuse(NotSupported(), node, name, "this store has no upload URLs") from None

    # --- changing ----------------------------------------------------------------------------

    async def set(self, node: Node, name: str, value: bytes) -> None:
        self._check_writable(node, name)
        node = await self._refresh(node.ino)  # the metadata must be known to be written back
        if self.store.covers(node, name):  # hook: a bucket's attributes (storeinfo.py)
            await self.store.set(node, name, value)
            return
        await self._apply(node, name, self._change(node, name, value))

    async def remove(self, node: Node, name: str) -> None:
        self._check_writable(node, name)
        node = await self._refresh(node.ino)
        if self.store.covers(node, name):
            await self.store.set(node, name, None)
            return
        change = self._change(node, name, None)
        if change == Change(dict(node.metadata), node.content_type, dict(node.system)):
            log.debug("xattr %s of %s: nothing to remove", name, node.key)
            return  # no request: a file's type that is the guessed one already
        await self._apply(node, name, change)

    def _check_writable(self, node: Node, name: str) -> None:
        if not name.startswith(USER):
            raise _unsupported(node, name)
        if node.virtual is not None:
            raise _refuse(ReadOnly(), node, name, "versions are read-only")
        if self._read_only:
            raise _refuse(ReadOnly(), node, name, "the mount is read-only")

    def _change(self, node: Node, name: str, value: bytes | None) -> Change:
        """The node's metadata with `name` set to `value` (None: removed), validated; `name`
        is a user.* name (`_check_writable`)."""
        if node.kind is Kind.DIR and (node.is_bucket or node.key == "" or node.bucket is None):
            raise _refuse(NotSupported(), node, name, "a bucket has no object to hold metadata")
        metadata = dict(node.metadata)
        content_type = node.content_type
        system = dict(node.system)
        if name.startswith(NS):
            field = name[len(NS) :]
            if (
                field in READ_ONLY
                or field in (URL, VERSIONING, REGION, *VERSION_FIELDS)
                or field.startswith((CHECKSUM, UPLOAD_URL))
            ):
                raise _refuse(NotPermitted(), node, name, "a read-only attribute")
            if field == DELETE_AT:
                when = self._delete_at(node, name, value)
                if when:
                    system[DELETE_AT] = when
                else:
                    system.pop(DELETE_AT, None)
                return Change(metadata, content_type, system)
            if field not in READ_WRITE:
                why = "unknown bucketfs attribute (user.bucketfs.* is reserved)"
                raise _refuse(InvalidArgument(), node, name, why)
            if field == "content_type":
                if node.kind is Kind.DIR and not node.has_marker:
                    raise NoAttribute()  # no object to have a type (never listed)
                if value is None and not _own_type(node):
                    # the guessed type already: nothing changes, yet removing it succeeds, as
                    # getxattr shows it (`rsync -X` or a script may remove it from any file)
                    return Change(metadata, content_type, system)
                # removing it goes back to the type guessed from the name
                content_type = None if value is None else _header_value(node, field, name, value)
            elif value is None:
                if field not in system:
                    raise NoAttribute()
                del system[field]
            else:
                system[field] = _header_value(node, field, name, value)
            return Change(metadata, content_type, system)
        key = name[len(USER) :].lower()
        if not _KEY_RE.match(key):
            why = "a metadata name is letters, digits, '-', '_' and '.' (an HTTP header token)"
            raise _refuse(InvalidArgument(), node, name, why)
        if key in POSIX_KEYS:
            why = f"{key} is what stat shows: use chmod, chown or touch"
            raise _refuse(NotPermitted(), node, name, why)
        if value is None:
            if key not in metadata:
                raise NoAttribute()
            del metadata[key]
        else:
            metadata[key] = _text(node, name, value)
        return Change(metadata, content_type, system)

    def _delete_at(self, node: Node, name: str, value: bytes | None) -> str:
        """The deletion time `value` asks for, ISO 8601 UTC ("" when removing it)."""
        if not self.backend.expiry:
            why = "this store cannot delete an object at a set time (on S3: bucket lifecycle rules)"
            raise _refuse(NotSupported(), node, name, why)
        if node.kind is not Kind.FILE:
            raise _refuse(NotSupported(), node, name, "only a file can be given an expiry")
        if value is None:
            if DELETE_AT not in node.system:
                raise NoAttribute()
            return ""
        text = _text(node, name, value)
        now = time.time()
        if _SECONDS_RE.match(text):
            stamp = math.ceil(now) + int(text[1:])
        else:
            when = _parse_date(text)
            if when is None:
                why = "not an ISO 8601 time, an HTTP date or +SECONDS"
                raise _refuse(InvalidArgument(), node, name, why)
            stamp = math.ceil(when.timestamp())  # the store keeps whole seconds
        if stamp <= math.ceil(now):
            raise _refuse(InvalidArgument(), node, name, "the time is not in the future")
        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def _check_kept(self, node: Node, name: str, change: Change) -> None:
        """Some stores keep no metadata on a directory marker (SeaweedFS: its directories are
        not objects): say so instead of showing a change that the next HEAD loses."""
        assert node.bucket is not None
        info = await self.backend.head(node.bucket, node.key)
        wanted = {k: change.metadata[k] for k in user_keys(change.metadata)}
        kept = {k: info.metadata[k] for k in user_keys(dict(info.metadata))}
        if kept != wanted or any(info.system.get(k) != v for k, v in change.system.items()):
            why = "this store keeps no metadata on directories"
            raise _refuse(NotSupported(), node, name, why)

    async def _apply(self, node: Node, name: str, change: Change) -> None:
        before = (node.metadata, node.content_type, node.system)
        node.metadata, node.content_type, node.system = (
            change.metadata,
            change.content_type,
            change.system,
        )
        size = metadata_bytes(dict(write_options(node).metadata))
        limit = self.backend.max_metadata_bytes
        try:
            if size > limit:
                why = f"user metadata would be {size} bytes, more than the {limit} allowed"
                raise _refuse(MetadataTooLarge(), node, name, why)
            await self._persist(node)
            if node.kind is Kind.DIR:
                # a marker mkdir made may not be on the server yet: the check asks the server
                assert node.bucket is not None
                await self._send_markers(node.bucket, node.key)
                await self._check_kept(node, name, change)
        except BaseException:
            node.metadata, node.content_type, node.system = before
            raise
        node.head_info = None
        log.debug("xattr %s of %s changed", name, node.key)
