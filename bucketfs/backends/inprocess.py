"""Key, name, metadata and listing rules shared by the stores that live in this process.

Owns what `memory.py` and `local.py` must agree on so that both behave like S3: which bucket
names and keys are valid, how user metadata is normalised, how an ETag is computed, and how one
page of a (delimited) listing is cut out of an ordered sequence of keys and returned as a
`ListPage` or `VersionPage` (`keys_page`, `versions_page`: each store only says how to seek in
its ordered keys).

Invariants: keys are compared as UTF-8 bytes (the order S3 lists in); a listing token is the last
key or common prefix returned, and resuming after a common prefix skips every key under it; a
page never holds more than `max_keys` entries (objects and prefixes together) and says it is
truncated only when another entry exists.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from bucketfs.backends.base import MAX_METADATA_BYTES, MAX_PUT_SIZE
from bucketfs.errors import InvalidRequest
from bucketfs.types import SYSTEM_HEADERS, ListPage, ObjectInfo, VersionPage, WriteOptions

#: S3's limit on a key (its limit on user metadata is `base.MAX_METADATA_BYTES`).
MAX_KEY_BYTES = 1024
#: S3 returns at most this many entries per listing page.
MAX_LIST_KEYS = 1000
#: The version id of an object written while versioning was off or suspended.
NULL_VERSION = "null"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_OTHER_SYSTEM = frozenset(SYSTEM_HEADERS) - {"content_type"}

T = TypeVar("T")


def valid_bucket_name(name: str) -> bool:
    """S3's rules: 3-63 of [a-z0-9.-], starting and ending alphanumeric, no '..', not an IP."""
    return bool(_BUCKET_RE.match(name)) and ".." not in name and not _IPV4_RE.match(name)


def encode_key(key: str) -> bytes:
    """The key as UTF-8; InvalidRequest if it is empty, not encodable or over 1024 bytes."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"key is not valid unicode: {key!r}") from None
    if not raw:
        raise InvalidRequest("empty key")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidRequest(f"key longer than {MAX_KEY_BYTES} bytes")
    return raw


def encode_prefix(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"not valid unicode: {text!r}") from None


def prefix_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string that starts with `prefix`.

    0xFF never occurs in UTF-8, so b"\\xff" bounds every key when the prefix is empty.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\xff"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def new_id() -> str:
    """A random id for version ids, upload ids and blob names (URL and file-name safe)."""
    return secrets.token_hex(16)


def strip_etag(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def etag_matches(condition: str, etag: str) -> bool:
    condition = condition.strip()
    return condition == "*" or strip_etag(condition) == etag


def multipart_etag(part_etags: Sequence[str]) -> str:
    """S3's multipart ETag: md5 of the concatenated binary part md5s, '-', the part count."""
    digest = hashlib.md5(b"".join(bytes.fromhex(e) for e in part_etags), usedforsecurity=False)
    return f"{digest.hexdigest()}-{len(part_etags)}"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def clip_range(size: int, start: int, end: int | None) -> tuple[int, int]:
    """Half-open [start, end) clipped to the object; an empty range where start >= size."""
    if start < 0 or (end is not None and end < 0):
        raise InvalidRequest(f"negative range {start}-{end}")
    stop = size if end is None else min(end, size)
    start = min(start, size)
    return start, max(start, stop)


def check_put_size(size: int) -> None:
    """S3 refuses a single PUT or COPY of more than 5 GiB; so do we, to fail the same way."""
    if size > MAX_PUT_SIZE:
        raise InvalidRequest(f"{size} bytes is more than a single PUT or COPY may hold")


def check_part_number(part_number: int) -> None:
    if not 1 <= part_number <= 10_000:
        raise InvalidRequest(f"part number {part_number} not in 1..10000")


def normalize_opts(
    opts: WriteOptions | None,
) -> tuple[dict[str, str], str | None, dict[str, str]]:
    """(user metadata with lower-case keys, content type, other system headers), validated."""
    if opts is None:
        return {}, None, {}
    metadata = {str(k).lower(): str(v) for k, v in opts.metadata.items()}
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise InvalidRequest(f"user metadata is {size} bytes, more than {MAX_METADATA_BYTES}")
    for name in metadata:
        if not name or any(c in name for c in ' \t\r\n:"(),/;<=>?@[\\]{}') or not name.isascii():
            raise InvalidRequest(f"invalid metadata name {name!r}")
    system = dict(opts.system)
    unknown = set(system) - _OTHER_SYSTEM
    if unknown:
        raise InvalidRequest(f"unknown system headers {sorted(unknown)}")
    return metadata, opts.content_type, system


