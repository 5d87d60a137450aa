"""Small value types shared by every layer.

Owns the frozen dataclasses that cross layer boundaries. Invariants: values are immutable;
`ObjectInfo.metadata` holds *user* metadata only, keys lower-case and without the protocol
prefix (`x-amz-meta-`, `X-Object-Meta-`); times are POSIX seconds as floats, UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NewType

ObjectKey = NewType("ObjectKey", str)
BucketName = NewType("BucketName", str)
VersionId = NewType("VersionId", str)
InodeNo = NewType("InodeNo", int)

#: Object-level fields that are not user metadata but can be set on PUT/COPY.
SYSTEM_HEADERS = (
    "content_type",
    "cache_control",
    "content_encoding",
    "content_disposition",
    "content_language",
    "expires",
)


#: the one empty mapping every `ObjectInfo` without metadata shares (read-only): a listing of
#: 100,000 keys held three empty dicts per key, 18 MiB (docs/core.md, "max_nodes")
EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return EMPTY


@dataclass(frozen=True, slots=True, init=False)
class ObjectInfo:
    """What a listing or a HEAD says about one object (or one version of it).

    A frozen, slotted dataclass (`==`, `repr`, `dataclasses.replace`, `fields` and
    FrozenInstanceError as usual) with a hand-written `__init__`: the generated one of a frozen
    dataclass stores each field through `object.__setattr__`, 2.5 us of the 10 us a listed S3
    entry cost to parse; this one calls each slot's own setter, 1.35 us (scripts/listparse.py,
    docs/maintainers/performance.md, session 17). Its parameters are the fields, in order,
    with the same defaults (a unit test compares)."""

    key: str
    size: int
    etag: str = ""  # without quotes
    last_modified: float = 0.0
    metadata: Mapping[str, str] = field(default_factory=_empty)  # user metadata
    content_type: str | None = None
    version_id: str | None = None
    is_latest: bool = True
    is_delete_marker: bool = False
    storage_class: str | None = None
    #: the SYSTEM_HEADERS other than content_type that the server returned, by their names there;
    #: on a store with per-object expiry (`Backend.expiry`) also `delete_at`, ISO 8601 UTC
    #: (`2026-12-03T01:00:00Z`), written back like the others
    system: Mapping[str, str] = field(default_factory=_empty)
    #: the server's clock (HTTP `Date`) when it answered the HEAD that gave this info; None
    #: from a listing or when the server did not say (attrstore.py compares it with
    #: `last_modified`, never the local clock)
    server_date: float | None = None
    #: the store's checksums of the content by algorithm (`sha256`, `crc32c`, `crc32`, `sha1`,
    #: `md5`, `crc64nvme`), lower-case hex; a multipart composite ends in `-<parts>`. Filled
    #: at least by `Backend.head_checksums` (read-only, never written back)
    checksums: Mapping[str, str] = field(default_factory=_empty)

    def __init__(
        self,
        key: str,
        size: int,
        etag: str = "",
        last_modified: float = 0.0,
        metadata: Mapping[str, str] = EMPTY,
        content_type: str | None = None,
        version_id: str | None = None,
        is_latest: bool = True,
        is_delete_marker: bool = False,
        storage_class: str | None = None,
        system: Mapping[str, str] = EMPTY,
        server_date: float | None = None,
        checksums: Mapping[str, str] = EMPTY,
    ) -> None:
        _set_key(self, key)
        _set_size(self, size)
        _set_etag(self, etag)
        _set_last_modified(self, last_modified)
        _set_metadata(self, metadata)
        _set_content_type(self, content_type)
        _set_version_id(self, version_id)
        _set_is_latest(self, is_latest)
        _set_is_delete_marker(self, is_delete_marker)
        _set_storage_class(self, storage_class)
        _set_system(self, system)
        _set_server_date(self, server_date)
        _set_checksums(self, checksums)


def slot_setter(cls: type[object], name: str) -> Callable[[object, object], None]:
    """The `__set__` of slot `name` of `cls`: what `object.__setattr__` ends up calling, without
    looking the name up on every store."""
    setter: Callable[[object, object], None] = cls.__dict__[name].__set__
    return setter


_set_key = slot_setter(ObjectInfo, "key")
_set_size = slot_setter(ObjectInfo, "size")
_set_etag = slot_setter(ObjectInfo, "etag")
_set_last_modified = slot_setter(ObjectInfo, "last_modified")
_set_metadata = slot_setter(ObjectInfo, "metadata")
_set_content_type = slot_setter(ObjectInfo, "content_type")
_set_version_id = slot_setter(ObjectInfo, "version_id")
_set_is_latest = slot_setter(ObjectInfo, "is_latest")
_set_is_delete_marker = slot_setter(ObjectInfo, "is_delete_marker")
_set_storage_class = slot_setter(ObjectInfo, "storage_class")
_set_system = slot_setter(ObjectInfo, "system")
_set_server_date = slot_setter(ObjectInfo, "server_date")
_set_checksums = slot_setter(ObjectInfo, "checksums")


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a delimited listing: objects, common prefixes, and where to go on."""

    objects: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]
    next_token: str | None  # None: this was the last page


@dataclass(frozen=True, slots=True)
class VersionPage:
    """One page of a version listing (objects carry version_id, is_latest, is_delete_marker)."""

    versions: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]
    next_key_marker: str | None
    next_version_marker: str | None


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class PutResult:
    etag: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """Metadata sent with a PUT, multipart create, or a copy that replaces metadata."""

    metadata: Mapping[str, str] = field(default_factory=_empty)
    content_type: str | None = None
    #: other SYSTEM_HEADERS by name ("cache_control" -> "no-cache")
    system: Mapping[str, str] = field(default_factory=_empty)
