"""Small value types shared by every layer.

Owns the frozen dataclasses that cross layer boundaries. Invariants: values are immutable;
`ObjectInfo.metadata` holds *user* metadata only, keys lower-case and without the protocol
prefix (`x-amz-meta-`, `X-Object-Meta-`); times are POSIX seconds as floats, UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
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


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing or a HEAD says about one object (or one version of it)."""

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