def resume_point(
    prefix: bytes, delimiter: bytes | None, marker: bytes | None
) -> tuple[bytes, bool]:
    """Where a listing continues: (key, inclusive). After a folded prefix, past all of it."""
    if marker is None or marker < prefix:
        return prefix, True
    if delimiter and marker.startswith(prefix):
        i = marker.find(delimiter, len(prefix))
        if i >= 0:
            return prefix_end(marker[: i + len(delimiter)]), True
    return marker, False


def fold_page(
    entries: Iterator[tuple[bytes, T]],
    seek: Callable[[bytes, bool], Iterator[tuple[bytes, T]]],
    prefix: bytes,
    delimiter: bytes | None,
    max_keys: int,
) -> tuple[list[tuple[bytes, T | None]], bool]:
    """Cut one page out of `entries` (ascending keys, all starting with `prefix`).

    A key with `delimiter` after the prefix folds into its common prefix, returned once as
    `(prefix, None)`; the rest of that subtree is skipped with `seek(end, inclusive)`, which
    restarts the ordered entries at a key, so a folded subtree costs one seek, not a scan.
    Returns the page in order and whether more entries follow.
    """
    max_keys = max(1, min(max_keys, MAX_LIST_KEYS))
    out: list[tuple[bytes, T | None]] = []
    it = entries
    while True:
        for key, item in it:
            if not key.startswith(prefix):
                return out, False
            if len(out) >= max_keys:
                return out, True
            i = key.find(delimiter, len(prefix)) if delimiter else -1
            if i >= 0 and delimiter:
                common = key[: i + len(delimiter)]
                out.append((common, None))
                it = seek(prefix_end(common), True)
                break
            out.append((key, item))
        else:
            return out, False


#: restarts a store's ordered entries at a key (inclusive or not); see `fold_page`
Seek = Callable[[bytes, bool], Iterator[tuple[bytes, T]]]
Page = list[tuple[bytes, T | None]]


def listing_bytes(
    prefix: str, delimiter: str | None, marker: str | None
) -> tuple[bytes, bytes | None, bytes | None]:
    """A listing's prefix, delimiter (None: no folding) and resume marker as UTF-8."""
    return (
        encode_prefix(prefix),
        encode_prefix(delimiter) if delimiter else None,
        encode_prefix(marker) if marker is not None else None,
    )


def keys_page(
    seek: Seek[T], prefix: bytes, delimiter: bytes | None, token: bytes | None, max_keys: int
) -> tuple[Page[T], bool]:
    """One page of a key listing resumed after `token`; and whether more entries follow."""
    return fold_page(
        seek(*resume_point(prefix, delimiter, token)), seek, prefix, delimiter, max_keys
    )


def versions_page(
    seek: Seek[T],
    older: Callable[[bytes, str], Iterator[tuple[bytes, T]] | None],
    prefix: bytes,
    delimiter: bytes | None,
    key_marker: bytes | None,
    version_marker: str | None,
    max_keys: int,
) -> tuple[Page[T], bool]:
    """One page of a version listing resumed after (`key_marker`, `version_marker`);
    `older(key, version id)` gives the versions of `key` after that one, None if it is gone."""
    start, inclusive = resume_point(prefix, delimiter, key_marker)
    entries = seek(start, inclusive)
    if key_marker is not None and not inclusive and version_marker is not None:
        rest = older(key_marker, version_marker)
        if rest is not None:
            entries = itertools.chain(rest, entries)
    return fold_page(entries, seek, prefix, delimiter, max_keys)


def list_page_of(page: Page[ObjectInfo], truncated: bool) -> ListPage:
    """The `ListPage` of a cut page: folded prefixes apart, the last entry as the token."""
    objects = tuple(info for _, info in page if info is not None)
    prefixes = tuple(kb.decode() for kb, info in page if info is None)
    next_token = page[-1][0].decode() if truncated and page else None
    return ListPage(objects, prefixes, next_token)


def version_page_of(page: Page[ObjectInfo], truncated: bool) -> VersionPage:
    """The `VersionPage` of a cut page: the last entry's key and version id as the markers."""
    versions = tuple(info for _, info in page if info is not None)
    prefixes = tuple(kb.decode() for kb, info in page if info is None)
    if not truncated or not page:
        return VersionPage(versions, prefixes, None, None)
    last_key, last = page[-1]
    return VersionPage(
        versions, prefixes, last_key.decode(), last.version_id if last is not None else None
    )


def metadata_from_json(data: Mapping[str, object]) -> dict[str, str]:
    return {str(k): str(v) for k, v in data.items()}
